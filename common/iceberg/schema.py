"""The Iceberg table of an archived table: its schema from the PostgreSQL column types (the same
rule that gives each column its Parquet type, common/pgtypes.py), its partition spec and properties.

- Types: smallint and integer are Iceberg `int` (a smallint column's Parquet INT32 annotated
  Int(16) reads as int), bigint `long`, real `float`, double precision `double`, boolean,
  text-like and every column stored as PostgreSQL text `string`, bytea `binary`, date, time,
  timestamp `timestamp`, timestamptz `timestamptz`, numeric(p,s) with p <= 38 `decimal(p,s)`.
  Every field is optional: the archive's objects are written with nullable fields, and a column
  added later is missing (NULL) in older objects.
- Field ids are Iceberg's own; the objects carry none, so the table holds a name mapping
  (`schema.name-mapping.default`) by which every engine finds a column by its PostgreSQL name.
- Partitions: day(<timestamp column>), the same UTC day as the object's `year=/month=/day=`
  folder. An integer Unix-time column (common/epoch.py) has no Iceberg day(): it is partitioned by
  truncate(<one day in its unit>), whose value is the first instant of the UTC day in that unit
  (86400000 wide for milliseconds), so partitions are the same days and a filter on the column
  prunes them.
- Metrics: only the time column keeps lower and upper bounds in the table's metadata; every other
  column only counts (values, NULLs). Iceberg keeps the metadata of past snapshots, and erase must
  leave no erased value behind in it (a bound is a value)."""
from __future__ import annotations

from typing import Any

import pyarrow as pa

from common import epoch
from common.pgtypes import TableSchema

#: Table properties that say which archived table an Iceberg table registers (sync refuses another's).
SOURCE_PROPERTY = "pg-archiver.source"
#: The fingerprint of the archive listing the current snapshot reflects (common/iceberg/sync.py).
LISTING_PROPERTY = "pg-archiver.listing-sha256"
NAME_MAPPING = "schema.name-mapping.default"


def iceberg_type(t: pa.DataType) -> Any:
    """The Iceberg type of a column's Arrow type (pgtypes.arrow_schema: natural type, or text)."""
    from pyiceberg import types as it

    simple = {pa.int16(): it.IntegerType(), pa.int32(): it.IntegerType(), pa.int64(): it.LongType(),
              pa.float32(): it.FloatType(), pa.float64(): it.DoubleType(), pa.bool_(): it.BooleanType(),
              pa.string(): it.StringType(), pa.binary(): it.BinaryType(), pa.date32(): it.DateType(),
              pa.time64("us"): it.TimeType(), pa.timestamp("us"): it.TimestampType(),
              pa.timestamp("us", tz="UTC"): it.TimestamptzType()}
    if t in simple:
        return simple[t]
    if pa.types.is_decimal(t):
        return it.DecimalType(t.precision, t.scale)
    raise ValueError(f"no Iceberg type for {t}")


def iceberg_schema(schema: TableSchema, reader: pa.Schema) -> Any:
    """The Iceberg schema of a table whose objects conform.reader_schema() reads as `reader`
    (columns in the current order, dropped ones last), field ids 1..n."""
    from pyiceberg.schema import Schema
    from pyiceberg.types import NestedField

    fields = [NestedField(field_id=i, name=f.name, field_type=iceberg_type(f.type), required=False)
              for i, f in enumerate(reader, start=1)]
    return Schema(*fields)


def partition_spec(schema: Any, column: str, unit: str | None) -> Any:
    """day(column), or truncate(one day) for an integer Unix-time column. A child table's objects
    (issue 28) have no time column of their own (their day is their parents'): unpartitioned."""
    from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC, PartitionField, PartitionSpec
    from pyiceberg.transforms import DayTransform, TruncateTransform

    if not column:
        return UNPARTITIONED_PARTITION_SPEC
    source = schema.find_field(column)
    transform: Any = DayTransform() if unit is None else TruncateTransform(epoch.day_length(unit))
    return PartitionSpec(PartitionField(source_id=source.field_id, field_id=1000, transform=transform,
                                        name=f"{column}_day"))


def partition_value(day_number: int, unit: str | None, source_type: Any) -> Any:
    """The partition value of the objects in one UTC day folder (days since 1970): what the spec's
    transform gives every row of such an object (the archiver cuts objects by that day)."""
    if unit is None:
        return day_number
    value = day_number * epoch.day_length(unit)
    from decimal import Decimal

    from pyiceberg.types import DecimalType

    return Decimal(value) if isinstance(source_type, DecimalType) else value


def table_properties(schema: Any, *, source: str, time_column: str) -> dict[str, str]:
    return {
        SOURCE_PROPERTY: source,
        NAME_MAPPING: schema.name_mapping.model_dump_json(),
        "write.metadata.metrics.default": "counts",
        **({f"write.metadata.metrics.column.{time_column}": "full"} if time_column else {}),
    }
