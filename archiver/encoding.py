"""One batch in, what a move needs out: the archive bytes, their manifest, and the identities
(primary keys, xmins) of the rows to delete once the bytes are safe."""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

import archiver
from archiver.reader import Batch
from archiver.selection import Bound, Selection
from common import batch_writer
from common.archive import layout
from common.config import ResolvedOptions
from common.epoch import time_iso
from common.key_range import key_range, natural_column
from common.archive.manifest import Manifest, sha256_hex
from common.pgtypes import column_docs


@dataclass
class Encoded:
    """What a batch in flight needs: the bytes to store and the row identities to delete
    (not the rows themselves, which keeps memory flat with several uploads in flight)."""

    manifest: Manifest
    data: bytes
    keys: pa.Table  # the rows' key columns, typed
    xmins: pa.Array
    started: float
    window: int  # the read window (snapshot) of the rows: reader.Batch
    lo: Bound  # the rows' range, for the delete: reader.Batch
    hi: Bound

    @property
    def rows(self) -> int:
        return self.manifest.rows


def encode_batch(batch: Batch, *, sel: Selection, prefix: str, database: str, opts: ResolvedOptions) -> Encoded:
    """Archive bytes, manifest and row identities of one batch."""
    t = sel.table
    rows = batch.rows
    meta = {"archiver_version": archiver.__version__, "database": database, "schema": t.schema_,
            "table": t.name, "timestamp_column": t.timestamp_column, "primary_key": ",".join(sel.keys),
            **({"timestamp_unit": t.timestamp_unit} if t.timestamp_unit else {})}
    data = batch_writer.encode(rows, fmt=opts.format, level=opts.compression_level,
                               schema=sel.schema, encodings=batch.encodings, extra_meta=meta,
                               exceptions=batch.exceptions)
    digest = sha256_hex(data)
    # Copies (combine_chunks), not slices: a slice keeps the read window's buffers alive while its
    # batch waits for upload and delete (2M-row bench: peak RSS 252-270 -> ~240 MB).
    keys = pa.table({k: typed_column(rows, k, sel).combine_chunks() for k in sel.keys})
    min_pk, max_pk = key_range(keys)
    ts = pc.min_max(typed_column(rows, t.timestamp_column, sel))
    name = f"part-{batch.day:%Y%m%d}-{digest[:20]}{batch_writer.EXTENSIONS[opts.format]}"
    key = layout.object_key(prefix, database, t.schema_, t.name, batch.day, name)
    manifest = Manifest(
        key=key, sha256=digest, size=len(data), rows=rows.num_rows, database=database,
        schema=t.schema_, table=t.name, primary_key=manifest_key(sel.keys),
        timestamp_column=t.timestamp_column, min_pk=min_pk, max_pk=max_pk,
        min_ts=time_iso(ts["min"].as_py(), t.timestamp_unit), max_ts=time_iso(ts["max"].as_py(), t.timestamp_unit),
        timestamp_unit=t.timestamp_unit,
        schema_fingerprint=sel.schema.fingerprint(), format=opts.format,
        format_version=1, archiver_version=archiver.__version__,
        created_at=datetime.now(timezone.utc).isoformat(), source_bytes=batch.source_bytes,
        columns=column_docs(sel.schema, batch.encodings),
    )
    return Encoded(manifest, data, keys, batch.xmins, time.monotonic(), batch.window, batch.lo, batch.hi)


def manifest_key(keys: tuple[str, ...]) -> str | list[str]:
    """The manifest's primary_key: a column's name as always, or the list of a composite key's."""
    return keys[0] if len(keys) == 1 else list(keys)


def key_lists(keys: pa.Table) -> list[list[Any]]:
    """One list of values per key column (Selection.delete_query)."""
    return [keys.column(i).to_pylist() for i in range(keys.num_columns)]


def typed_column(rows: pa.Table, name: str, sel: Selection) -> pa.ChunkedArray:
    """The column in its natural type (common.key_range.natural_column)."""
    return natural_column(rows, name, sel.schema)
