"""PostgreSQL column types <-> Arrow: natural Arrow types where they are lossless, PostgreSQL's own
`COPY ... TO STDOUT` text form everywhere else (issue 2, "Archive contract"), so restore reproduces
every value byte for byte.

Rows travel as binary COPY decoded by the ADBC driver (archiver/arrow_source.py) without a Python
object per value (issue 2 measured ~195k rows/s this way vs ~21k with a cursor); columns whose
binary form is not exactly their natural Arrow type are read as `col::text`."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv  # restore renders rows back as COPY CSV

from common import arrow_types
from common.arrow_types import EXCEPTION_PREFIX, exception_column, pg_texts

#: Session settings that make PostgreSQL's text output canonical; restore uses the same ones.
SESSION_SETTINGS = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",
    "bytea_output": "hex",
    "client_encoding": "UTF8",
    # How string literals read and print (pg_get_expr of a partition bound, which restore turns
    # back into CREATE TABLE ... PARTITION OF): a backslash is a character, as by default since
    # PostgreSQL 9.1, even where a database or role turned it off.
    "standard_conforming_strings": "on",
}

METADATA_KEY = b"pg_archiver"
#: 2: every object of a table with the same columns has the same Arrow schema (natural types by
#: PostgreSQL type alone; infinities as the type's extremes; values the type cannot hold in the
#: metadata's `exceptions`). 1: a fallible column (timestamps, numeric) was text in the objects
#: where one of its values did not convert.
FORMAT_VERSION = 2

_SIMPLE: dict[str, pa.DataType] = {
    "int2": pa.int16(),
    "int4": pa.int32(),
    "int8": pa.int64(),
    "float4": pa.float32(),
    "float8": pa.float64(),
    "bool": pa.bool_(),
    "text": pa.string(),
    "varchar": pa.string(),
    "bpchar": pa.string(),
    "name": pa.string(),
    "uuid": pa.string(),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "timestamp": pa.timestamp("us"),
    "date": pa.date32(),
    "bytea": pa.binary(),
}
#: Base types (a domain's too) stored as their natural Arrow type, whatever the values: infinities
#: and BC dates included (common/arrow_types.py). Every other type is stored as its text form.
_TEMPORAL: dict[str, pa.DataType] = {"time": pa.time64("us")}


@dataclass(frozen=True)
class Column:
    name: str
    typname: str  # pg_type.typname of the column's own type (a domain's name for a domain)
    pg_type: str  # format_type(), e.g. numeric(12,2), character varying(20)
    typtype: str  # b base, d domain, e enum, c composite, r range, m multirange
    precision: int | None = None
    scale: int | None = None
    generated: bool = False
    identity: bool = False
    #: A domain's base type (nested domains resolved): pg_type.typname, typtype and format_type().
    #: None for other columns, and in archives written before format version 2 (whose domains
    #: were stored as text).
    base_typname: str | None = None
    base_typtype: str | None = None
    base_type: str | None = None

    @property
    def kind(self) -> tuple[str, str]:
        """(typname, typtype) of the type the values are stored as: a domain's base type."""
        if self.typtype == "d" and self.base_typname is not None and self.base_typtype is not None:
            return self.base_typname, self.base_typtype
        return self.typname, self.typtype

    @property
    def decimal_fits(self) -> bool:
        """A numeric(p, s) that Arrow's and Parquet's decimal can hold: p <= 38 and 0 <= s <= p.
        PostgreSQL 15 also allows a negative scale and one above the precision (numeric(5,-2),
        numeric(3,5)); those are kept in their text form."""
        return self.precision is not None and self.precision <= 38 and 0 <= (self.scale or 0) <= self.precision

    def natural_type(self) -> pa.DataType | None:
        """The column's Arrow (and Parquet) type, from its PostgreSQL type alone, never from the
        values (issue 27: one schema per table); None when the text form is stored."""
        typname, typtype = self.kind
        if typtype != "b":
            return None
        if typname == "numeric":
            fits = self.decimal_fits and self.precision is not None
            return pa.decimal128(self.precision, self.scale or 0) if fits else None
        return _SIMPLE.get(typname) or _TEMPORAL.get(typname)


@dataclass(frozen=True)
class TableSchema:
    columns: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def fingerprint(self) -> str:
        """Identifies the table shape: names and declared types, in order."""
        text = json.dumps([[c.name, c.pg_type] for c in self.columns], separators=(",", ":"))
        return "sha256:" + sha256(text.encode()).hexdigest()[:32]

    def to_json(self) -> list[dict[str, Any]]:
        return [_doc(c) for c in self.columns]

    @classmethod
    def from_json(cls, data: list[dict[str, Any]]) -> TableSchema:
        return cls(tuple(column_from_json(c) for c in data))


