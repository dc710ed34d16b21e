"""A manifest's ranges as JSON values, for the archiver (new objects) and erase (replacements):
the key's first and last value (the lexicographically first and last key, as lists, for a
composite key), and ISO timestamps."""
from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from common.pgtypes import bytea_text


def iso(v: Any) -> str:
    return v.isoformat() if hasattr(v, "isoformat") else str(v)


def jsonable(v: Any) -> Any:
    if isinstance(v, (list, tuple)):  # a composite key
        return [jsonable(x) for x in v]
    if isinstance(v, bytes):
        # bytea's own text form, which casts back exactly: str() gave "b'm'", a different bytea
        # (or no valid one), so a resumed run started from the wrong key.
        return bytea_text(v)
    return v if isinstance(v, (int, str, float)) or v is None else str(v)


def natural_column(rows: pa.Table, name: str, schema: Any) -> pa.ChunkedArray:
    """The column in its natural type, so manifest ranges order like the database does (JSONL
    keeps text, where "100" < "99"); as stored when that type cannot hold its values."""
    column = rows.column(name)
    natural = schema.column(name).natural_type()
    if natural is not None and column.type != natural:
        try:
            return pc.cast(column, natural)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    return column


def key_range(keys: pa.Table) -> tuple[Any, Any]:
    """The manifest's min_pk and max_pk: the column's min and max for a one-column key (as always);
    for a composite key the lexicographically first and last key, as lists of the column values."""
    if keys.num_columns == 1:
        mm = pc.min_max(keys.column(0))
        return jsonable(mm["min"].as_py()), jsonable(mm["max"].as_py())
    first, last = ordered_ends(keys)
    return ([jsonable(keys.column(i)[first].as_py()) for i in range(keys.num_columns)],
            [jsonable(keys.column(i)[last].as_py()) for i in range(keys.num_columns)])


def ordered_ends(table: pa.Table) -> tuple[int, int]:
    """The indexes of the lexicographically first and last rows, column by column."""
    order = pc.sort_indices(table, sort_keys=[(name, "ascending") for name in table.column_names])
    return order[0].as_py(), order[len(order) - 1].as_py()
