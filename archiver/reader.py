"""Streams a table's expired rows as day-aligned batches: keyset-paged windows of rows in
(timestamp, pk) order, read into Arrow by the ADBC driver, cut at UTC day boundaries so each archive
object holds one day only (issue 2, "partitions must be truthful").

Every batch comes from one window, that is one statement and one snapshot: the delete relies on it
(archiver/selection.py, delete_query). The last, unfinished day of a window is not carried into the
next one but read again with it, which costs at most one partial day per window."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from archiver.selection import Selection
from common.pgtypes import FALLIBLE, from_arrow_read, xid_text

#: Rows per window (at least batch_size). 2M-row bench: ~XX MB peak RSS at this size.
WINDOW_ROWS = 50_000


class Source(Protocol):
    """Runs one SELECT and returns its rows as Arrow (common.arrow_source.ArrowSource)."""

    def read(self, query: str) -> pa.Table: ...


@dataclass
class Batch:
    day: date
    rows: pa.Table  # archived columns only
    xmins: pa.Array
    encodings: dict[str, str]
    source_bytes: int  # uncompressed Arrow bytes of these rows, for the compression ratio
    window: int  # which window (snapshot) the rows came from
    first: tuple[Any, Any]  # (timestamp, pk) of the first and last row, in export order
    last: tuple[Any, Any]

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


def read_window(source: Source, sel: Selection, *, limit: int, after: tuple[Any, Any] | None,
                all_text: bool) -> tuple[pa.Table, dict[str, str]]:
    query, native = sel.export_query(limit=limit, after=after, all_text=all_text)
    table = source.read(query.as_string(None))
    table = table.set_column(0, "__xmin", xid_text(table.column(0)))
    return from_arrow_read(table, sel.schema, native=native, extra=["__xmin"], all_text=all_text)


def batches(source: Source, sel: Selection, *, batch_size: int, all_text: bool,
            start_after: tuple[Any, Any] | None = None, stop: threading.Event | None = None) -> Iterator[Batch]:
    """Yield batches of at most batch_size rows, each of one UTC day, in (timestamp, pk) order."""
    after = start_after
    limit = max(batch_size, WINDOW_ROWS)
    window = 0
    while not (stop and stop.is_set()):
        table, encodings = read_window(source, sel, limit=limit, after=after, all_text=all_text)
        exhausted = table.num_rows < limit
        if table.num_rows == 0:
            return
        window += 1
        out = _emit(table, encodings, sel, batch_size, window=window, whole=exhausted, narrow=not all_text)
        yield from out
        if exhausted:
            return
        after = out[-1].last  # a window of >= batch_size rows always completes a batch


def _key(table: pa.Table, row: int, sel: Selection) -> tuple[Any, Any]:
    return (table.column(sel.table.timestamp_column)[row].as_py(), table.column(sel.table.primary_key)[row].as_py())


def _emit(table: pa.Table, encodings: dict[str, str], sel: Selection, batch_size: int, *, window: int,
          whole: bool, narrow: bool) -> list[Batch]:
    """Cut a window into day-aligned batches. Unless the window is the last one (`whole`), its
    last day may continue past it: that day's remainder (< batch_size rows) is left to be read
    again by the next window instead of becoming a small object."""
    groups = _split(table, sel.table.timestamp_column)
    out: list[Batch] = []
    for i, (start, end, day) in enumerate(groups):
        for off in range(start, end, batch_size):
            n = min(batch_size, end - off)
            if not whole and i == len(groups) - 1 and n < batch_size:
                return out
            piece = table.slice(off, n)
            rows, enc = piece.drop_columns(["__xmin"]), encodings
            if narrow:
                rows, enc = _narrow(rows, enc, sel)
            out.append(Batch(day, rows, piece.column("__xmin").combine_chunks(), enc, rows.nbytes, window,
                             _key(piece, 0, sel), _key(piece, n - 1, sel)))
    return out


def _narrow(table: pa.Table, encodings: dict[str, str], sel: Selection) -> tuple[pa.Table, dict[str, str]]:
    """A window falls back to text for a column when any of its rows needs it (e.g. 'infinity');
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
