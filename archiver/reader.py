"""Streams a table's expired rows as day-aligned batches: keyset-paged `COPY (FORMAT csv)` chunks
of `batch_size` rows in (timestamp, pk) order, parsed into Arrow, cut at UTC day boundaries so each
archive object holds one day only (issue 2, "partitions must be truthful")."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from archiver.selection import Selection
from common.pgtypes import FALLIBLE, parse_copy_csv


CHUNK_ROWS = 10_000


@dataclass
class Batch:
    day: date
    rows: pa.Table  # archived columns only
    xmins: pa.Array
    encodings: dict[str, str]
    source_bytes: int  # approximate CSV bytes of these rows, for the compression ratio

    @property
    def count(self) -> int:
        return self.rows.num_rows


def _days(ts: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_timestamp(ts.type):
        ts = pc.cast(ts, pa.timestamp("us", tz="UTC")) if ts.type.tz is None else ts
        return pc.cast(ts, pa.date32()).to_numpy(zero_copy_only=False).astype("int64")  # type: ignore[no-any-return]
    if pa.types.is_date(ts.type):
        return pc.cast(ts, pa.int32()).to_numpy(zero_copy_only=False).astype("int64")  # type: ignore[no-any-return]
    # Text form (JSONL format): the session runs in UTC, so the first ten characters are the UTC day.
    days = pc.cast(pc.utf8_slice_codeunits(ts, 0, 10), pa.date32())
    return pc.cast(days, pa.int32()).to_numpy(zero_copy_only=False).astype("int64")  # type: ignore[no-any-return]


def read_chunk(conn: psycopg.Connection[Any], sel: Selection, *, limit: int, after: tuple[Any, Any] | None,
               all_text: bool) -> tuple[pa.Table, dict[str, str], int]:
    query, params = sel.export_query(limit=limit, after=after)
    data = bytearray()  # one growing buffer: a list of row blocks joined at the end peaks at twice the size
    with conn.cursor() as cur:
        with cur.copy(query, params) as copy:
            # read() in a plain loop: measured 1.07 s vs 1.65 s for iterating the Copy object
            # over 400k rows, on the reader thread that bounds the whole run.
            while block := copy.read():
                data += block
    conn.commit()  # end the snapshot at once: no long transactions on production
    if not data:
        return pa.table({}), {}, 0
    table, encodings = parse_copy_csv(data, sel.schema, extra=["__xmin"], all_text=all_text)
    return table, encodings, len(data)


@dataclass
class _Rows:
    table: pa.Table
    encodings: dict[str, str]
    nbytes: int


def batches(conn: psycopg.Connection[Any], sel: Selection, *, batch_size: int, all_text: bool,
            start_after: tuple[Any, Any] | None = None, stop: threading.Event | None = None) -> Iterator[Batch]:
    """Yield batches of at most batch_size rows, each of one UTC day, in (timestamp, pk) order.
    The unfinished last day of a chunk is carried into the next chunk, not re-read."""
    after = start_after
    carry: _Rows | None = None
    # COPY in slices of at most CHUNK_ROWS: a big batch_size then costs one batch of Arrow memory,
    # not also a batch of raw CSV next to it (2M-row bench: peak RSS 347 MB at 50k rows a chunk,
    # ~275 MB at 20k, ~255 MB at 10k, at the same speed).
    chunk_rows = min(batch_size, CHUNK_ROWS)
    while not (stop and stop.is_set()):
        table, encodings, nbytes = read_chunk(conn, sel, limit=chunk_rows, after=after, all_text=all_text)
        exhausted = table.num_rows < chunk_rows
        if table.num_rows:
            last = table.slice(table.num_rows - 1)
            after = (last.column(sel.table.timestamp_column)[0].as_py(), last.column(sel.table.primary_key)[0].as_py())
        rows = _Rows(table, encodings, nbytes)
        if carry is not None:
            if table.num_rows == 0:
                rows = carry
            elif carry.table.schema.equals(table.schema):
                rows = _Rows(pa.concat_tables([carry.table, table]), encodings, carry.nbytes + nbytes)
            else:  # a text fallback differs between chunks: close the carried part on its own
                yield from _emit(carry, sel, batch_size, keep_tail=False, narrow=not all_text)[0]
        carry = None
        if rows.table.num_rows == 0:
            return
        out, carry = _emit(rows, sel, batch_size, keep_tail=not exhausted, narrow=not all_text)
        yield from out
        if exhausted:
            return


def _emit(rows: _Rows, sel: Selection, batch_size: int, *, keep_tail: bool, narrow: bool) -> tuple[list[Batch], _Rows | None]:
    """Cut rows into day-aligned batches; with keep_tail the last day's remainder (< batch_size)
    is returned as the carry instead of becoming a small object."""
    per_row = rows.nbytes / max(rows.table.num_rows, 1)
    groups = _split(rows.table, sel.table.timestamp_column)
    out: list[Batch] = []
    carry: _Rows | None = None
    for i, (start, end, day) in enumerate(groups):
        for off in range(start, end, batch_size):
            n = min(batch_size, end - off)
            piece = rows.table.slice(off, n)
            if keep_tail and i == len(groups) - 1 and n < batch_size:
                carry = _Rows(piece, rows.encodings, int(per_row * n))
                break
            table, encodings = piece.drop_columns(["__xmin"]), rows.encodings
            if narrow:
                table, encodings = _narrow(table, encodings, sel)
            out.append(Batch(day, table, piece.column("__xmin").combine_chunks(), encodings, int(per_row * n)))
    return out, carry


def _narrow(table: pa.Table, encodings: dict[str, str], sel: Selection) -> tuple[pa.Table, dict[str, str]]:
    """A chunk falls back to text for a column when any of its rows needs it (e.g. 'infinity');
    give each batch back the natural type where its own rows allow."""
    if all(v == "native" for v in encodings.values()):
        return table, encodings
    encodings = dict(encodings)
    for col in sel.schema.columns:
        natural = col.natural_type()
        if encodings[col.name] != "text" or natural is None or col.typname not in FALLIBLE:
            continue
        idx = table.schema.get_field_index(col.name)
        try:
            table = table.set_column(idx, col.name, pc.cast(table.column(idx), natural))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        encodings[col.name] = "native"
    return table, encodings


def _split(chunk: pa.Table, ts_col: str) -> list[tuple[int, int, date]]:
    days = _days(chunk.column(ts_col))
    cuts = np.flatnonzero(np.diff(days)) + 1
    bounds = [0, *cuts.tolist(), chunk.num_rows]
    epoch = date(1970, 1, 1).toordinal()
    return [(bounds[i], bounds[i + 1], date.fromordinal(epoch + int(days[bounds[i]]))) for i in range(len(bounds) - 1)]
