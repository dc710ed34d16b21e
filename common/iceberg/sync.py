"""Reconciles an archived table's Iceberg table with its archive: the current snapshot's data files
become exactly the objects restore would read from the archive store (common/archive/catalog.py: the
data objects whose manifest counts, less those an erasure replaced), in one commit.

Reconciling, not appending what a run just stored, is what makes every change safe to interrupt:
a kill -9 between an upload and its Iceberg commit leaves objects the next sync adds, an erasure
whose old object is gone leaves a file the next sync removes, and nothing is ever registered twice
(files are compared by path). The Iceberg table never holds more than the archive says counts.

What cannot be registered is reported, not registered: JSONL objects (Iceberg reads Parquet), and
objects of format version 1 whose column types differ from the table's schema (validate's
`mixed_schema`; `archiver --migrate-layout` rewrites them, then the next sync registers them).
Objects in the S3-outage fallback directory are registered once a run drains them to S3.

A sync that finds the archive listing as the table's last sync saw it (the fingerprint in the
table property pg-archiver.listing-sha256: keys and sizes of the table's data objects, manifest
sets and withdrawal records), in a current snapshot a sync made, stops there, before reading any
manifest set."""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from common import conform
from common.config import Config
from common.errors import ArchiverError, first_line
from common.iceberg import catalog as cat
from common.iceberg.datafiles import data_file
from common.iceberg.schema import (LISTING_PROPERTY, NAME_MAPPING, SOURCE_PROPERTY, iceberg_schema, partition_spec,
                                   table_properties)
from common.archive.manifest import replaced
from common.archive.manifest_sets import Recorded
from common.pgtypes import TableSchema, arrow_schema
from common.archive.storage import Storage
from common.archive.table_index import TableIndex, TableListing, list_table, load_index

log = logging.getLogger("iceberg")
#: Parquet footers read at once (each a ranged GET or two).
READERS = 8
#: The snapshot summary property that marks a sync's snapshot.
ADDED = "pg-archiver.added"
#: Commits tried when another writer committed to the same Iceberg table in between.
COMMIT_ATTEMPTS = 3


class IcebergError(ArchiverError):
    """The Iceberg table cannot be brought in line with the archive (exit 1); the archive is intact."""


@dataclass
class Wanted:
    key: str
    size: int
    recorded: Recorded


@dataclass
class SyncResult:
    identifier: str
    dry_run: bool = False
    created: bool = False
    added: list[str] = field(default_factory=list)  # data file paths
    removed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, why): counted, not registrable
    files: int = 0  # data files in the snapshot after the sync
    unchanged: bool = False  # the listing was as the last sync saw it: no manifest was read

    def summary(self) -> str:
        if self.unchanged:
            return f"Iceberg table {self.identifier}: in sync ({self.files} data files)"
        if self.dry_run:
            text = (f"Iceberg table {self.identifier}{' (to be created)' if self.created else ''}: would register "
                    f"{len(self.added)} objects and remove {len(self.removed)} files")
        else:
            text = (f"Iceberg table {self.identifier}{' (created)' if self.created else ''}: registered "
                    f"{len(self.added)} objects, removed {len(self.removed)} files, {self.files} data files")
        if self.skipped:
            text += f"; {len(self.skipped)} archived objects not registrable ({self.skipped[0][1]}, ...)"
        return text


def listing_fingerprint(listing: TableListing) -> str:
    """What the archive of a table looks like to a listing: its data objects, manifest sets,
    legacy sidecars, withdrawal records and expiry records, by key and size."""
    h = hashlib.sha256()
    for group in (listing.data.values(), listing.sidecars.values(), listing.sets, listing.records, listing.expiries):
        for info in sorted(group, key=lambda i: i.key):
            h.update(f"{info.key}\0{info.size}\n".encode())
        h.update(b"\1")
    return h.hexdigest()


def counted(cfg: Config, listing: TableListing, index: TableIndex) -> tuple[dict[str, Wanted], list[tuple[str, str]]]:
    """The objects restore would read from this store, by Iceberg data file path, and those of
    them that cannot be registered (key, why)."""
    present = {k: r for k, r in index.objects.items() if k in listing.data}
    gone = replaced((k, r.sha256, r.replaces) for k, r in present.items())
    wanted: dict[str, Wanted] = {}
    skipped: list[tuple[str, str]] = []
    for key, r in sorted(present.items()):
        if key in gone:
            continue
        why = _unregistrable(key, r)
        if why:
            skipped.append((key, why))
            continue
        wanted[cat.data_path(cfg, key)] = Wanted(key, listing.data[key].size, r)
    return wanted, skipped


