"""Streams a table's expired rows as day-aligned batches: windows of rows read into Arrow by the
ADBC driver, cut at UTC day boundaries so each archive object holds one day only (issue 2,
"partitions must be truthful").

Windows start at a day and are ordered by the timestamp: each complete day becomes one batch.
The first window is cut by its row limit alone, so its last day, which may continue past it, is
read again by the next window. Later windows also end on a day boundary, as many days ahead as the
densest day seen so far allows within the limit: such a window holds whole days only, and no row is
read twice (with one LIMIT alone, one day in ten was read twice on the bench's 5,000-row days). A
window that fills its limit all the same falls back to reading its last day again. A day with more
rows than a batch is cut in (timestamp, pk) order instead; from the first such day on, windows are
read in that order and continue after the last row handed out.

A window also holds at most WINDOW_BYTES of Arrow data: its row limit comes from the row size of
the window before it (of a few rows read first, for the first window), and its batches are no
larger than it, so wide rows get more, smaller windows and objects.

Every batch comes from one window, that is one statement and one snapshot: the delete relies on it
(archiver/selection.py, range_delete_query)."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from archiver.selection import Bound, Selection
from common.arrow_types import Exceptions, split_exceptions
from common.pgtypes import EPOCH_ORDINAL, from_arrow_read, xids
from common.units import rows_within

#: Rows per window (at least batch_size): 2M-row bench, ~215-240 MB peak RSS of the run at this size.
WINDOW_ROWS = 50_000
#: Arrow bytes a window may hold. Rows alone bound nothing on wide tables: 5,000 rows of ~190 kB
#: documents peaked at 1.3 GB of RSS, and a 50,000-row window of them would be ~10 GB. Such rows
#: get windows (and batches) of fewer rows; the bench's ~330-byte rows never reach it.
WINDOW_BYTES = 64 << 20
#: Rows read once more, before the first window, to size it (later windows are sized by the one
#: before them).
PROBE_ROWS = 16


class Source(Protocol):
    """Runs one SELECT and returns its rows as Arrow (archiver.arrow_source.ArrowSource)."""

    def read(self, query: str) -> pa.Table: ...


@dataclass
class Batch:
    day: date
    rows: pa.Table  # archived columns only
    xmins: pa.Array  # uint32
    encodings: dict[str, str]
    source_bytes: int  # uncompressed Arrow bytes of these rows, for the compression ratio
    window: int  # which window (snapshot) the rows came from
    lo: Bound  # the rows exported are all those of the window from lo (inclusive) ...
    hi: Bound  # ... to hi: a row's (timestamp, pk), inclusive, or the next day's (start, None)
    #: Which relation the rows came from, where one pipeline reads several (archiver/retire.py).
    origin: Any = None
    #: Values the columns' types cannot hold, by column: NULL in `rows` (common/arrow_types.py).
    exceptions: dict[str, Exceptions] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return self.rows.num_rows


def read_window(source: Source, sel: Selection, *, limit: int, lower: Bound | None, by_key: bool,
                all_text: bool, upper: Any = None) -> tuple[pa.Table, dict[str, str]]:
    query, native = sel.export_query(limit=limit, lower=lower, by_key=by_key, all_text=all_text, upper=upper)
    table = source.read(query.as_string(None))
    table = table.set_column(0, "__xmin", xids(table.column(0)))
    return from_arrow_read(table, sel.schema, native=native, extra=["__xmin"], all_text=all_text)


@dataclass
class _Cut:
    """How one window is cut into batches."""

    sel: Selection
    batch_size: int
    encodings: dict[str, str]
    window: int

    def batch(self, table: pa.Table, day: date, lo: Bound, hi: Bound) -> Batch:
        rows, exceptions = split_exceptions(table.drop_columns(["__xmin"]))
        return Batch(day, rows, table.column("__xmin").combine_chunks(), self.encodings, rows.nbytes, self.window, lo, hi,
                     exceptions=exceptions)


def batches(source: Source, sel: Selection, *, batch_size: int, all_text: bool,
            start_after: tuple[Any, Any] | None = None, stop: threading.Event | None = None) -> Iterator[Batch]:
    """Yield batches of at most batch_size rows (fewer for wide rows: WINDOW_BYTES), each of one
    UTC day, day after day."""
    cap = max(batch_size, WINDOW_ROWS)
    lower: Bound | None = start_after
    # delete_after_archive: false continues after the last batch: a row's key, or a day's start
    by_key = start_after is not None and start_after[1] is not None
    probe, _ = read_window(source, sel, limit=PROBE_ROWS, lower=lower, by_key=by_key, all_text=all_text)
    limit = _fit(cap, probe)  # then sized again by each window's own rows
    del probe
    window, span = 0, 0  # span: days a window asks for (0: as many as its limit holds)
    while not (stop and stop.is_set()):
        end = _window_end(sel, lower, span) if not by_key else None
        upper = None if end is None else sel.day_start(end)
        table, encodings = read_window(source, sel, limit=limit, lower=lower, by_key=by_key, all_text=all_text,
                                       upper=upper)
        if table.num_rows == 0:
            if end is None:
                return
            lower, span = (upper, None), 0  # a gap of more than a window's days: find the next row
            continue
        window += 1
        # A window always completes a batch (the by-key path relies on it): batches no larger than it.
        cut = _Cut(sel, min(batch_size, limit), encodings, window)
        whole = table.num_rows < limit
        limit = _fit(cap, table)
        if by_key:
            out = _emit_keys(table, cut, whole=whole)
            yield from out
            if whole:
                return
            lower = out[-1].hi  # a window of >= batch_size rows always completes a batch
            continue
        groups = _split(table, sel)
        days, rest, big = _emit_days(table, groups, cut, whole=whole)
        yield from days
        span = _span(groups, limit)
        if rest is None:
            if end is None:
                return
            lower = (upper, None)
            continue
        lower, by_key = (sel.day_start(rest), None), big


def _fit(cap: int, table: pa.Table) -> int:
    """The rows a window may ask for: `cap`, or fewer when this many of `table`'s rows would hold
    more than WINDOW_BYTES."""
    return rows_within(WINDOW_BYTES, rows=table.num_rows, nbytes=table.nbytes, most=cap)


def _window_end(sel: Selection, lower: Bound | None, span: int) -> date | None:
    """The day a window ends before: `span` days after its first, once a window has shown how
    many rows a day holds; None (the row limit alone) before that."""
    # A resumed position (delete_after_archive: false) is the checkpoint's ISO text: the limit alone.
    day = None if lower is None or span == 0 else sel.day_of(lower[0])
    return None if day is None else day + timedelta(days=span)


def _span(groups: list[tuple[int, int, date]], limit: int) -> int:
    """How many days the next window can ask for: as many of this window's densest day as fit in
    nine tenths of its row limit. The margin is for days denser than those seen: a window that
    fills its limit reads its last day again (on the bench, days of 5,000 rows exactly fill a
    50,000-row limit ten at a time)."""
    densest = max(end - start for start, end, _day in groups)
    return max(limit * 9 // 10 // densest, 1)


def _emit_days(table: pa.Table, groups: list[tuple[int, int, date]], cut: _Cut, *,
               whole: bool) -> tuple[list[Batch], date | None, bool]:
    """Whole days of a window read in timestamp order (its day groups: _split), one batch each.
    Also returns the first day not handed out (None when all were) and whether it holds more rows
    than a batch."""
    out: list[Batch] = []
    for i, (start, end, day) in enumerate(groups):
        if end - start > cut.batch_size:
            return out, day, True
        if i == len(groups) - 1 and not whole:
            # May continue past the window. Alone in it, it has at least `limit` rows: a big day.
            return out, day, not out
        next_day = cut.sel.day_start(day + timedelta(days=1))
        out.append(cut.batch(table.slice(start, end - start), day, (cut.sel.day_start(day), None), (next_day, None)))
    return out, None, False


def _key(table: pa.Table, row: int, sel: Selection) -> tuple[Any, Any]:
    """A row's (timestamp, key): the key's value, or a tuple of a composite key's values."""
    values = tuple(table.column(k)[row].as_py() for k in sel.keys)
    return (table.column(sel.table.timestamp_column)[row].as_py(), values if sel.composite else values[0])