_COLUMN_FIELDS = set(Column.__dataclass_fields__)


def arrow_schema(schema: TableSchema) -> pa.Schema:
    """The Arrow (Parquet) schema of a table's objects: each column's type follows from its
    PostgreSQL type alone, and every field is nullable, so that every object of a table whose
    columns did not change has this very schema, whatever its values (an all-NULL batch too)."""
    return pa.schema([pa.field(c.name, c.natural_type() or pa.string()) for c in schema.columns])


def column_from_json(doc: dict[str, Any]) -> Column:
    """A Column from an archive's or manifest's column document (its `encoding` and any field a
    later version adds are not Column fields)."""
    return Column(**{k: v for k, v in doc.items() if k in _COLUMN_FIELDS})


# A domain's base type is found through every level of a domain over a domain; its typmod (a
# numeric's precision and scale) is the one the innermost domain over a base type declared.
COLUMNS_SQL = """
SELECT a.attname, t.typname, format_type(a.atttypid, a.atttypmod), t.typtype,
       CASE WHEN b.typname = 'numeric' AND base.typmod >= 4 THEN ((base.typmod - 4) >> 16) & 65535 END,
       CASE WHEN b.typname = 'numeric' AND base.typmod >= 4 THEN (((base.typmod - 4) & 2047) # 1024) - 1024 END,
       a.attgenerated <> '', a.attidentity <> '',
       b.typname, b.typtype, format_type(base.oid, base.typmod)
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
CROSS JOIN LATERAL (
    WITH RECURSIVE d(oid, typmod, typtype) AS (
        SELECT a.atttypid, a.atttypmod, t.typtype
        UNION ALL
        SELECT dt.typbasetype, CASE WHEN d.typmod = -1 THEN dt.typtypmod ELSE d.typmod END, bt.typtype
        FROM d JOIN pg_type dt ON dt.oid = d.oid JOIN pg_type bt ON bt.oid = dt.typbasetype
        WHERE d.typtype = 'd')
    SELECT oid, typmod FROM d WHERE typtype <> 'd'
) base
JOIN pg_type b ON b.oid = base.oid
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


def schema_from_rows(rows: list[tuple[Any, ...]]) -> TableSchema:
    return TableSchema(
        tuple(
            Column(name=r[0], typname=r[1], pg_type=r[2], typtype=r[3], precision=r[4], scale=r[5],
                   generated=bool(r[6]), identity=bool(r[7]),
                   **({"base_typname": r[8], "base_typtype": r[9], "base_type": r[10]} if r[3] == "d" else {}))
            for r in rows
        )
    )


#: Types whose binary COPY form the ADBC reader decodes into exactly their natural Arrow type.
_BINARY_EXACT = {"int2", "int4", "int8", "float4", "float8", "bool", "text", "varchar", "bpchar", "name", "bytea",
                 "time"}
#: Read in binary and mapped here: the driver adds the 1970-2000 offset with wrap-around, so
#: 'infinity' and the last years PostgreSQL allows arrive as other values, which
#: common.arrow_types.from_driver maps back exactly (no `::text`: the server's timestamp_out was
#: the costliest part of reading such a column).
_BINARY_TEMPORAL = {"timestamptz", "timestamp", "date"}


#: Read in binary and turned into exactly their text form here, which costs less than the server's
#: `::text` (uuid_out; jsonb's binary form is its text behind a version byte the driver drops).
_BINARY_AS_TEXT = {"uuid", "json", "jsonb"}


def read_natively(col: Column) -> bool:
    """Whether a column is read in its binary form (a domain's: as its base type); every other
    column is read as `col::text`, PostgreSQL's own text output, and cast to its natural type here
    where it has one (numeric)."""
    typname, typtype = col.kind
    return typtype == "b" and typname in _BINARY_EXACT | _BINARY_AS_TEXT | _BINARY_TEMPORAL


def _storage(chunk: pa.Array) -> pa.Array:
    """The plain array under the driver's extension types (arrow.uuid, arrow.json, arrow.opaque)."""
    return chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk


#: (text columns, hex digits) of the groups of a uuid's text form: 8-4-4-4-12.
_UUID_GROUPS = [(slice(0, 8), slice(0, 8)), (slice(9, 13), slice(8, 12)), (slice(14, 18), slice(12, 16)),
                (slice(19, 23), slice(16, 20)), (slice(24, 36), slice(20, 32))]


def _uuid_text(chunk: pa.Array) -> pa.Array:
    """16-byte uuids -> 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', as uuid_out writes them."""
    raw = _storage(chunk)
    valid = pc.is_valid(raw)
    if not pa.types.is_fixed_size_binary(raw.type):
        # Drivers before 1.9 return uuid as variable-length binary, a NULL as no bytes at all:
        # give NULLs 16 zero bytes (masked again below), and any other length fails the cast.
        raw = pc.cast(pc.fill_null(raw, pa.scalar(bytes(16), raw.type)), pa.binary(16))
    n = len(raw)
    data = bytes(raw.buffers()[1])[16 * raw.offset:16 * (raw.offset + n)]
    digits = np.frombuffer(data.hex().encode(), dtype=np.uint8).reshape(n, 32)
    text = np.full((n, 36), ord("-"), dtype=np.uint8)
    for to, frm in _UUID_GROUPS:
        text[:, to] = digits[:, frm]
    offsets = pa.py_buffer(np.arange(0, 36 * n + 1, 36, dtype=np.int32).tobytes())
    out = pa.Array.from_buffers(pa.string(), n, [None, offsets, pa.py_buffer(text.tobytes())])
    return pc.if_else(valid, out, pa.scalar(None, pa.string())) if chunk.null_count else out


#: date(1970, 1, 1).toordinal(): utc_days counts from there.
EPOCH_ORDINAL = 719163


def utc_days(ts: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Days since the epoch (UTC) of timestamp, date, or text (PostgreSQL output in UTC) values: the
    partition rule, shared by the archiver (which cuts batches by it) and validate (which checks it)."""
    if pa.types.is_timestamp(ts.type):
        ts = pc.cast(ts, pa.timestamp("us", tz="UTC")) if ts.type.tz is None else ts
        ts = pc.cast(ts, pa.date32())
    elif pa.types.is_string(ts.type) or pa.types.is_large_string(ts.type):
        ts = pc.cast(pc.utf8_slice_codeunits(ts, 0, 10), pa.date32())
    if not pa.types.is_date(ts.type):
        raise ValueError(f"unsupported timestamp type {ts.type}")
    return pc.cast(ts, pa.int32()).to_numpy(zero_copy_only=False).astype("int64")  # type: ignore[no-any-return]


def xids(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """xmin in binary (4 bytes, big-endian, never NULL) -> uint32. Only the distinct values of a
    batch ever reach SQL, so none is turned into text per row."""
    chunks = []
    for chunk in column.chunks:
        raw = _storage(chunk)
        if pa.types.is_string(raw.type) or pa.types.is_integer(raw.type):  # other driver versions
            chunks.append(pc.cast(raw, pa.uint32()))
            continue
        offsets = np.frombuffer(raw.buffers()[1], dtype=np.int32, count=len(raw) + 1, offset=4 * raw.offset)
        if offsets[-1] - offsets[0] != 4 * len(raw):
            raise ValueError("xmin values are not 4 bytes each")
        values = np.frombuffer(raw.buffers()[2], dtype=">u4", count=len(raw), offset=int(offsets[0]))
        chunks.append(pa.array(values.astype(np.uint32)))
    return pa.chunked_array(chunks, pa.uint32())


def _binary_as_text(column: pa.ChunkedArray, typname: str) -> pa.ChunkedArray:
    convert = _uuid_text if typname == "uuid" else _storage
    return pa.chunked_array([pc.cast(convert(c), pa.string()) for c in column.chunks], pa.string())


def encodings_of(schema: TableSchema, *, all_text: bool = False) -> dict[str, str]:
    """Each column's encoding, from its type alone: `native` (its natural type) or `text`."""
    return {c.name: "native" if not all_text and c.natural_type() is not None else "text" for c in schema.columns}


def from_arrow_read(table: pa.Table, schema: TableSchema, *, native: set[str], extra: list[str] | None = None,
                    all_text: bool = False) -> tuple[pa.Table, dict[str, str]]:
    """Rows as the ADBC reader returned them (helper columns `extra` first, then the table's
    columns, the ones in `native` in binary form, the rest as text) -> the archived Arrow table and
    each column's encoding (`native` or `text`), which depends on the column's type alone.
    `all_text` keeps PostgreSQL's text form for every column (the JSONL format). A value the
    column's type cannot hold (numeric NaN, a timestamp past 294247) is NULL in the column and
    its text is in an EXCEPTION_PREFIX column after the table's columns."""
    extra = extra or []
    arrays: list[pa.ChunkedArray] = list(table.columns)  # new table below: drops the driver's field metadata
    encodings: dict[str, str] = {}
    carried: dict[str, pa.ChunkedArray] = {}
    for i, c in enumerate(schema.columns, start=len(extra)):
        natural = None if all_text else c.natural_type()
        encodings[c.name] = "native" if natural is not None else "text"
        typname = c.kind[0]
        if c.name in native and typname in _BINARY_AS_TEXT:
            arrays[i] = _binary_as_text(arrays[i], typname)
        if natural is not None and c.name in native and typname in _BINARY_TEMPORAL:
            arrays[i], exceptions = arrow_types.from_driver(arrays[i], natural)
        elif natural is None or arrays[i].type == natural:
            continue
        else:
            arrays[i], exceptions = arrow_types.parse_text(arrays[i], natural)
        if exceptions:
            carried[EXCEPTION_PREFIX + c.name] = exception_column(exceptions, len(table))
    return pa.table(arrays + list(carried.values()), names=extra + schema.names + list(carried)), encodings


def bytea_text(value: bytes) -> str:
    """A bytea in PostgreSQL's hex text form (bytea_output = hex), which casts back exactly."""
    return "\\x" + value.hex()


def bytea_texts(arr: pa.ChunkedArray | pa.Array) -> pa.Array:
    """bytea_text of every value of a binary array, NULLs kept."""
    return pa.array([None if v is None else bytea_text(v) for v in arr.to_pylist()], pa.string())


def to_copy_csv(table: pa.Table, schema: TableSchema, encodings: dict[str, str],
                exceptions: dict[str, arrow_types.Exceptions] | None = None) -> bytes:
    """Render archived rows as CSV that `COPY ... FROM STDIN (FORMAT csv)` reads back exactly."""
    cols = []
    for name in table.column_names:
        arr = table.column(name)
        col = schema.column(name)
        if encodings.get(name) == "native" and col.kind[0] == "bytea":
            arr = bytea_texts(arr)
        elif arrow_types.is_temporal(arr.type) or pa.types.is_time(arr.type) or name in (exceptions or {}):
            arr = pg_texts(arr, (exceptions or {}).get(name, []))
        cols.append(arr)
    out = io.BytesIO()
    pacsv.write_csv(pa.table(cols, names=table.column_names), out,
                    write_options=pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    return out.getvalue()


def column_docs(schema: TableSchema, encodings: dict[str, str]) -> list[dict[str, Any]]:
    """Each column with its encoding: in the Parquet metadata and in the manifest. A Column's
    fields are all scalars, so a shallow copy is asdict()'s answer without its deep copy: 4 against
    77 us a call on the bench's 11 columns, twice per archived object, all of it holding the GIL."""
    return [dict(_doc(c), encoding=encodings[c.name]) for c in schema.columns]


_BASE_FIELDS = ("base_typname", "base_typtype", "base_type")


def _doc(c: Column) -> dict[str, Any]:
    """A column's fields; a domain's base type only for domains (the documents of other columns
    stay as they were before format version 2)."""
    doc = dict(vars(c))
    if c.base_typname is None:
        for name in _BASE_FIELDS:
            doc.pop(name)
    return doc


def archive_metadata(*, schema: TableSchema, encodings: dict[str, str], extra: dict[str, Any],
                     exceptions: dict[str, arrow_types.Exceptions] | None = None) -> dict[bytes, bytes]:
    doc = {
        "format_version": FORMAT_VERSION,
        "schema_fingerprint": schema.fingerprint(),
        "columns": column_docs(schema, encodings),
        **extra,
    }
    if exceptions:
        doc["exceptions"] = {name: [list(e) for e in values] for name, values in exceptions.items()}
    return {METADATA_KEY: json.dumps(doc, separators=(",", ":")).encode()}


def read_archive_metadata(meta: dict[bytes, bytes] | None) -> tuple[TableSchema, dict[str, str], dict[str, Any]]:
    if not meta or METADATA_KEY not in meta:
        raise ValueError("archive has no pg_archiver schema metadata")
    doc = json.loads(meta[METADATA_KEY])
    cols = doc["columns"]
    encodings = {c["name"]: c.pop("encoding") for c in cols}
    return TableSchema.from_json(cols), encodings, doc