def _unregistrable(key: str, r: Recorded) -> str | None:
    if r.manifest.format != "parquet":
        return f"{r.manifest.format} object: Iceberg reads Parquet"
    if not r.manifest.columns:
        return None
    schema = _schema_of(r)
    encodings = {c["name"]: c.get("encoding", "native") for c in r.manifest.columns}
    if conform.mixed_columns(conform.stored_schema(schema, encodings), arrow_schema(schema)):
        return "mixed schema: archiver --migrate-layout rewrites it"
    return None


def _schema_of(r: Recorded) -> TableSchema:
    return TableSchema.from_json([{k: v for k, v in c.items() if k != "encoding"} for c in r.manifest.columns])


def sync_table(cfg: Config, store: Storage, database: str, schema: str, table: str, *,
               listing: TableListing | None = None, index: TableIndex | None = None,
               catalog: Any | None = None, dry_run: bool = False) -> SyncResult:
    """Make the Iceberg table's current snapshot hold exactly the table's counted objects in
    `store` (the archive store), creating the table on the first object. One commit, or none."""
    ident = cat.identifier(cfg, database, schema, table)
    result = SyncResult(ident, dry_run=dry_run)
    catalog = catalog if catalog is not None else cat.load(cfg)
    listing = listing if listing is not None else list_table(store, cfg.s3.prefix, database, schema, table)
    fingerprint = listing_fingerprint(listing)
    tbl = _load(catalog, ident)
    if tbl is not None:
        _check_source(tbl, ident, cat.source(database, schema, table))
        if index is None and tbl.properties.get(LISTING_PROPERTY) == fingerprint and _ours(tbl):
            result.unchanged, result.files = True, _file_count(tbl)
            return result
    index = index if index is not None else load_index(store, listing)
    wanted, result.skipped = counted(cfg, listing, index)
    for key, why in result.skipped:
        log.warning("%s is archived but not registered in Iceberg table %s: %s", key, ident, why)
    if tbl is None and not wanted:
        return result  # nothing archived yet: the table is made with its first object
    for attempt in range(COMMIT_ATTEMPTS):
        try:
            return _reconcile(cfg, catalog, tbl, wanted, result, database=database, schema=schema, table=table,
                              fingerprint=fingerprint)
        except _Conflict:
            if attempt == COMMIT_ATTEMPTS - 1:
                raise IcebergError(f"Iceberg table {ident}: other commits kept coming in between; "
                                   "the next run tries again") from None
            tbl = _load(catalog, ident)
    raise AssertionError("unreachable")


class _Conflict(Exception):
    pass


def _load(catalog: Any, ident: str) -> Any:
    from pyiceberg.exceptions import NoSuchTableError

    try:
        return catalog.load_table(ident)
    except NoSuchTableError:
        return None
    except Exception as exc:
        # An SQL catalog's database without the catalog's tables (a dry run or validate before
        # the first sync, which made none): no Iceberg table yet.
        if type(exc).__name__ == "ProgrammingError" and "iceberg_tables" in str(exc):
            return None
        raise


def _check_source(tbl: Any, ident: str, source: str) -> None:
    found = tbl.properties.get(SOURCE_PROPERTY)
    if found != source:
        raise IcebergError(f"Iceberg table {ident} registers {found or 'no pg-archiver table'}, not {source}: "
                           "choose another iceberg.namespace, or drop that table")


def _ours(tbl: Any) -> bool:
    """Whether the current snapshot is one a sync made (another writer's, a compaction say, is
    reconciled even when the archive did not change)."""
    snap = tbl.current_snapshot()
    if snap is None:
        return True
    return snap.summary is not None and ADDED in snap.summary.additional_properties


def _file_count(tbl: Any) -> int:
    snap = tbl.current_snapshot()
    return int((snap.summary or {}).get("total-data-files", 0)) if snap is not None else 0


def current_files(tbl: Any) -> dict[str, Any]:
    """The current snapshot's data files by path."""
    if tbl is None or tbl.current_snapshot() is None:
        return {}
    return {task.file.file_path: task.file for task in tbl.scan().plan_files()}


