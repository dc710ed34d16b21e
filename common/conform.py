"""An object's rows in its table's current schema, whatever schema version wrote them (issue 27).

A table's objects differ in schema only where its columns changed, and then the way Iceberg's
schema evolution allows: a column added later is missing from older objects (NULL there), a
widened column (int to bigint, real to double, a decimal's precision, varchar(n) to text) is
narrower in older objects. Objects written before format version 2 also hold a date, timestamp,
time or numeric column (or a domain over one) as PostgreSQL text where the new rule stores the
type itself ("mixed schema"). conform() reads all of them into one Arrow schema; mixed_columns()
tells which columns of an object are stored otherwise than the table's schema says, which validate
reports as `mixed_schema` and `archiver --migrate-layout` rewrites (through conform())."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from common import arrow_types
from common.arrow_types import Exceptions, pg_texts
from common.pgtypes import Column, TableSchema, arrow_schema, bytea_texts


@dataclass(frozen=True)
class Conformed:
    table: pa.Table  # exactly the target schema's columns, in its order and types
    #: Values the target types cannot hold (NULL in `table`), by column: for a rewrite's metadata.
    exceptions: dict[str, Exceptions] = field(default_factory=dict)


def current_schema(versions: Sequence[TableSchema]) -> TableSchema:
    """The table's schema over all its versions, oldest first: the newest version's columns in its
    order, then the columns only older versions have (dropped since: their objects still hold
    them), each as its newest version declares it."""
    newest: dict[str, Column] = {}
    for version in versions:
        for col in version.columns:
            newest[col.name] = col
    names = list(versions[-1].names) if versions else []
    names += [n for v in reversed(versions) for n in v.names if n not in names]
    return TableSchema(tuple(newest[n] for n in dict.fromkeys(names)))


def reader_schema(versions: Sequence[TableSchema]) -> pa.Schema:
    """The Arrow schema every version's rows are read into: current_schema()'s types, except a
    column whose type changed in a way no older value widens to (int to text, timestamp to date):
    that one is read as text."""
    schema = arrow_schema(current_schema(versions))
    fields = []
    for f in schema:
        olds = [arrow_schema(v).field(f.name).type for v in versions if f.name in v.names]
        fields.append(f if all(widens(t, f.type) for t in olds) else pa.field(f.name, pa.string()))
    return pa.schema(fields)


_INTS = [pa.int16(), pa.int32(), pa.int64()]


def widens(old: pa.DataType, new: pa.DataType) -> bool:
    """Whether every value of `old` is a value of `new` (Iceberg's type promotions, and smallint)."""
    if old == new:
        return True
    if old in _INTS and new in _INTS:
        return _INTS.index(old) < _INTS.index(new)
    if old == pa.float32():
        return new == pa.float64()
    if pa.types.is_decimal(old) and pa.types.is_decimal(new):
        return old.scale == new.scale and old.precision <= new.precision  # type: ignore[attr-defined]
    return False


def pg_widens(old: Column, new: Column) -> bool:
    """Whether every value of an archived column's type goes into the live column's type unchanged
    (restore: a column widened since it was archived is no drift): the natural types widen, or
    the values are text and the new type takes any text the old one held (varchar(n) to a longer
    varchar or text, numeric(p,s) to numeric)."""
    if old.pg_type == new.pg_type:
        return True
    o, n = old.natural_type(), new.natural_type()
    if o is not None and n is not None:
        return widens(o, n)
    (ot, _), (nt, _) = old.kind, new.kind
    if ot in _TEXTS and nt in _TEXTS:
        return _length(new) is None or (_length(old) or 1 << 31) <= (_length(new) or 0)
    return ot == nt == "numeric" and (new.base_type or new.pg_type) == "numeric"


_TEXTS = ("text", "varchar")


def _length(col: Column) -> int | None:
    """varchar(n)'s n; None: unlimited."""
    typ = col.base_type or col.pg_type
    return int(typ[typ.index("(") + 1:typ.index(")")]) if "(" in typ else None


def mixed_columns(stored: pa.Schema, canonical: pa.Schema) -> list[str]:
    """The columns an object holds whose type (or nullability) differs from the table's schema.
    Columns it lacks (added since) are no difference: they read as NULL. The JSON logical type
    Parquet gives json/jsonb text counts as text."""
    out = []
    for f in canonical:
        i = stored.get_field_index(f.name)
        if i < 0:
            continue
        have = stored.field(i)
        if _plain(have.type) != f.type or have.nullable != f.nullable:
            out.append(f.name)
    return out


def stored_schema(schema: TableSchema, encodings: dict[str, str]) -> pa.Schema:
    """The Arrow schema an object holds, from its column documents alone (a manifest): each
    column's natural type where it was stored natively, text otherwise."""
    return pa.schema([pa.field(c.name, (c.natural_type() if encodings.get(c.name) == "native" else None) or pa.string())
                      for c in schema.columns])


def _plain(t: pa.DataType) -> pa.DataType:
    return t.storage_type if isinstance(t, pa.BaseExtensionType) else t


def conform(table: pa.Table, target: pa.Schema, *, exceptions: dict[str, Exceptions] | None = None,
            fill_missing: bool = True) -> Conformed:
    """One object's rows (batch_writer.decode) in `target` (reader_schema() for readers; the
    object's own arrow_schema() for a rewrite): text written by format version 1 parsed into the
    column's type, narrower types widened, a column the object lacks all NULL (left out with
    `fill_missing` False), types that changed otherwise as PostgreSQL text. `exceptions` are the
    object's (pgtypes.exceptions_of): where the target is text they become the value."""
    exceptions = exceptions or {}
    cols, names, out = [], [], {}
    for f in target:
        if f.name not in table.column_names:
            if fill_missing:
                cols.append(pa.nulls(table.num_rows, f.type))
                names.append(f.name)
            continue
        arr, kept = _column(table.column(f.name), f.type, exceptions.get(f.name, []))
        cols.append(arr)
        names.append(f.name)
        if kept:
            out[f.name] = kept
    schema = pa.schema([target.field(n) for n in names])
    return Conformed(pa.Table.from_arrays(cols, schema=schema), out)


def _column(arr: pa.ChunkedArray, t: pa.DataType, exceptions: Exceptions) -> tuple[pa.ChunkedArray, Exceptions]:
    arr = pa.chunked_array([c.storage if isinstance(c, pa.ExtensionArray) else c for c in arr.chunks],
                           _plain(arr.type))
    if arr.type == t:
        return arr, exceptions
    if pa.types.is_string(t):
        return _as_text(arr, exceptions), []
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        parsed, found = _parse(arr, t)
        return parsed, sorted(exceptions + found)
    return pc.cast(arr, t), exceptions


def _as_text(arr: pa.ChunkedArray, exceptions: Exceptions) -> pa.ChunkedArray:
    if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
        return pa.chunked_array([bytea_texts(arr)], pa.string())  # PostgreSQL's hex form, as JSONL holds it
    if pa.types.is_boolean(arr.type):
        return pa.chunked_array([pc.if_else(arr.combine_chunks(), "t", "f")], pa.string())  # t / f, as PostgreSQL prints
    return pg_texts(arr, exceptions)


def _parse(arr: pa.ChunkedArray, t: pa.DataType) -> tuple[pa.ChunkedArray, Exceptions]:
    """PostgreSQL text (format version 1's fallback, JSONL, a domain archived as text) -> `t`."""
    if arrow_types.is_temporal(t) or pa.types.is_time(t) or pa.types.is_decimal(t):
        return arrow_types.parse_text(arr, t)
    if pa.types.is_boolean(t):
        return pa.chunked_array([pc.equal(arr.combine_chunks(), "t")]), []
    if pa.types.is_binary(t):
        values = [None if v is None else bytes.fromhex(v[2:]) for v in arr.to_pylist()]
        return pa.chunked_array([pa.array(values, pa.binary())]), []
    if pa.types.is_floating(t):
        try:
            return pc.cast(arr, t), []
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # 'Infinity', '-Infinity'
            return pa.chunked_array([pa.array([None if v is None else float(v) for v in arr.to_pylist()], t)]), []
    return pc.cast(arr, t), []
