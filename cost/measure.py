"""Measure what is archived: list the configured bucket/prefix (or local_dir) and the fallback
directory, and read every manifest for the row count and the compression ratio. Read-only.
Imported only with --config, so the size-only path never loads boto3."""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from common.archive import layout, manifest_sets
from common.config import Config
from common.errors import ArchiverError, ConfigError, DataIntegrityError
from common.archive.manifest import Manifest
from common.archive.s3client import fallback_storage, primary_storage
from common.archive.storage import ObjectInfo, Storage

log = logging.getLogger("archiver.cost")
_READERS = 8


@dataclass
class TableUsage:
    database: str
    schema: str
    table: str
    objects: int = 0
    bytes: int = 0
    manifests: int = 0
    manifest_bytes: int = 0
    rows: int = 0
    #: Row bytes as PostgreSQL sent them and the stored bytes, over manifests that record both.
    source_bytes: int = 0
    compressed_bytes: int = 0
    classes: Counter[str] = field(default_factory=Counter)
    first_day: date | None = None
    last_day: date | None = None
    #: Archive bytes and objects by UTC day partition (what expiry would delete, cost/expiry.py).
    day_bytes: Counter[date] = field(default_factory=Counter)
    day_objects: Counter[date] = field(default_factory=Counter)

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def compression_ratio(self) -> Decimal | None:
        if not self.compressed_bytes or not self.source_bytes:
            return None
        return Decimal(self.source_bytes) / Decimal(self.compressed_bytes)

    def add_object(self, info: ObjectInfo, day: date) -> None:
        self.objects += 1
        self.bytes += info.size
        self.classes[info.storage_class] += 1
        self.day_bytes[day] += info.size
        self.day_objects[day] += 1
        self.first_day = day if self.first_day is None else min(self.first_day, day)
        self.last_day = day if self.last_day is None else max(self.last_day, day)

    def add_manifest(self, m: Manifest) -> None:
        self.rows += m.rows
        if m.source_bytes and m.size:
            self.source_bytes += m.source_bytes
            self.compressed_bytes += m.size


