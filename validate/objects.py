"""Checks of one archive object against its manifest: presence, size, checksum (stored by S3 with
--quick, re-hashed after download otherwise), readability, row count, partition truth, and whether
its primary keys are still in the live table. Runs in worker threads; returns findings, never raises
for a bad object (only for an unreachable service)."""
from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from botocore.exceptions import ClientError

from common import batch_writer, conform
from common.archive import layout
from common.config import ObjectLockConfig
from common.epoch import day_numbers
from common.lock import head_lock, shortfall
from common.archive.manifest import Manifest, hex_to_b64
from common.pgtypes import EPOCH_ORDINAL, TableSchema, arrow_schema, utc_days
from common.archive.storage import S3Storage, Storage
from validate.dbcheck import LiveRows
from validate.inventory import Entry
from validate.children import parent_references
from validate.keys import decode_columns, key_array, key_label
from validate.report import Problem, problem

log = logging.getLogger("validate")
#: Key types whose manifest min/max (computed by Arrow) orders the way PostgreSQL does.
_RANGE_SAFE = {"int2", "int4", "int8"}


@dataclass
class Checked:
    """The outcome for one entry. `interval` is the typed pk range, for the overlap check."""

    key: str
    database: str | None
    table: str | None  # "schema.table"
    problems: list[Problem] = field(default_factory=list)
    rows: int = 0
    bytes: int = 0
    manifest: Manifest | None = None
    interval: tuple[Any, Any] | None = None
    #: --quick found no checksum stored with the object (its size was all it could compare).
    size_only: bool = False
    #: In GLACIER / DEEP_ARCHIVE: checked like --quick, since reading it needs an S3 restore.
    in_archive_class: bool = False
    #: sha256 of the manifest's bytes, and what an erasure's replacement says it replaces
    #: (validate/erasures.py).
    manifest_sha256: str | None = None
    replaces: dict[str, Any] | None = None
    #: A child's object (issue 28): the distinct values of the foreign key its manifest names,
    #: for the orphaned_child check (validate/children.py).
    references: set[tuple[Any, ...]] | None = None

    def add(self, kind: str, what: str) -> None:
        self.problems.append(problem(kind, self.key, what, database=self.database, table=self.table))


def is_archived_class(exc: BaseException) -> bool:
    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") == "InvalidObjectState"