def _reconcile(cfg: Config, catalog: Any, tbl: Any, wanted: dict[str, Wanted], result: SyncResult, *,
               database: str, schema: str, table: str, fingerprint: str) -> SyncResult:
    from pyiceberg.exceptions import CommitFailedException

    desired, time_column, unit = _desired_schema(wanted.values(), result.identifier)
    if tbl is not None and desired is not None:
        _check_partitioning(tbl, time_column, unit, result.identifier)
    files = current_files(tbl)
    remove = [f for path, f in files.items() if path not in wanted or f.file_size_in_bytes != wanted[path].size]
    add = [w for path, w in wanted.items() if path not in files or files[path].file_size_in_bytes != w.size]
    result.added = [cat.data_path(cfg, w.key) for w in add]
    result.removed = [f.file_path for f in remove]
    result.files = len(files) - len(remove) + len(add)
    result.created = tbl is None
    if result.dry_run:
        return result
    if tbl is None:
        tbl = _create(cfg, catalog, desired, time_column, unit, database=database, schema=schema, table=table,
                      ident=result.identifier)
    try:
        with tbl.transaction() as tx:
            if desired is not None:
                _evolve(tx, desired)
            data_files = _data_files(tx, add, cfg, unit)
            _commit_files(tx, remove, data_files, fingerprint)
    except CommitFailedException as exc:
        log.info("Iceberg table %s changed during the sync (%s): reconciling again", result.identifier, exc)
        raise _Conflict() from exc
    log.info("%s", result.summary())
    return result


def _desired_schema(wanted: Iterable[Wanted], ident: str) -> tuple[Any, str, str | None]:
    """The Iceberg schema over every schema version of the counted objects (oldest first), and
    the time column (and its unit) of the newest; (None, "", None) when none counts (any more)."""
    ordered = sorted((w.recorded for w in wanted), key=lambda r: (r.manifest.created_at, r.key))
    if not ordered:
        return None, "", None
    versions: list[TableSchema] = []
    for r in ordered:
        if r.manifest.columns and (not versions or versions[-1] != _schema_of(r)):
            versions.append(_schema_of(r))
    if not versions:
        raise IcebergError(f"Iceberg table {ident}: the archive's manifests record no columns (written before "
                           "format version 1?): nothing to build a schema from")
    reader = conform.reader_schema(versions)
    current = arrow_schema(conform.current_schema(versions))
    changed = [f.name for f in reader if f.type != current.field(f.name).type]
    if changed:
        raise IcebergError(f"Iceberg table {ident}: column(s) {', '.join(changed)} changed type in a way Iceberg "
                           "cannot evolve (only int to bigint, real to double, a wider decimal): not registered")
    newest = ordered[-1].manifest
    return iceberg_schema(conform.current_schema(versions), reader), newest.timestamp_column, newest.timestamp_unit


def _create(cfg: Config, catalog: Any, desired: Any, time_column: str, unit: str | None, *, database: str,
            schema: str, table: str, ident: str) -> Any:
    from pyiceberg.exceptions import BadRequestError, NamespaceAlreadyExistsError, TableAlreadyExistsError

    try:
        catalog.create_namespace(cat.namespace(cfg, database))
    except NamespaceAlreadyExistsError:
        pass
    props = table_properties(desired, source=cat.source(database, schema, table), time_column=time_column)
    spec = partition_spec(desired, time_column, unit)
    try:
        try:
            tbl = catalog.create_table(ident, desired, location=cat.location(cfg, database, schema, table),
                                       partition_spec=spec, properties=props)
        except BadRequestError as exc:
            # A catalog that keeps every table in its own warehouse (S3 Tables, SeaweedFS) refuses
            # another location: its metadata stays there, the data files are the archive's all the same.
            log.info("catalog placed Iceberg table %s in its own warehouse (%s)", ident, first_line(exc, limit=120))
            tbl = catalog.create_table(ident, desired, partition_spec=spec, properties=props)
    except TableAlreadyExistsError:  # another sync made it in between
        tbl = catalog.load_table(ident)
        _check_source(tbl, ident, cat.source(database, schema, table))
    log.info("Iceberg table %s created at %s", ident, tbl.location())
    return tbl


def _evolve(tx: Any, desired: Any) -> None:
    """Columns added, or widened, since the table was made (Iceberg's schema evolution), and the
    name mapping to go with them. A column narrower in the archive than in the table (its wider
    objects erased since) keeps the table's type: Iceberg reads the narrower files into it."""
    have = {f.name: f for f in tx.table_metadata.schema().fields}
    added = [f for f in desired.fields if f.name not in have]
    widened = [f for f in desired.fields if f.name in have and _promotes(have[f.name].field_type, f.field_type)]
    if not added and not widened:
        return
    with tx.update_schema() as update:
        for f in added:
            update.add_column(f.name, f.field_type)
        for f in widened:
            update.update_column(f.name, field_type=f.field_type)
    tx.set_properties(**{NAME_MAPPING: tx.table_metadata.schema().name_mapping.model_dump_json()})