def _emit_keys(table: pa.Table, cut: _Cut, *, whole: bool) -> list[Batch]:
    """Cut a window read in (timestamp, pk) order into batches of at most batch_size rows of one
    day. Unless the window is the last one (`whole`), its last day may continue past it: that
    day's remainder (< batch_size rows) is left to be read again by the next window instead of
    becoming a small object."""
    groups = _split(table, cut.sel)
    out: list[Batch] = []
    for i, (start, end, day) in enumerate(groups):
        for off in range(start, end, cut.batch_size):
            n = min(cut.batch_size, end - off)
            if not whole and i == len(groups) - 1 and n < cut.batch_size:
                return out
            piece = table.slice(off, n)
            out.append(cut.batch(piece, day, _key(piece, 0, cut.sel), _key(piece, n - 1, cut.sel)))
    return out


def _split(chunk: pa.Table, sel: Selection) -> list[tuple[int, int, date]]:
    days = sel.utc_days(chunk.column(sel.table.timestamp_column))
    cuts = np.flatnonzero(np.diff(days)) + 1
    bounds = [0, *cuts.tolist(), chunk.num_rows]
    return [(bounds[i], bounds[i + 1], date.fromordinal(EPOCH_ORDINAL + int(days[bounds[i]]))) for i in range(len(bounds) - 1)]