@dataclass
class Measurement:
    locations: list[str]
    tables: dict[tuple[str, str, str], TableUsage] = field(default_factory=dict)
    #: Size of every object found but the manifests (archives, strays): the exact population to
    #: price in the class estimated.
    sizes: list[int] = field(default_factory=list)
    #: Size of every manifest by the storage class it is listed in: priced there, not with the
    #: archives (the archiver keeps them in STANDARD whatever s3.storage_class is).
    manifest_sizes: dict[str, list[int]] = field(default_factory=dict)
    stray_objects: int = 0
    stray_bytes: int = 0
    unreadable_manifests: int = 0

    def _sum(self, attr: str) -> int:
        return sum(int(getattr(t, attr)) for t in self.tables.values())

    @property
    def objects(self) -> int:
        return self._sum("objects")

    @property
    def bytes(self) -> int:
        return self._sum("bytes")

    @property
    def manifests(self) -> int:
        return self._sum("manifests")

    @property
    def manifest_bytes(self) -> int:
        return self._sum("manifest_bytes")

    @property
    def rows(self) -> int:
        return self._sum("rows")

    @property
    def classes(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for t in self.tables.values():
            total.update(t.classes)
        return total

    @property
    def manifest_classes(self) -> Counter[str]:
        return Counter({c: len(sizes) for c, sizes in self.manifest_sizes.items()})

    @property
    def compression_ratio(self) -> Decimal | None:
        src, stored = self._sum("source_bytes"), self._sum("compressed_bytes")
        return Decimal(src) / Decimal(stored) if src and stored else None

    @property
    def span_days(self) -> int:
        """Days of data the archive objects cover (by their partition day), first to last."""
        days = [d for t in self.tables.values() for d in (t.first_day, t.last_day) if d is not None]
        return (max(days) - min(days)).days + 1 if days else 0

    def usage(self, database: str, schema: str, table: str) -> TableUsage:
        key = (database, schema, table)
        if key not in self.tables:
            self.tables[key] = TableUsage(database, schema, table)
        return self.tables[key]


def stores(cfg: Config, *, s3_client: Any | None = None) -> list[tuple[str, Storage]]:
    """(description, storage) for the archive store and the fallback directory."""
    base = layout.join(cfg.s3.prefix, "")
    primary = primary_storage(cfg, s3_client)
    where = f"local_dir {cfg.local_dir}" if cfg.storage == "local" else f"s3://{cfg.s3.bucket}/{base}"
    out: list[tuple[str, Storage]] = [(where, primary)]
    fallback = fallback_storage(cfg)
    if fallback is not None:
        out.append((f"fallback directory {cfg.s3.local_fallback_dir}", fallback))
    return out


def measure(cfg: Config, *, s3_client: Any | None = None) -> Measurement:
    found = stores(cfg, s3_client=s3_client)
    result = Measurement(locations=[where for where, _ in found])
    base = layout.join(cfg.s3.prefix, "")
    for where, store in found:
        log.info("measuring %s", where)
        manifests: list[tuple[str, TableUsage]] = []
        for info in _listing(cfg, store, base):
            _classify(cfg, result, info, manifests)
        _read_manifests(store, manifests, result)
    return result


def _listing(cfg: Config, store: Storage, base: str) -> Iterator[ObjectInfo]:
    try:
        yield from store.list(base)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            raise ConfigError(f"{cfg.source}: s3.bucket {cfg.s3.bucket!r} does not exist") from None
        raise ArchiverError(f"cannot list s3://{cfg.s3.bucket}/{base}: {code or exc}") from None


def _classify(cfg: Config, result: Measurement, info: ObjectInfo, manifests: list[tuple[str, TableUsage]]) -> None:
    if layout.is_manifest_set(info.key):
        # One manifest set per commit, in the table's control folder (issue 27): rows and row bytes.
        table = layout.table_of_control(cfg.s3.prefix, info.key)
        if table is not None:
            _manifest(result, info, result.usage(*table), manifests)
            return
    if layout.is_control_key(info.key):
        # Digests and withdrawal records (issue 17): no rows, a few KB in STANDARD, priced like manifests.
        result.manifest_sizes.setdefault(info.storage_class, []).append(info.size)
        return
    is_manifest = layout.is_manifest(info.key)  # a legacy sidecar
    parsed = layout.parse_key(cfg.s3.prefix, layout.data_key(info.key) if is_manifest else info.key)
    if parsed is None:
        result.stray_objects += 1
        result.stray_bytes += info.size
        result.sizes.append(info.size)
        return
    usage = result.usage(parsed.database, parsed.schema, parsed.table)
    if is_manifest:
        _manifest(result, info, usage, manifests)
    else:
        result.sizes.append(info.size)
        usage.add_object(info, parsed.day)


def _manifest(result: Measurement, info: ObjectInfo, usage: TableUsage, manifests: list[tuple[str, TableUsage]]) -> None:
    result.manifest_sizes.setdefault(info.storage_class, []).append(info.size)
    usage.manifests += 1
    usage.manifest_bytes += info.size
    manifests.append((info.key, usage))


def _read_manifests(store: Storage, manifests: list[tuple[str, TableUsage]], result: Measurement) -> None:
    """Row counts and row bytes come from the manifests; one that cannot be read (archived in a
    Glacier class, damaged) is counted and skipped, never fatal: this is an estimate."""
    def read(key: str) -> list[Manifest] | None:
        try:
            if layout.is_manifest_set(key):
                return [r.manifest for r in manifest_sets.read(store.get(key), key=key)]
            return [Manifest.from_bytes(store.get(key), key=key)]
        except (DataIntegrityError, OSError, ClientError) as exc:  # ClientError: InvalidObjectState, ...
            # One line per manifest would flood a Glacier bucket's run; the report shows the count.
            log.debug("manifest %s unreadable: %s", key, exc)
            return None

    with ThreadPoolExecutor(max_workers=_READERS, thread_name_prefix="manifest") as pool:
        for (key, usage), found in zip(manifests, pool.map(read, [k for k, _ in manifests])):
            if found is None:
                result.unreadable_manifests += 1
            else:
                for m in found:
                    usage.add_manifest(m)
