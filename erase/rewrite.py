"""Rewriting one object without the erased rows, crash-safely, on the replace machinery erase shares
with `archiver --migrate-layout` (common/archive/replace.py, which says in what order the replacement is
stored, the digest written and the old object removed, and at which points ARCHIVER_TEST_KILL_AT
kills: after_replacement, after_erase_digest, after_old_removed). A rerun finds a replacement whose
old object is still there (catalog.superseded), records it in the digest if no digest does yet, and
removes the old object: it never erases or counts rows twice."""
from __future__ import annotations

from typing import Any

import pyarrow.compute as pc

from common import batch_writer
from common.archive import replace
from common.archive_sql import Engine
from common.archive.catalog import ArchiveObject, Catalog
from common.archive.digest import Erasure
from common.errors import DataIntegrityError
from common.hooks import Hook
from common.conform import conform
from common.arrow_types import exceptions_of, split_exceptions, with_exceptions
from common.pgtypes import arrow_schema, column_docs, encodings_of
from common.archive.replace import Replaced

__all__ = ["Replaced", "erasure", "rewrite"]


def rewrite(catalog: Catalog, engine: Engine, obj: ArchiveObject, *, predicate_sha256: str, erased_at: str,
            level: int, hook: Hook) -> Replaced:
    """Store and verify the object's replacement without the matching rows (step 1)."""
    assert obj.manifest is not None
    data = catalog.read(obj)
    obj.manifest.check(data)
    fmt = batch_writer.format_of(obj.key)
    rows, schema, encodings, doc = batch_writer.decode(data, fmt=fmt)
    exceptions = exceptions_of(doc)
    stays = pc.invert(engine.matching(rows, exceptions))
    if fmt == "parquet":
        # The replacement in the table's one schema (common/conform.py), whatever version wrote the
        # object (a column kept as text before format version 2 is typed again); the exceptions
        # follow the rows kept.
        conformed = conform(rows, arrow_schema(schema), exceptions=exceptions, fill_missing=False)
        keep, exceptions = split_exceptions(with_exceptions(conformed.table, conformed.exceptions).filter(stays))
        encodings = encodings_of(schema)
    else:
        keep = rows.filter(stays)
    new_data = batch_writer.encode(keep, fmt=fmt, level=level, schema=schema, encodings=encodings,
                                   extra_meta={k: v for k, v in doc.items() if k not in replace.META_KEYS},
                                   exceptions=exceptions)
    new_key = replace.replacement_key(obj.key, new_data, fmt)
    removed = rows.num_rows - keep.num_rows
    replaces = replace.replaces_doc(obj, rows_removed=removed, erased_at=erased_at, predicate_sha256=predicate_sha256)
    mbytes = replace.manifest_bytes(obj.manifest, key=new_key, data=new_data, rows=keep, schema=schema,
                                    replaces=replaces, columns=column_docs(schema, encodings))
    entry = replace.store(catalog, obj, new_key=new_key, data=new_data, manifest=mbytes,
                          check=lambda stored: verify(engine, new_key, stored, fmt=fmt, rows=keep.num_rows), hook=hook)
    return Replaced(obj, new_key, entry, replaces)


def erasure(obj: ArchiveObject, new_key: str, replaces: dict[str, Any]) -> Erasure | None:
    """The erasure record of a replacement (None for one --migrate-layout made: it erased nothing)."""
    assert obj.manifest is not None
    if replaces.get("kind") == "migrate":
        return None
    return Erasure(obj.key, obj.manifest.sha256, int(replaces.get("rows_removed") or 0), new_key,
                   str(replaces.get("erased_at")), str(replaces.get("predicate_sha256")))


def verify(engine: Engine, key: str, stored: bytes, *, fmt: str, rows: int) -> None:
    """The replacement before it is stored: the rows we kept, none that matches."""
    table = batch_writer.decode(stored, fmt=fmt)[0]
    if table.num_rows != rows or (rows and int(pc.sum(engine.matching(table)).as_py() or 0)):
        raise DataIntegrityError(f"{key}: the replacement does not hold exactly the rows kept; nothing removed")
