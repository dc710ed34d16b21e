"""What archives a table has, for restore, query and erase: its objects in the archive store (S3 or
local_dir) and in the S3-outage fallback directory, each with its manifest, ordered by time. Only
objects whose manifest is recorded (common/archive/table_index.py) count as archived, exactly as the
archiver itself decides. Dates select UTC day partitions (--start-date/--end-date)."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from common.archive import layout
from common.config import Config
from common.cli import ambiguous, match_tables
from common.errors import ArchiverError, ConfigError, DataIntegrityError, S3Unavailable, UsageError
from common.archive.manifest import Manifest, replaced
from common.archive.manifest_sets import Recorded
from common.pgtypes import TableSchema
from common.archive.s3client import fallback_storage, primary_storage
from common.archive.storage import ObjectInfo, S3Storage, Storage
from common.archive.table_index import is_archive_name, load_table

log = logging.getLogger("catalog")

#: Storage classes whose objects cannot be read until an S3 restore request has completed
#: (GLACIER_IR and the infrequent-access classes are readable at once).
ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class ArchiveNotFound(ArchiverError):
    """An --s3-key that does not exist or belongs to another table (exit 1)."""


@dataclass(frozen=True)
class TableRef:
    """The archived table whose objects we look at (the configured one, or one only in the archive)."""

    database: str
    schema: str
    table: str
    timestamp_column: str | None = None
    primary_key: tuple[str, ...] | None = None  # the configured key columns, None when not configured
    retention_days: int | None = None
    unconfigured: str | None = None  # the config error, when the table is not (or no longer) configured

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass
class ArchiveObject:
    key: str
    day: date  # the UTC day partition: every row of the object has a timestamp on this day
    location: str  # s3 | local | fallback
    size: int
    storage_class: str
    manifest: Manifest | None  # None while the manifest itself sits in an archive storage class
    restore_state: str | None = None  # archive classes: None (not requested) | ongoing | available
    manifest_key: str = ""  # where its manifest is (either layout: common.archive.layout)
    manifest_sha256: str | None = None  # of the manifest's bytes: what a withdrawal record names
    #: An erasure's replacement names the object it replaces (erase/rewrite.py): {key, manifest_sha256, ...}.
    replaces: dict[str, Any] | None = None

    @property
    def rows(self) -> int | None:
        return self.manifest.rows if self.manifest else None

    @property
    def start(self) -> datetime | None:
        return parse_ts(self.manifest.min_ts) if self.manifest else None

    @property
    def end(self) -> datetime | None:
        return parse_ts(self.manifest.max_ts) if self.manifest else None

    @property
    def needs_s3_restore(self) -> bool:
        return self.storage_class in ARCHIVE_CLASSES and (self.restore_state != "available" or self.manifest is None)

    @property
    def archived_schema(self) -> TableSchema | None:
        """The table shape recorded in the manifest (the object's own metadata is authoritative)."""
        if not self.manifest or not self.manifest.columns:
            return None
        return TableSchema.from_json([{k: v for k, v in c.items() if k != "encoding"} for c in self.manifest.columns])

    def sort_key(self) -> tuple[Any, ...]:
        start = self.start or datetime.combine(self.day, time.min, timezone.utc)
        return (self.day, start, self.key)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "start": _iso(self.start),
            "end": _iso(self.end),
            "rows": self.rows,
            "bytes": self.size,
            "storage_class": self.storage_class,
            "location": self.location,
            "needs_s3_restore": self.needs_s3_restore,
        }


