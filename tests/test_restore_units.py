"""The restore tool's pure decisions, without a database: dates, drift plans, type names spliced into
CREATE TABLE, manifest timestamps."""
from __future__ import annotations

from datetime import date, datetime, timezone

import pyarrow as pa
import pytest

from common.errors import DataIntegrityError, UsageError
from common.pgtypes import Column, TableSchema
from common.archive.catalog import parse_ts
from restore.copytext import to_copy_text
from restore.drift import SchemaDrift, plan_columns
from restore.engine import parse_range
from restore.target import check_type


@pytest.mark.parametrize(("start", "end", "expected"), [
    ("2026-01-01", "2026-01-31", (date(2026, 1, 1), date(2026, 1, 31))),
    ("2026-01-01", "2026-01-01", (date(2026, 1, 1), date(2026, 1, 1))),
    (None, None, (None, None)),
    (date(2025, 12, 31), None, (date(2025, 12, 31), None)),
])
def test_valid_date_ranges(start: str | None, end: str | None, expected: tuple[date | None, date | None]) -> None:
    assert parse_range(start, end) == expected


@pytest.mark.parametrize(("start", "end"), [
    ("2026-1-1", None), ("20260101", None), ("2026-02-29", None), (None, "tomorrow"),
    ("2026-01-02", "2026-01-01"), ("2026-01-01T00:00:00", None),
])
def test_invalid_date_ranges_are_usage_errors(start: str | None, end: str | None) -> None:
    with pytest.raises(UsageError):
        parse_range(start, end)


@pytest.mark.parametrize("pg_type", [
    "bigint", "numeric(12,2)", "numeric(5,-2)", "numeric(3,5)", "character varying(20)", "character(5)", "timestamp(3) with time zone",
    "timestamp without time zone", "time with time zone", "double precision[]", "bit varying(16)", "integer[]",
    "interval", "interval day to second(3)", "interval year to month", 'myschema."My Type"', '"weird ""quoted"" type"[]',
])
def test_type_names_printed_by_format_type_are_accepted(pg_type: str) -> None:
    assert check_type(pg_type) == pg_type


@pytest.mark.parametrize("pg_type", [
    "int); DROP TABLE audit_logs; --", "text DEFAULT 'x'", "int, evil int", "int -- comment", '"unclosed', "",
    "integer NOT NULL", "numeric(12,2) CHECK (true)",
])
def test_anything_else_is_refused_as_a_type(pg_type: str) -> None:
    with pytest.raises(DataIntegrityError):
        check_type(pg_type)


def schema(*cols: tuple[str, str], generated: tuple[str, ...] = ()) -> TableSchema:
    return TableSchema(tuple(Column(name=n, typname=t.split("(")[0], pg_type=t, typtype="b", generated=n in generated)
                             for n, t in cols))


ARCHIVED = schema(("id", "bigint"), ("email", "text"), ("amount", "numeric(12,2)"), ("twice", "bigint"))


def test_same_shape_loads_every_column_except_live_generated_ones() -> None:
    live = schema(("id", "bigint"), ("email", "text"), ("amount", "numeric(12,2)"), ("twice", "bigint"),
                  generated=("twice",))
    plan = plan_columns(ARCHIVED, live, primary_key=["id"], allow_drop=False, key="k", target="t")
    assert plan.load == ("id", "email", "amount") and plan.recomputed == ("twice",)
    assert plan.dropped == () and plan.defaulted == ()


def test_gained_columns_are_defaulted() -> None:
    live = schema(("id", "bigint"), ("email", "text"), ("amount", "numeric(12,2)"), ("twice", "bigint"), ("region", "text"))
    plan = plan_columns(ARCHIVED, live, primary_key=["id"], allow_drop=False, key="k", target="t")
    assert plan.defaulted == ("region",) and plan.load == ("id", "email", "amount", "twice")


@pytest.mark.parametrize("allow_drop", [False, True])
def test_lost_and_retyped_columns(allow_drop: bool) -> None:
    live = schema(("id", "bigint"), ("amount", "numeric(14,4)"), ("twice", "bigint"))
    if not allow_drop:
        with pytest.raises(SchemaDrift, match=r"email.*amount \(numeric\(12,2\) -> numeric\(14,4\)\)"):
            plan_columns(ARCHIVED, live, primary_key=["id"], allow_drop=False, key="k", target="t")
        return
    plan = plan_columns(ARCHIVED, live, primary_key=["id"], allow_drop=True, key="k", target="t")
    assert plan.load == ("id", "twice") and plan.dropped == ("email", "amount")


def test_a_retyped_column_with_a_space_in_its_name_is_reported_whole() -> None:
    archived = schema(("id", "bigint"), ("my col", "integer"))
    plan = plan_columns(archived, schema(("id", "bigint"), ("my col", "text")), primary_key=["id"],
                        allow_drop=True, key="k", target="t")
    assert plan.dropped == ("my col",)


def test_primary_key_must_be_restorable_even_with_allow_drop() -> None:
    live = schema(("id", "integer"), ("email", "text"))
    with pytest.raises(SchemaDrift, match="primary key"):
        plan_columns(ARCHIVED, live, primary_key=["id"], allow_drop=True, key="k", target="t")


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-01-02T03:04:05.000006+00:00", datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)),
    ("2024-01-02T05:04:05+02:00", datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),
    ("2024-01-02T03:04:05", datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),  # timestamp: read as UTC
    ("2024-01-02", datetime(2024, 1, 2, tzinfo=timezone.utc)),  # a date column
    ("10000-01-01 00:00:00", None),
    ("", None),
])
def test_manifest_timestamps_parse_as_utc(text: str, expected: datetime | None) -> None:
    assert parse_ts(text) == expected


def copy_text(table: pa.Table) -> bytes:
    return b"".join(b.to_pybytes() for b in to_copy_text(table))


def test_copy_text_escapes_specials_and_tells_null_from_empty() -> None:
    table = pa.table({"id": pa.array([1, 2, 3], pa.int64()),
                      "t": pa.array(["a\\b\tc\nd\re", "", None], pa.string())})
    assert copy_text(table) == b"1\ta\\\\b\\tc\\nd\\re\n2\t\n3\t\\N\n"


def test_copy_text_of_a_slice_and_of_many_chunks_keeps_row_order() -> None:
    table = pa.Table.from_batches([pa.record_batch({"v": pa.array([f"r{i}" for i in range(j, j + 3)])})
                                   for j in (0, 3, 6)])
    assert copy_text(table) == b"".join(f"r{i}\n".encode() for i in range(9))
    assert copy_text(table.slice(4, 3)) == b"r4\nr5\nr6\n"


def test_copy_text_renders_natural_types_as_postgres_reads_them() -> None:
    table = pa.table({
        "ts": pa.array([datetime(2024, 3, 10, 2, 30, 0, 5, tzinfo=timezone.utc)], pa.timestamp("us", tz="UTC")),
        "b": pa.array([b"\x00\xff"], pa.binary()),
        "ok": pa.array([True]),
        "n": pa.array([None], pa.float64()),
    })
    assert copy_text(table) == b"2024-03-10 02:30:00.000005\t\\\\x00ff\ttrue\t\\N\n"
