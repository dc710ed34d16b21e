"""`--migrate-layout`'s second half (issue 27): objects written before archives had one schema per
table hold some columns as another type than the table's schema gives them (`mixed_schema`: a
timestamp column as text in a batch where a value was infinity). Each is rewritten in its table's
schema (common/conform.py) the way erase replaces an object (common/archive/replace.py): the replacement is
stored and verified (the same rows, each value restoring to the same text PostgreSQL gave), its
manifest names the object it replaces, a digest of kind `migrate` records the replacements, then
the old object goes. Kill points: after_replacement, after_migration_digest, after_old_removed.

An object under Object Lock (retention not yet ended, or a legal hold) is reported, not rewritten:
it cannot be removed, and a replacement beside it would only be a second copy. A table the archiver
(or erase) is working on is skipped and reported busy. Objects still in the fallback directory are
rewritten once they reach the archive store. `--dry-run` counts what would be rewritten."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from archiver.hooks import Hook
from common import batch_writer, conform
from common.archive import layout, replace
from common.arrow_types import exceptions_of, parse_text, pg_texts
from common.archive.catalog import ArchiveObject, Catalog, TableRef
from common.config import Config
from common.archive.digest import secret
from common.errors import DataIntegrityError
from common.lock import head_lock
from common.pgtypes import TableSchema, arrow_schema, column_docs, encodings_of
from common.archive.s3client import check_object_lock
from common.archive.storage import S3Storage
from common.archive.table_index import by_table

log = logging.getLogger("archiver.migration.layout")
REASON = "mixed_schema"


@dataclass
class Rewrites:
    found: int = 0  # objects stored otherwise than their table's schema (dry run: would be rewritten)
    rewritten: int = 0
    finished: int = 0  # rewrites an interrupted migration had stored, completed now
    locked: list[str] = field(default_factory=list)  # under Object Lock: reported, not rewritten
    busy: list[str] = field(default_factory=list)  # tables being archived (advisory lock held): not touched
    unreadable: list[str] = field(default_factory=list)  # in an archive storage class, not restored
    digests: list[str] = field(default_factory=list)

    def summary(self, dry_run: bool) -> str:
        text = f"{'would rewrite' if dry_run else 'rewrote'} {self.found if dry_run else self.rewritten} objects " \
               "of mixed schema in their table's schema"
        if self.finished:
            text += f" (and {'would finish' if dry_run else 'finished'} {self.finished} interrupted rewrites)"
        if self.locked:
            text += f"; {len(self.locked)} under Object Lock {'would be' if dry_run else 'were'} left as they are"
        if self.unreadable:
            text += f"; {len(self.unreadable)} not readable without an S3 restore left as they are"
        if self.busy:
            text += f"; {len(self.busy)} tables being archived were skipped (run again when the run ends)"
        return text


def mixed(obj: ArchiveObject) -> bool:
    """Whether the object's manifest records a column stored as another type than its PostgreSQL
    type gives it (what validate reports as mixed_schema)."""
    m = obj.manifest
    if m is None or m.format != "parquet" or not m.columns:
        return False
    schema = TableSchema.from_json(m.columns)
    stored = conform.stored_schema(schema, {c["name"]: c.get("encoding", "native") for c in m.columns})
    return bool(conform.mixed_columns(stored, arrow_schema(schema)))


def rewrite_schemas(cfg: Config, catalog: Catalog, *, dry_run: bool, hook: Hook) -> Rewrites:
    out = Rewrites()
    key_secret: list[bytes | None] = []  # read once, and only when something is rewritten
    for ref in _tables(cfg, catalog):
        todo, pending = _work(catalog, ref)
        if not todo and not pending:
            continue
        if dry_run:
            out.found += len(_rewritable(catalog, todo, out))
            out.finished += len(pending)
            continue
        if not key_secret:
            check_object_lock(cfg, catalog.primary)
            key_secret.append(secret(cfg))
        with replace.table_lock(cfg, ref, role="migrate") as held:
            if not held:
                out.busy.append(f"{ref.database}/{ref.name}")
                log.warning("%s/%s is being archived: its %d objects of mixed schema are left for a later run",
                            ref.database, ref.name, len(todo))
                continue
            todo, pending = _work(catalog, ref)  # again, under the lock: an erase may have replaced one meanwhile
            todo = _rewritable(catalog, todo, out)
            out.found += len(todo)
            _table(cfg, catalog, ref, todo, pending, out, key_secret=key_secret[0], hook=hook)
    return out


def _work(catalog: Catalog, ref: TableRef) -> tuple[list[ArchiveObject], list[tuple[ArchiveObject, ArchiveObject]]]:
    """The table's objects of mixed schema (those in the archive store), and the rewrites an
    interrupted migration stored whose old object is still there: (old, replacement)."""
    objects = catalog.list_objects(ref)  # current objects: an unfinished replacement's old one is not
    pending = [(o, n) for o, n in catalog.superseded if (n.replaces or {}).get("kind") == "migrate"]
    return [o for o in objects if o.location != "fallback" and mixed(o)], pending


def _tables(cfg: Config, catalog: Catalog) -> list[TableRef]:
    refs = []
    for db in cfg.databases:
        for ident, _infos in by_table(catalog.primary.list(layout.database_prefix(catalog.prefix, db.name)), catalog.prefix):
            if ident is not None:
                refs.append(TableRef(*ident))
    return refs


def _rewritable(catalog: Catalog, objects: list[ArchiveObject], out: Rewrites) -> list[ArchiveObject]:
    keep = []
    for obj in objects:
        if obj.needs_s3_restore:
            out.unreadable.append(obj.key)
        elif _locked(catalog, obj):
            out.locked.append(obj.key)
            log.warning("%s: stored as another type than its table's schema, but under Object Lock: left as it is", obj.key)
        else:
            keep.append(obj)
    return keep


def _locked(catalog: Catalog, obj: ArchiveObject) -> bool:
    """Retention not yet ended (either mode) or a legal hold, on the object or a legacy sidecar of it."""
    primary = catalog.primary
    if obj.location != "s3" or not isinstance(primary, S3Storage):
        return False
    now = datetime.now(timezone.utc)
    for key in replace.deleted_keys(obj):
        state = head_lock(primary.client, primary.bucket, key)
        if state.legal_hold or state.compliance_locked(now) or state.governance_locked(now):
            return True
    return False


def _table(cfg: Config, catalog: Catalog, ref: TableRef, todo: list[ArchiveObject],
           pending: list[tuple[ArchiveObject, ArchiveObject]], out: Rewrites, *, key_secret: bytes | None,
           hook: Hook) -> None:
    level = cfg.defaults.compression_level or 3
    now = datetime.now(timezone.utc).isoformat()
    done = [rewrite(catalog, obj, level=level, migrated_at=now, hook=hook) for obj in todo]
    key = replace.finish(catalog, ref, done, pending, kind="migrate", key_secret=key_secret, hook=hook)
    out.rewritten += len(done)
    out.finished += len(pending)
    if key:
        out.digests.append(key)
        log.info("digest %s records %d objects of %s/%s rewritten in the table's schema", key, len(done) + len(pending),
                 ref.database, ref.name)


def rewrite(catalog: Catalog, obj: ArchiveObject, *, level: int, migrated_at: str, hook: Hook) -> replace.Replaced:
    """Store and verify the object in its table's schema (common/archive/replace.py's step 1)."""
    assert obj.manifest is not None
    data = catalog.read(obj)
    obj.manifest.check(data)
    rows, schema, _encodings, doc = batch_writer.decode(data, fmt="parquet")
    exceptions = exceptions_of(doc)
    conformed = conform.conform(rows, arrow_schema(schema), exceptions=exceptions, fill_missing=False)
    encodings = encodings_of(schema)
    new_data = batch_writer.encode(conformed.table, fmt="parquet", level=level, schema=schema, encodings=encodings,
                                   extra_meta={k: v for k, v in doc.items() if k not in replace.META_KEYS},
                                   exceptions=conformed.exceptions)
    new_key = replace.replacement_key(obj.key, new_data, "parquet")
    replaces = replace.replaces_doc(obj, kind="migrate", reason=REASON, rows_removed=0, migrated_at=migrated_at)
    mbytes = replace.manifest_bytes(obj.manifest, key=new_key, data=new_data, rows=conformed.table, schema=schema,
                                    replaces=replaces, columns=column_docs(schema, encodings))
    entry = replace.store(catalog, obj, new_key=new_key, data=new_data, manifest=mbytes,
                          check=lambda stored: verify(new_key, stored, rows, exceptions), hook=hook)
    return replace.Replaced(obj, new_key, entry, replaces)


def verify(key: str, stored: bytes, old: pa.Table, old_exceptions: dict[str, Any]) -> None:
    """The replacement (checked before it is stored) holds the old object's rows, in order, in the table's
    schema: no column stored otherwise, and each value reads as PostgreSQL's text of the old
    value (the same text, or text PostgreSQL parses to the same value)."""
    table, schema, _enc, doc = batch_writer.decode(stored, fmt="parquet")
    exceptions = exceptions_of(doc)
    if table.num_rows != old.num_rows or table.column_names != old.column_names:
        raise DataIntegrityError(f"{key}: the replacement holds {table.num_rows} rows, the object it replaces "
                                 f"{old.num_rows}; nothing removed")
    if conform.mixed_columns(table.schema, arrow_schema(schema)):
        raise DataIntegrityError(f"{key}: the replacement is not in the table's schema; nothing removed")
    for name in table.column_names:
        before, after = old.column(name), table.column(name)
        if before.type == after.type and not old_exceptions.get(name) and not exceptions.get(name):
            if not _equal(before, after):
                raise DataIntegrityError(f"{key}: column {name} differs from the object it replaces; nothing removed")
            continue
        _same_texts(key, name, _texts(before, old_exceptions.get(name, [])), _texts(after, exceptions.get(name, [])),
                    after.type)


def _equal(a: pa.ChunkedArray, b: pa.ChunkedArray) -> bool:
    """Value for value, NaN included (Arrow's equality takes NaN for unequal to itself)."""
    x, y = a.combine_chunks(), b.combine_chunks()
    if pa.types.is_floating(x.type):
        width = {2: pa.int16(), 4: pa.int32(), 8: pa.int64()}[x.type.byte_width]
        x, y = x.view(width), y.view(width)
    return bool(x.equals(y))


def _texts(col: pa.ChunkedArray, exceptions: list[tuple[int, str]]) -> list[str | None]:
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col.to_pylist()  # type: ignore[no-any-return]
    return pg_texts(col, exceptions).to_pylist()  # type: ignore[no-any-return]


def _same_texts(key: str, name: str, before: list[str | None], after: list[str | None], t: pa.DataType) -> None:
    """Equal texts, or texts of one value (a fraction written with another number of digits)."""
    for row, (a, b) in enumerate(zip(before, after)):
        if a == b:
            continue
        if a is not None and b is not None:
            pa_a, exc_a = parse_text(pa.chunked_array([[a]], pa.string()), t)
            pa_b, exc_b = parse_text(pa.chunked_array([[b]], pa.string()), t)
            if not exc_a and not exc_b and pa_a.equals(pa_b):
                continue
        raise DataIntegrityError(f"{key}: row {row} of column {name} reads {b!r} in the replacement, {a!r} in the "
                                 "object it replaces; nothing removed")
