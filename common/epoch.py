"""Unix time in an integer column (issue 28): a `timestamp_column` of type smallint, integer, bigint
or numeric(p, 0) holding seconds, milliseconds or microseconds since 1970-01-01 UTC, as the table's
`timestamp_unit` says (Keycloak's `event_time` is bigint milliseconds). Every tool that works from
time converts here, with integers only: through a float, a row a microsecond from the cutoff could
land on the wrong side of it, and a wrong side means a row deleted too early.

The column keeps its integer type in the table, in the archive and on restore; only the cutoff,
the day partitions and the manifests' time ranges are worked out from it."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from common.key_range import iso
from common.pgtypes import Column, utc_days

#: The units `timestamp_unit` accepts, coarsest first.
UNITS = ("s", "ms", "us")
_MICROS = {"s": 1_000_000, "ms": 1_000, "us": 1}
_DAY_MICROS = 86_400 * 1_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
INTEGER_TYPES = frozenset({"int2", "int4", "int8"})
#: A live table's newest row lies between these (the second a year past the clock): see plausible_units.
PLAUSIBLE_FROM = datetime(1980, 1, 1, tzinfo=timezone.utc)
PLAUSIBLE_AHEAD = timedelta(days=366)


def is_integer_time(col: Column) -> bool:
    """A column that can hold Unix time in whole units: smallint, integer, bigint, numeric(p, 0)."""
    if col.typtype != "b":
        return False
    return col.typname in INTEGER_TYPES or (col.typname == "numeric" and col.precision is not None and col.scale == 0)


def to_epoch(when: datetime, unit: str) -> int:
    """The first whole `unit` at or after `when` (aware): for integer values v, `v < to_epoch(t)`
    holds exactly for the times before t, and `v >= to_epoch(t)` for those at or after it (a
    cutoff at 12:00:00.5 keeps a row at 12:00:01 and takes the one at 12:00:00)."""
    micros = (when - EPOCH) // timedelta(microseconds=1)
    return -(-micros // _MICROS[unit])


def from_epoch(value: Any, unit: str) -> datetime:
    """A value of an integer time column (int, Decimal, or its text) as aware UTC."""
    return EPOCH + timedelta(microseconds=int(value) * _MICROS[unit])


def day_length(unit: str) -> int:
    """One day in `unit`."""
    return _DAY_MICROS // _MICROS[unit]


def epoch_days(values: pa.ChunkedArray | pa.Array, unit: str) -> np.ndarray:
    """UTC days since 1970-01-01 of integer times in `unit` (int16/32/64, decimal with scale 0,
    or their text, as JSONL archives hold them; no NULLs), rounded down: a time before 1970 falls
    on its own day, as pgtypes.utc_days puts it."""
    ints = values if pa.types.is_int64(values.type) else pc.cast(values, pa.int64())
    return np.floor_divide(ints.to_numpy(zero_copy_only=False), day_length(unit))  # type: ignore[no-any-return]


def day_numbers(values: pa.ChunkedArray | pa.Array, unit: str | None) -> np.ndarray:
    """The partition rule for any time column: days since the epoch (UTC) of its values, with
    `unit` those of an integer column (archiver/reader.py cuts batches by it, validate checks it)."""
    return utc_days(values) if unit is None else epoch_days(values, unit)


def time_iso(value: Any, unit: str | None) -> str:
    """A manifest's min_ts / max_ts: ISO text of the time a column value stands for (an integer
    column's as an aware UTC timestamp, so every reader of manifests compares times)."""
    return iso(value if unit is None else from_epoch(value, unit))


def day_sql(column: sql.Composable, unit: str) -> sql.Composed:
    """The UTC day of an integer time, in SQL, for reports (dry run): never for a row filter, where
    a function around the column would keep PostgreSQL off its index."""
    return sql.SQL("(DATE '1970-01-01' + floor({}::numeric / {})::integer)").format(column, sql.Literal(day_length(unit)))


def plausible_units(newest: int, now: datetime) -> list[str]:
    """The units in which a table's newest value reads as a time between 1980 and a year from now.
    The units are 1000 apart, so at most one fits: a live table's newest row tells its unit."""
    return [u for u in UNITS if to_epoch(PLAUSIBLE_FROM, u) <= newest < to_epoch(now + PLAUSIBLE_AHEAD, u)]
