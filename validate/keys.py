"""An archive object's keys as ONE comparable column, whatever the key's width (issue 15): the
column itself for a one-column key; for a composite key each row's values as a JSON list of text,
so two rows have equal entries exactly when their keys are equal (the overlap check compares
these, and orders by them to group objects: any total order in which each object's keys lie
inside its [min, max] serves)."""
from __future__ import annotations

import json
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc


def decode_columns(key_columns: Sequence[str], *others: str) -> list[str]:
    """The columns to read for a check: the key's and the others, each once (a partitioned table's
    key includes its timestamp column)."""
    return list(dict.fromkeys([*key_columns, *(c for c in others if c)]))  # a child's timestamp_column is ""


def key_array(table: pa.Table, key_columns: Sequence[str]) -> pa.ChunkedArray:
    if len(key_columns) == 1:
        return table.column(key_columns[0])
    texts = [pc.cast(table.column(c), pa.string()).to_pylist() for c in key_columns]
    return pa.chunked_array([pa.array([json.dumps(list(row)) for row in zip(*texts)], pa.string())])


def key_label(key_columns: Sequence[str]) -> str:
    return key_columns[0] if len(key_columns) == 1 else f"({','.join(key_columns)})"
