"""Dates and timestamps in their own Arrow types for every value PostgreSQL holds (issue 27).

Infinity: `infinity` and `-infinity` of timestamp, timestamptz and date are the type's largest and
smallest value, as DuckDB writes and reads them in Parquet (checked against DuckDB 2.0: int64
9223372036854775807 and -9223372036854775807 microseconds, int32 2147483647 and -2147483647 days;
DuckDB reads -9223372036854775808 as a year 290309 BC instead). PostgreSQL uses the same idea
(its extremes are INT64_MIN/MAX from 2000-01-01); restore maps one onto the other.

Everything else PostgreSQL accepts fits too (4713 BC to year 294247 for timestamps, 4713 BC to
5874897 for dates), except timestamps from 294247-01-10 04:00:54.775807 to PostgreSQL's end,
294276-12-31: no int64 of microseconds since 1970 holds them. Those values (and numeric NaN, which
no decimal holds) are an object's *exceptions*: NULL in the column, their PostgreSQL text kept in the
object's metadata by row (common/pgtypes.py), so the column keeps its type and restore gives the
value back exactly. Foreign engines read NULL there, as DuckDB's own PostgreSQL scanner does for a
NaN numeric.

The ADBC driver reads these types in binary and adds the 1970-2000 offset with int64/int32
wrap-around, which is undone here exactly (from_driver): no `::text` round trip, no silent extreme."""
from __future__ import annotations

import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

TS_INF = 2**63 - 1  #: microseconds since 1970 read as +infinity (DuckDB's timestamp_t::infinity)
TS_NINF = -(2**63 - 1)
DATE_INF = 2**31 - 1  #: days since 1970 read as +infinity
DATE_NINF = -(2**31 - 1)
PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in microseconds since 1970
PG_EPOCH_DAYS = 10_957
_PG_TS_INF, _PG_TS_NINF = 2**63 - 1, -(2**63)  # PostgreSQL's DT_NOEND / DT_NOBEGIN (since 2000)
_PG_DATE_INF, _PG_DATE_NINF = 2**31 - 1, -(2**31)
_US_PER_DAY = 86_400_000_000
#: Where the driver's value lands for PostgreSQL's own extremes (the offset added, wrapped).
_DRIVER_TS_INF = _PG_TS_INF + PG_EPOCH_US - 2**64
_DRIVER_TS_NINF = _PG_TS_NINF + PG_EPOCH_US
_DRIVER_DATE_INF = _PG_DATE_INF + PG_EPOCH_DAYS - 2**32
_DRIVER_DATE_NINF = _PG_DATE_NINF + PG_EPOCH_DAYS

#: (row, PostgreSQL text) of the values a column's type cannot hold.
Exceptions = list[tuple[int, str]]


def is_temporal(t: pa.DataType) -> bool:
    return pa.types.is_timestamp(t) or pa.types.is_date32(t)


# -- the driver's binary values ----------------------------------------------------------------
def from_driver(column: pa.ChunkedArray, target: pa.DataType) -> tuple[pa.ChunkedArray, Exceptions]:
    """A timestamp, timestamptz or date column as the ADBC driver read it (binary COPY) -> the
    column in `target` with the infinities of this module, and the values it cannot hold."""
    date = pa.types.is_date32(target)
    width = pa.int32() if date else pa.int64()
    raw = _ints(column, width)
    valid = _validity(column)
    if date:
        inf, ninf = raw == _DRIVER_DATE_INF, raw == _DRIVER_DATE_NINF
        out = np.where(inf, DATE_INF, np.where(ninf, DATE_NINF, raw))
        beyond = np.zeros(len(raw), dtype=bool)  # every finite date fits in int32 days since 1970
    else:
        inf, ninf = raw == _DRIVER_TS_INF, raw == _DRIVER_TS_NINF
        # Wrapped past int64: PostgreSQL's value + the offset >= 2**63. The one unwrapped value
        # equal to +infinity's sentinel is a finite value that sentinel cannot stand for.
        beyond = ((raw < _DRIVER_TS_NINF) & ~inf) | (raw == TS_INF)
        out = np.where(inf, TS_INF, np.where(ninf, TS_NINF, raw))
    beyond &= valid
    exceptions: Exceptions = []
    for row in np.flatnonzero(beyond).tolist():
        pg = int(raw[row]) - PG_EPOCH_US + (2**64 if raw[row] < 0 else 0)
        exceptions.append((row, _ts_text(pg + PG_EPOCH_US, zoned=target.tz is not None, sentinels=False)))
    mask = ~valid | beyond
    arr = pa.array(out.astype(np.int32 if date else np.int64), width, mask=mask if mask.any() else None)
    return pa.chunked_array([arr.cast(target)], target), exceptions


def _ints(column: pa.ChunkedArray | pa.Array, width: pa.DataType) -> np.ndarray:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    ints = arr.view(width) if arr.type.bit_width == width.bit_width else arr.cast(width)
    return pc.fill_null(ints, 0).to_numpy(zero_copy_only=False)  # type: ignore[no-any-return]