def is_not_found(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


class ObjectChecker:
    def __init__(self, store: Storage, *, root: str, quick: bool, live: LiveRows | None,
                 lock: ObjectLockConfig | None = None) -> None:
        self.store = store
        self.lock = lock  # s3.object_lock: each object's own lock is read back (one HEAD)
        self.root = root
        self.quick = quick
        self.live = live

    def check(self, entry: Entry) -> Checked:
        parsed = layout.parse_key(self.root, entry.key)
        out = Checked(entry.key, parsed.database if parsed else None,
                      f"{parsed.schema}.{parsed.table}" if parsed else None)
        manifest = self._manifest(entry, out)
        if manifest is None:
            return out
        out.manifest = manifest
        if out.database is None:
            out.database, out.table = manifest.database, f"{manifest.schema}.{manifest.table}"
        if entry.data is None:
            assert entry.manifest is not None
            out.add("missing_object", f"manifest in {entry.manifest.source} describes {manifest.rows} rows but its "
                    "data object is gone")
            return out
        if entry.data.size != manifest.size:
            out.add("size_mismatch", f"object is {entry.data.size} bytes, its manifest says {manifest.size}")
            return out
        self._check_lock(entry, out)
        if self.quick:
            self._mixed(manifest, None, out)  # the manifest records how each column is stored
        if self.quick:
            self._quick(entry, manifest, out)
        else:
            self._full(entry, manifest, out, parsed.day.toordinal() if parsed else None)
        return out

    def _check_lock(self, entry: Entry, out: Checked) -> None:
        if self.lock is None or not isinstance(self.store, S3Storage):
            return
        reason = shortfall(head_lock(self.store.client, self.store.bucket, entry.key), self.lock)
        if reason is not None:
            out.add("object_lock_missing", f"{reason} (configured {self.lock.mode}, {self.lock.retain_days} days)")

    def _manifest(self, entry: Entry, out: Checked) -> Manifest | None:
        if entry.manifest is None:
            if _archive_format(entry.key) is None or layout.parse_key(self.root, entry.key) is None:
                out.problems.append(problem("orphaned_file", out.key, "stray file under the archive prefix (not an "
                                            "archive object, manifest or control record): move it elsewhere or remove it",
                                            database=out.database, table=out.table, repair=False))
            else:
                out.add("orphaned_file", "archive object without a manifest (an upload interrupted before its manifest)")
            return None
        out.replaces, out.manifest_sha256 = entry.manifest.replaces, entry.manifest.sha256
        return entry.manifest.manifest

    def _quick(self, entry: Entry, m: Manifest, out: Checked) -> None:
        """Manifest, size and the checksum S3 stored at upload: no download."""
        out.rows, out.bytes = m.rows, m.size
        stored = stored_sha256(self.store, entry.key)
        out.size_only = stored is None
        if stored is not None and stored != hex_to_b64(m.sha256):
            out.add("checksum_mismatch", f"S3's stored SHA-256 {stored} differs from the manifest's ({hex_to_b64(m.sha256)})")

    def _full(self, entry: Entry, m: Manifest, out: Checked, day: int | None) -> None:
        try:
            data = self.store.get(entry.key)
        except Exception as exc:
            if is_archived_class(exc):
                # GLACIER / DEEP_ARCHIVE: unreadable until an S3 restore request; S3 being fine,
                # check what can be checked without one instead of calling S3 unreachable.
                self._quick(entry, m, out)
                out.in_archive_class = True
                return
            if not is_not_found(exc):
                raise
            out.add("missing_object", "data object disappeared while being checked")
            return
        out.bytes = len(data)
        digest = hashlib.sha256(data).hexdigest()
        if digest != m.sha256:
            out.add("checksum_mismatch", f"sha256 {digest[:16]}… differs from the manifest's {m.sha256[:16]}…")
            return
        table = self._decode(entry.key, data, m, out)
        stored = _stored_schema(data) if table is not None and m.format == "parquet" else None
        del data
        if table is None:
            return
        self._mixed(m, stored, out)
        out.rows = table.num_rows
        if table.num_rows != m.rows:
            out.add("row_count_mismatch", f"object holds {table.num_rows} rows, its manifest says {m.rows}")
        if day is not None and m.timestamp_column:  # a child's rows (issue 28) lie in their parents' day
            self._partition(table.column(m.timestamp_column), day, out, unit=m.timestamp_unit)
        out.interval = _typed_interval(key_array(table, m.key_columns))
        if m.parent:
            out.references = parent_references(table, m)
        self._still_live(m, table, out)

    @staticmethod
    def _decode(key: str, data: bytes, m: Manifest, out: Checked) -> pa.Table | None:
        fmt = _archive_format(key) or m.format
        try:
            columns = decode_columns(m.key_columns, m.timestamp_column, *((m.parent or {}).get("columns") or ()))
            table = batch_writer.decode(data, fmt=fmt, columns=columns)[0]
            for col in columns:
                table.column(col)
            return table
        # Untrusted bytes through pyarrow/zstd/json: whatever fails to parse makes the file unreadable.
        except Exception as exc:  # noqa: BLE001
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            out.add("unreadable_archive", f"invalid {fmt} archive: {reason[:200]}")
            return None

    @staticmethod
    def _mixed(m: Manifest, stored: pa.Schema | None, out: Checked) -> None:
        """Columns stored as another type than the object's PostgreSQL column types give them: the
        Parquet footer says how (full check), or the manifest's encodings do (--quick)."""
        if m.format != "parquet":
            return
        schema = TableSchema.from_json(m.columns)
        if stored is None:
            stored = conform.stored_schema(schema, {c["name"]: c.get("encoding", "native") for c in m.columns})
        mixed = conform.mixed_columns(stored, arrow_schema(schema))
        if mixed:
            out.add("mixed_schema", f"column(s) {', '.join(mixed)} stored as another type than the table's schema gives "
                    "them (written before archives had one schema per table)")

    @staticmethod
    def _partition(ts: pa.ChunkedArray, day: int, out: Checked, *, unit: str | None = None) -> None:
        try:
            days = day_numbers(pc.drop_null(ts), unit)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
            out.add("partition_mismatch", f"timestamps cannot be read as dates ({exc})")
            return
        outside = int(np.count_nonzero(days != day - EPOCH_ORDINAL))
        if outside:
            lo, hi = (_ordinal_text(int(days.min())), _ordinal_text(int(days.max())))
            out.add("partition_mismatch", f"{outside} rows have timestamps outside the key's day (rows span {lo}..{hi})")

    def _still_live(self, m: Manifest, table: pa.Table, out: Checked) -> None:
        if self.live is None:
            return
        live = self.live.lookup(out.database, m.schema, m.table)
        if live is None and m.parent:  # a child archived with its parent: not configured itself
            live = self.live.child(out.database, m.schema, m.table)
        if live is None:
            return
        found = self.live.present(live, pk=m.key_columns, keys=lambda: [table.column(c).to_pylist() for c in m.key_columns],
                                  bounds=_bounds(m, out.interval))
        if found is not None and found.count:
            out.add("rows_still_in_database", f"{found.count} of its {m.rows} archived rows are still in the table "
                    f"({key_label(m.key_columns)} {', '.join(found.sample)}{', …' if found.count > len(found.sample) else ''})")


def _stored_schema(data: bytes) -> pa.Schema | None:
    try:
        return pq.read_schema(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - _decode has reported an unreadable object already
        return None


def stored_sha256(store: Storage, key: str) -> str | None:
    """The SHA-256 S3 computed at upload (base64), or None where there is none to ask for."""
    if not isinstance(store, S3Storage):
        return None
    value = store.stored_checksum(key)[1]
    # A composite multipart checksum ("...-N") is a checksum of part checksums: not comparable.
    return None if not value or "-" in value else str(value)


def _ordinal_text(days: int) -> str:
    from datetime import date

    return date.fromordinal(days + EPOCH_ORDINAL).isoformat()


def _archive_format(key: str) -> str | None:
    try:
        return batch_writer.format_of(key)
    except ValueError:
        return None


def _pk_column(m: Manifest) -> dict[str, Any]:
    if len(m.key_columns) != 1:  # a composite key has no one-column range to probe
        return {}
    return next((c for c in m.columns if c.get("name") == m.primary_key), {})


def _manifest_bounds(m: Manifest) -> tuple[Any, Any] | None:
    """The manifest's pk range, where it is typed the way PostgreSQL orders it."""
    col = _pk_column(m)
    if col.get("typname") in _RANGE_SAFE and col.get("encoding") == "native" and m.min_pk is not None:
        return m.min_pk, m.max_pk
    return None


def _bounds(m: Manifest, interval: tuple[Any, Any] | None) -> tuple[Any, Any] | None:
    """The pk range to probe, in PostgreSQL's order: the manifest's for native integer keys; for
    integer keys stored as text (JSONL, whose manifest range is text-ordered) the range read from
    the data as numbers; none for other types (a collation may order text differently)."""
    if _pk_column(m).get("typname") not in _RANGE_SAFE:
        return None
    bounds = _manifest_bounds(m)
    if bounds is None and interval is not None and all(isinstance(v, int) for v in interval):
        bounds = interval
    return bounds


def _typed_interval(keys: pa.ChunkedArray) -> tuple[Any, Any] | None:
    if pa.types.is_string(keys.type):
        try:
            keys = pc.cast(keys, pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    mm = pc.min_max(keys)
    lo, hi = mm["min"].as_py(), mm["max"].as_py()
    return None if lo is None else (lo, hi)