def parse_ts(value: str | None) -> datetime | None:
    """A manifest timestamp (ISO text of a timestamptz, timestamp or date value) as aware UTC."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None  # e.g. a year beyond 9999: still listed, just without a time
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def parse_day(value: date | str | None, *, flag: str) -> date | None:
    if value is None or isinstance(value, date):
        return value
    try:
        if not _DAY_RE.match(value):
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{flag} {value!r}: not a date (expected YYYY-MM-DD, a UTC day)") from None


def parse_range(start: date | str | None, end: date | str | None) -> tuple[date | None, date | None]:
    first, last = parse_day(start, flag="--start-date"), parse_day(end, flag="--end-date")
    if first and last and last < first:
        raise UsageError(f"--end-date {last} is before --start-date {first}")
    return first, last


def resolve_table(cfg: Config, database: str, table: str, schema: str | None = None) -> TableRef:
    """The table as configured, by common.cli's rule (`--table schema.table` or `--schema s --table
    table` are the same name; a bare name in several schemas is a usage error naming them). A table
    no longer in the config is still restorable from its archives; `unconfigured` keeps the config
    error for when it has none."""
    db = cfg.database(database)  # an unknown database is a config error whatever the archive holds
    name = f"{schema}.{table}" if schema else table
    found = match_tables(name, ((t.schema_, t.name) for t in db.tables))
    if len(found) > 1:
        raise ambiguous(name, found)
    if not found:
        if schema is None and "." in table:
            schema, table = table.split(".", 1)
        try:
            cfg.table(database, table, schema)
        except ConfigError as exc:  # always: the rule found no such table; this is its message
            return TableRef(database, schema or "public", table, unconfigured=str(exc))
    t = next(t for t in db.tables if (t.schema_, t.name) == found[0])
    return TableRef(database, t.schema_, t.name, t.timestamp_column, t.key_columns, cfg.options(t).retention_days)


class Catalog:
    def __init__(self, cfg: Config, *, s3_client: Any | None = None) -> None:
        self.prefix = cfg.s3.prefix
        self.bucket = cfg.s3.bucket
        self._cfg = cfg
        self._client = s3_client
        self._primary: Storage | None = None
        self.fallback = fallback_storage(cfg)
        self.superseded: list[tuple[ArchiveObject, ArchiveObject]] = []  # (replaced, replacement) of the last listing

    @property
    def primary(self) -> Storage:
        # Built lazily: a local lookup must not need an S3 client.
        if self._primary is None:
            self._primary = primary_storage(self._cfg, self._client)
        return self._primary

    def stores(self) -> list[Storage]:
        return [self.primary] + ([self.fallback] if self.fallback is not None else [])

    def where(self) -> str:
        if isinstance(self.primary, S3Storage):
            return f"s3://{self.bucket}/{self.prefix}" + (f" or the fallback directory {self.fallback.root}" if self.fallback else "")
        return f"{getattr(self.primary, 'root', '?')}"

    # -- listing -------------------------------------------------------------------------------
    def list_objects(self, ref: TableRef, *, start: date | None = None, end: date | None = None) -> list[ArchiveObject]:
        """Every archived object of the table whose UTC day lies in [start, end], oldest first."""
        found: dict[str, ArchiveObject] = {}
        for store in self.stores():
            for key, obj in self._objects(store, ref).items():
                found.setdefault(key, obj)  # the archive store wins over the fallback copy
        if not found and ref.unconfigured:
            raise ConfigError(ref.unconfigured)
        chosen = [o for o in found.values() if (start is None or o.day >= start) and (end is None or o.day <= end)]
        return sorted(self._current(chosen), key=ArchiveObject.sort_key)

    def _current(self, objects: list[ArchiveObject]) -> list[ArchiveObject]:
        """Without objects an erasure has replaced: the replacement's manifest (stored, verified)
        is the moment the erasure takes effect, so a crash before the old object is removed never
        counts its rows twice. `superseded` keeps (old, replacement) for erase to finish."""
        by_key = {o.key: o for o in objects}
        pairs = replaced((o.key, o.manifest_sha256, o.replaces) for o in objects)
        self.superseded = [(by_key[old], by_key[new]) for old, new in pairs.items() if new in by_key]
        return [o for o in objects if o.key not in pairs]

    def _objects(self, store: Storage, ref: TableRef) -> dict[str, ArchiveObject]:
        """The table's archived objects in one store: data objects whose manifest is recorded and
        not withdrawn."""
        try:
            listing, index = load_table(store, self.prefix, ref.database, ref.schema, ref.table)
        except ClientError as exc:
            err = exc.response.get("Error", {})
            raise ArchiverError(f"cannot read the archive of {ref.database}/{ref.name} in s3://{self.bucket}: "
                                f"{err.get('Code')}: {err.get('Message')}") from None
        except BotoCoreError as exc:
            raise S3Unavailable(f"S3 unreachable while listing s3://{self.bucket}/{self.prefix}: {exc}") from None
        if index.taken_back:
            log.info("%d withdrawn batches (taken back) are not counted as archived", index.taken_back)
        for key in sorted(set(listing.data) - set(index.objects)):
            log.warning("%s in %s has no manifest: not counted as archived (an interrupted upload?)", key, store.location)
        out = {}
        for key, info in listing.data.items():
            recorded = index.current(key)
            if recorded is not None:
                out[key] = self._describe(store, info, recorded)
        return out

    def _describe(self, store: Storage, info: ObjectInfo, r: Recorded) -> ArchiveObject:
        parsed = layout.parse_key(self.prefix, info.key)
        assert parsed is not None
        obj = ArchiveObject(info.key, parsed.day, store.location, info.size, info.storage_class, r.manifest,
                            manifest_key=r.source, manifest_sha256=r.sha256, replaces=r.replaces)
        if info.storage_class in ARCHIVE_CLASSES:
            obj.restore_state = self._restore_state(info.key)
        return obj

    def _restore_state(self, key: str) -> str | None:
        assert isinstance(self.primary, S3Storage)
        header = self.primary.client.head_object(Bucket=self.bucket, Key=key).get("Restore")
        if not header:
            return None
        return "ongoing" if 'ongoing-request="true"' in header else "available"

    # -- single objects --------------------------------------------------------------------------
    def find(self, ref: TableRef, key: str) -> ArchiveObject:
        """The object named by --s3-key; ArchiveNotFound (exit 1) naming the key otherwise."""
        key = self._normalise(key)
        parsed = layout.parse_key(self.prefix, key)
        if parsed is None or not is_archive_name(key):
            raise ArchiveNotFound(f"{key}: not an archive object key of {ref.database}/{ref.name}")
        if (parsed.database, parsed.schema, parsed.table) != (ref.database, ref.schema, ref.table):
            raise ArchiveNotFound(f"{key}: belongs to {parsed.database}/{parsed.schema}.{parsed.table}, "
                                  f"not to {ref.database}/{ref.name}")
        for store in self.stores():
            if store.head(key) is None:
                continue
            objects = self._objects(store, ref)
            obj = objects.get(key)
            if obj is None:
                log.warning("%s in %s has no manifest that counts (never recorded, or withdrawn)", key, store.location)
                continue
            pairs = replaced((o.key, o.manifest_sha256, o.replaces) for o in objects.values())
            if (new := pairs.get(key)) is not None:
                raise ArchiveNotFound(f"{key}: replaced by {new}, which holds its rows but the erased ones (an "
                                      "erasure that stopped before removing this object: run erase again on the "
                                      "table to finish it); restore that object instead")
            return obj
        raise ArchiveNotFound(f"{key}: no such archived object (with a manifest that counts) in {self.where()}")

    def _normalise(self, key: str) -> str:
        key = key.strip()
        if key.startswith("s3://"):
            bucket, _, key = key[len("s3://"):].partition("/")
            if bucket != self.bucket:
                raise ArchiveNotFound(f"s3://{bucket}/{key}: not in the configured bucket {self.bucket}")
        return layout.data_key(key) if layout.is_manifest(key) else key  # a legacy sidecar's name names its object

    def store_for(self, obj: ArchiveObject) -> Storage:
        for store in self.stores():
            if store.location == obj.location:
                return store
        raise DataIntegrityError(f"{obj.key}: its storage ({obj.location}) is not configured")

    def read(self, obj: ArchiveObject) -> bytes:
        store = self.store_for(obj)
        try:
            return store.get(obj.key)
        except ClientError as exc:
            err = exc.response.get("Error", {})
            raise ArchiverError(f"{obj.key}: cannot read from S3: {err.get('Code')}: {err.get('Message')}") from None

    # -- archive storage classes -------------------------------------------------------------------
    def request_restore(self, objects: list[ArchiveObject], *, days: int, tier: str = "Standard") -> list[str]:
        """Ask S3 to make archived-class objects (and their manifests) readable for `days` days.
        Returns the keys a request was issued for."""
        if not isinstance(self.primary, S3Storage):
            return []
        client = self.primary.client
        issued = []
        for obj in objects:
            if obj.location != "s3" or not obj.needs_s3_restore or obj.restore_state == "ongoing":
                continue
            for key in [obj.key] + ([obj.manifest_key] if layout.is_manifest(obj.manifest_key) else []):
                try:
                    client.restore_object(Bucket=self.bucket, Key=key,
                                          RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": tier}})
                except ClientError as exc:
                    code = exc.response.get("Error", {}).get("Code")
                    if code not in ("InvalidObjectState", "RestoreAlreadyInProgress"):
                        raise  # InvalidObjectState: that one is not in an archive class
            issued.append(obj.key)
        return issued