def _validity(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if column.null_count == 0:
        return np.ones(len(column), dtype=bool)
    return pc.is_valid(column).to_numpy(zero_copy_only=False)  # type: ignore[no-any-return]


# -- PostgreSQL text -> Arrow ------------------------------------------------------------------
_TEXT_RE = re.compile(r"^(\d+)-(\d\d)-(\d\d)(?: (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?)?(?:\+00)?( BC)?$")
_NUMERIC_SPECIAL = ["NaN", "Infinity", "-Infinity"]


def parse_text(column: pa.ChunkedArray, target: pa.DataType) -> tuple[pa.ChunkedArray, Exceptions]:
    """PostgreSQL's text output (a session in UTC, ISO dates) of a column -> `target`, the
    column's natural type, and the values it cannot hold. For `::text` reads (numeric) and for
    objects written before format version 2, which stored such a column as text wherever one of
    a batch's values did not convert."""
    if pa.types.is_decimal(target):
        special = pc.is_in(column, value_set=pa.array(_NUMERIC_SPECIAL)).to_numpy(zero_copy_only=False)
        if not special.any():
            return pc.cast(column, target), []
        exceptions = [(row, str(column[row].as_py())) for row in np.flatnonzero(special).tolist()]
        kept = pc.if_else(pa.array(special), pa.scalar(None, pa.string()), column.combine_chunks())
        return pa.chunked_array([pc.cast(kept, target)], target), exceptions
    try:
        return pc.cast(column, target), []
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    if not is_temporal(target) and not pa.types.is_time(target):
        raise ValueError(f"cannot read text as {target}")
    texts = column.to_pylist()
    values: list[int | None] = []
    exceptions = []
    for row, text in enumerate(texts):
        value = None if text is None else _parse_one(text, target)
        if text is not None and value is None:
            exceptions.append((row, text))
        values.append(value)
    width = pa.int32() if pa.types.is_date32(target) else pa.int64()
    return pa.chunked_array([pa.array(values, width).cast(target)], target), exceptions


def _parse_one(text: str, target: pa.DataType) -> int | None:
    """One value in `target`'s integer form (None: the type cannot hold it)."""
    if pa.types.is_time(target):
        h, m, s = text.split(":")
        sec, _, frac = s.partition(".")
        return ((int(h) * 60 + int(m)) * 60 + int(sec)) * 1_000_000 + int(frac.ljust(6, "0") or 0)
    date = pa.types.is_date32(target)
    if text in ("infinity", "-infinity"):
        return (DATE_INF if date else TS_INF) * (1 if text == "infinity" else -1)
    match = _TEXT_RE.match(text)
    if match is None:
        raise ValueError(f"not PostgreSQL's ISO output: {text!r}")
    y, mo, d, hh, mi, ss, frac, bc = match.groups()
    year = 1 - int(y) if bc else int(y)
    days = days_from_civil(year, int(mo), int(d))
    if date:
        return days
    us = days * _US_PER_DAY + ((int(hh or 0) * 60 + int(mi or 0)) * 60 + int(ss or 0)) * 1_000_000 \
        + int((frac or "").ljust(6, "0") or 0)
    return us if TS_NINF < us < TS_INF else None


# -- Arrow -> PostgreSQL text ------------------------------------------------------------------
def pg_text(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
    """A date, timestamp or time column as text PostgreSQL reads back to the same value (a session
    in UTC): Arrow's own rendering for years 1-9999, 'infinity', BC and far years otherwise."""
    if isinstance(column, pa.Array):
        column = pa.chunked_array([column], column.type)
    t = column.type
    if pa.types.is_timestamp(t) and t.tz is not None:
        column = column.cast(pa.timestamp(t.unit))  # the instant as naive UTC (a session in UTC)
    if pa.types.is_time(t):
        return _time_text(column)
    if not is_temporal(t):
        return pc.cast(column, pa.string())
    date = pa.types.is_date32(t)
    raw = _ints(column, pa.int32() if date else pa.int64())
    lo, hi = (_DAY_1, _DAY_10000) if date else (_DAY_1 * _US_PER_DAY, _DAY_10000 * _US_PER_DAY)
    odd = ((raw < lo) | (raw >= hi)) & _validity(column)
    if not odd.any():
        return pc.cast(column, pa.string())
    plain = pc.if_else(pa.array(odd), pa.scalar(0, column.type), column.combine_chunks())
    texts = pc.cast(plain, pa.string()).to_pylist()
    for row in np.flatnonzero(odd).tolist():
        texts[row] = _date_text(int(raw[row])) if date else _ts_text(int(raw[row]), zoned=False)
    mask = ~_validity(column)
    return pa.chunked_array([pa.array(texts, pa.string(), mask=mask if mask.any() else None)])


def python_values(column: pa.ChunkedArray | pa.Array) -> list[object]:
    """The column's values as Python objects (to_pylist), except dates and timestamps Python's
    datetime cannot hold (infinities, BC, years past 9999): PostgreSQL's text of those."""
    t = column.type
    if not is_temporal(t) or len(column) == 0:
        return column.to_pylist()  # type: ignore[no-any-return]
    date = pa.types.is_date32(t)
    raw = _ints(column, pa.int32() if date else pa.int64())
    lo, hi = (_DAY_1, _DAY_10000) if date else (_DAY_1 * _US_PER_DAY, _DAY_10000 * _US_PER_DAY)
    odd = ((raw < lo) | (raw >= hi)) & _validity(column)
    if not odd.any():
        return column.to_pylist()  # type: ignore[no-any-return]
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values: list[object] = pc.if_else(pa.array(odd), pa.scalar(0, t), column).to_pylist()
    text = pg_text(pc.filter(column, pa.array(odd))).to_pylist()
    for row, value in zip(np.flatnonzero(odd).tolist(), text):
        values[row] = value
    return values


def _time_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """time64: 24:00:00, which PostgreSQL allows and Arrow prints as 00:00:00, in full."""
    raw = _ints(column, pa.int64())
    whole = (raw == _US_PER_DAY) & _validity(column)
    if not whole.any():
        return pc.cast(column, pa.string())
    safe = pc.if_else(pa.array(whole), pa.scalar(0, column.type), column.combine_chunks())
    return pa.chunked_array([pc.if_else(pa.array(whole), "24:00:00", pc.cast(safe, pa.string()))])


def days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (year 0 is 1 BC), any year."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def civil_from_days(z: int) -> tuple[int, int, int]:
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return y + (m <= 2), m, d


_DAY_1 = days_from_civil(1, 1, 1)
_DAY_10000 = days_from_civil(10000, 1, 1)


def _date_text(days: int) -> str:
    if days in (DATE_INF, DATE_NINF):
        return "infinity" if days > 0 else "-infinity"
    y, m, d = civil_from_days(days)
    return f"{y if y > 0 else 1 - y:04d}-{m:02d}-{d:02d}{' BC' if y <= 0 else ''}"


def _ts_text(us: int, *, zoned: bool, sentinels: bool = True) -> str:
    """Microseconds since 1970 (any size) as PostgreSQL prints them in a UTC session; `sentinels`:
    TS_INF and TS_NINF stand for the infinities."""
    if sentinels and us in (TS_INF, TS_NINF):
        return "infinity" if us > 0 else "-infinity"
    days, rest = divmod(us, _US_PER_DAY)
    y, m, d = civil_from_days(days)
    secs, frac = divmod(rest, 1_000_000)
    clock = f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}" + (f".{frac:06d}".rstrip("0") if frac else "")
    return f"{y if y > 0 else 1 - y:04d}-{m:02d}-{d:02d} {clock}{'+00' if zoned else ''}{' BC' if y <= 0 else ''}"


# -- exceptions: values a column's type cannot hold ----------------------------------------------
#: Prefix of the columns that carry a read window's exceptions (common.arrow_types) alongside its
#: rows, so that slicing the window into batches slices them too (split_exceptions).
EXCEPTION_PREFIX = "__pg_archiver_exception__"


def exception_column(exceptions: Exceptions, rows: int) -> pa.ChunkedArray:
    texts: list[str | None] = [None] * rows
    for row, text in exceptions:
        texts[row] = text
    return pa.chunked_array([pa.array(texts, pa.string())])


def split_exceptions(table: pa.Table) -> tuple[pa.Table, dict[str, Exceptions]]:
    """The rows without their EXCEPTION_PREFIX columns, and those columns' values by row."""
    names = [n for n in table.column_names if n.startswith(EXCEPTION_PREFIX)]
    if not names:
        return table, {}
    out: dict[str, Exceptions] = {}
    for name in names:
        col = table.column(name)
        rows = pc.indices_nonzero(pc.is_valid(col)).to_pylist()
        if rows:
            out[name[len(EXCEPTION_PREFIX):]] = [(r, col[r].as_py()) for r in rows]
    return table.drop_columns(names), out


def with_exceptions(table: pa.Table, exceptions: dict[str, Exceptions]) -> pa.Table:
    """split_exceptions' inverse: the exceptions as columns that follow the rows through filters
    and slices (erase's rewrite)."""
    for name, values in exceptions.items():
        table = table.append_column(EXCEPTION_PREFIX + name, exception_column(values, table.num_rows))
    return table


def pg_texts(column: pa.ChunkedArray | pa.Array, exceptions: Exceptions, *, offset: int = 0) -> pa.ChunkedArray:
    """A natural-typed column (rows offset.. of its object) as text PostgreSQL reads back to the
    same values, with the object's exceptions for those rows in place."""
    text = pg_text(column)
    rows = [(row - offset, value) for row, value in exceptions if offset <= row < offset + len(column)]
    if not rows:
        return text
    values = text.to_pylist()
    for row, value in rows:
        values[row] = value
    return pa.chunked_array([pa.array(values, pa.string())])


def exceptions_of(doc: dict[str, Any]) -> dict[str, Exceptions]:
    """The values an object's column types could not hold (archive_metadata), by column."""
    return {name: [(int(row), str(text)) for row, text in values] for name, values in (doc.get("exceptions") or {}).items()}