def _promotes(old: Any, new: Any) -> bool:
    """Iceberg's type promotions: int to long, float to double, a decimal's precision up."""
    from pyiceberg.types import DecimalType, DoubleType, FloatType, IntegerType, LongType

    if isinstance(old, IntegerType) and isinstance(new, LongType):
        return True
    if isinstance(old, FloatType) and isinstance(new, DoubleType):
        return True
    return (isinstance(old, DecimalType) and isinstance(new, DecimalType) and old.scale == new.scale
            and old.precision < new.precision)


def _check_partitioning(tbl: Any, time_column: str, unit: str | None, ident: str) -> None:
    """The objects' day folders are their partitions only under the spec the table was made with:
    a table whose timestamp_column (or timestamp_unit) changed since is refused, not mis-pruned."""
    spec = tbl.spec()
    fields = spec.fields
    if not time_column:  # a child table's: unpartitioned (common/iceberg/schema.py)
        if fields:
            raise IcebergError(f"Iceberg table {ident} is partitioned, but the archive's objects are a child "
                               "table's, cut by their parents' days: drop the Iceberg table, and the next run makes it anew")
        return
    wanted = partition_spec(tbl.schema(), time_column, unit) if time_column in tbl.schema().column_names else None
    if wanted is None or len(fields) != 1 or fields[0].source_id != wanted.fields[0].source_id \
            or str(fields[0].transform) != str(wanted.fields[0].transform):
        raise IcebergError(f"Iceberg table {ident} is partitioned by {', '.join(str(f) for f in fields) or 'nothing'}, "
                           f"but the archive's objects are cut by the day of {time_column}"
                           f"{f' ({unit})' if unit else ''}: drop the Iceberg table, and the next run makes it anew")


def _commit_files(tx: Any, remove: list[Any], add: list[Any], fingerprint: str) -> None:
    tx.set_properties(**{LISTING_PROPERTY: fingerprint})
    if not remove and not add:
        return
    summary = {ADDED: str(len(add)), "pg-archiver.removed": str(len(remove))}
    producer = tx.update_snapshot(snapshot_properties=summary)
    with (producer.overwrite() if remove else producer.fast_append()) as snapshot:
        for f in remove:
            snapshot.delete_data_file(f)
        for f in add:
            snapshot.append_data_file(f)


def _data_files(tx: Any, add: list[Wanted], cfg: Config, unit: str | None) -> list[Any]:
    meta = tx.table_metadata
    io = tx._table.io

    def one(w: Wanted) -> Any:
        return data_file(io, meta, cat.data_path(cfg, w.key), w.key, w.size, unit, cfg.s3.prefix)

    with ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="iceberg") as ex:
        return list(ex.map(one, add))


def compare(cfg: Config, listing: TableListing, index: TableIndex, database: str, schema: str, table: str, *,
            catalog: Any | None = None) -> list[tuple[str, str, str]]:
    """validate's look at the Iceberg table: (kind, key or path, what) for each counted object the
    current snapshot lacks (iceberg_missing_file) and each file it holds that does not count, or
    not with that size (iceberg_extra_file). Raises what the catalog or its metadata raise."""
    ident = cat.identifier(cfg, database, schema, table)
    catalog = catalog if catalog is not None else cat.load(cfg)
    tbl = _load(catalog, ident)
    wanted, _skipped = counted(cfg, listing, index)
    if tbl is None:
        if not wanted:
            return []
        return [("iceberg_missing_file", ident, f"Iceberg table {ident} does not exist; {len(wanted)} archived "
                                               "objects are not registered")]
    _check_source(tbl, ident, cat.source(database, schema, table))
    files = current_files(tbl)
    out = []
    for path, w in sorted(wanted.items()):
        if path not in files:
            out.append(("iceberg_missing_file", w.key, f"archived ({w.recorded.manifest.rows} rows) but not in "
                                                       f"the current snapshot of Iceberg table {ident}"))
    for path, f in sorted(files.items()):
        counts = wanted.get(path)
        if counts is None:
            out.append(("iceberg_extra_file", path, f"in the current snapshot of Iceberg table {ident} "
                                                    f"({f.record_count} rows) but not counted as archived"))
        elif f.file_size_in_bytes != counts.size:
            out.append(("iceberg_extra_file", path, f"registered in Iceberg table {ident} with "
                                                    f"{f.file_size_in_bytes} bytes; the object has {counts.size}"))
    return out
