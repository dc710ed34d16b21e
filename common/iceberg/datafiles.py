"""The Iceberg DataFile of an archive object, from its Parquet footer: record and value counts,
NULL counts, the time column's bounds (only those: common/iceberg/schema.py), and its partition
from its `year=/month=/day=` folder, which is the day every row of the object falls on."""
from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from common.archive import layout
from common.iceberg.schema import partition_value
from common.pgtypes import EPOCH_ORDINAL


def data_file(io: Any, meta: Any, path: str, key: str, size: int, unit: str | None, prefix: str) -> Any:
    """The DataFile of one archive object: counts (and the time column's bounds) from its Parquet
    footer, its partition from its day folder."""
    from pyiceberg.io.pyarrow import (compute_statistics_plan, data_file_statistics_from_parquet_metadata,
                                      parquet_path_to_id_mapping)
    from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
    from pyiceberg.typedef import Record

    schema, spec = meta.schema(), meta.spec()
    with io.new_input(path).open() as stream:
        footer = pq.read_metadata(stream)
    plan = compute_statistics_plan(schema, meta.properties)
    _counts_only_where_unrepresentable(footer, plan, parquet_path_to_id_mapping(schema))
    stats = data_file_statistics_from_parquet_metadata(parquet_metadata=footer, stats_columns=plan,
                                                       parquet_column_mapping=parquet_path_to_id_mapping(schema))
    parsed = layout.parse_key(prefix, key)
    assert parsed is not None  # sync's counted() takes data objects only
    if spec.fields:
        source = schema.find_field(spec.fields[0].source_id)
        partition = Record(partition_value(parsed.day.toordinal() - EPOCH_ORDINAL, unit, source.field_type))
    else:  # a child table's (common/iceberg/schema.py partition_spec)
        partition = Record()
    return DataFile.from_args(
        content=DataFileContent.DATA, file_path=path, file_format=FileFormat.PARQUET,
        partition=partition, file_size_in_bytes=size,
        sort_order_id=None, spec_id=meta.default_spec_id, equality_ids=None, key_metadata=None,
        **stats.to_serialized_dict())


def _counts_only_where_unrepresentable(footer: pq.FileMetaData, plan: dict[int, Any], ids: dict[str, int]) -> None:
    """A bound pyiceberg cannot hold as a Python value (a date or timestamp before year 1 or past
    9999, infinity included) is not kept: that column only counts in this file."""
    from pyiceberg.io.pyarrow import MetricModeTypes, MetricsMode, StatisticsCollector

    arrow = footer.schema.to_arrow_schema()
    for r in range(footer.num_row_groups):
        group = footer.row_group(r)
        for pos in range(footer.num_columns):
            column = group.column(pos)
            fid = ids.get(column.path_in_schema)
            if fid is None or fid not in plan or not column.is_stats_set:
                continue
            t = arrow.field(column.path_in_schema).type
            stats = column.statistics
            if stats.has_min_max and not _representable(t, stats.min_raw, stats.max_raw):
                old = plan[fid]
                plan[fid] = StatisticsCollector(field_id=fid, iceberg_type=old.iceberg_type,
                                                mode=MetricsMode(MetricModeTypes.COUNTS), column_name=old.column_name)


_DAY_1, _DAY_10000 = -719162, 2932897  # days since 1970 of 0001-01-01 and 10000-01-01
_US_PER_DAY = 86_400_000_000


def _representable(t: pa.DataType, lo: Any, hi: Any) -> bool:
    if pa.types.is_date32(t):
        return _DAY_1 <= lo and hi < _DAY_10000
    if pa.types.is_timestamp(t):
        return _DAY_1 * _US_PER_DAY <= lo and hi < _DAY_10000 * _US_PER_DAY
    if pa.types.is_time(t):
        return hi < _US_PER_DAY  # 24:00:00 is no Python time
    return True
