"""Turns one batch of rows into archive bytes: Parquet with zstd (default) or zstd-compressed JSON
lines, with the PostgreSQL schema carried in the file (Parquet) or manifest (JSONL)."""
from __future__ import annotations

import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zstandard

from common.arrow_types import Exceptions
from common.pgtypes import TableSchema, archive_metadata, arrow_schema, read_archive_metadata

EXTENSIONS = {"parquet": ".parquet", "jsonl": ".jsonl.zst"}


def encode(table: pa.Table, *, fmt: str, level: int, schema: TableSchema, encodings: dict[str, str],
           extra_meta: dict[str, Any], exceptions: dict[str, Exceptions] | None = None) -> bytes:
    """`exceptions`: values the columns' types cannot hold (NULL in `table`), by column and row."""
    meta = archive_metadata(schema=schema, encodings=encodings, extra=extra_meta, exceptions=exceptions)
    if fmt == "parquet":
        table = _stored_schema(table, schema, encodings)
        buf = io.BytesIO()
        pq.write_table(table.replace_schema_metadata(meta), buf, compression="zstd", compression_level=level,
                       row_group_size=max(table.num_rows, 1), use_dictionary=_dictionary_columns(table))
        return buf.getvalue()
    if fmt == "jsonl":
        # Every column is in PostgreSQL text form here (see pgtypes.from_arrow_read(all_text=True)).
        header = json.dumps({"pg_archiver": json.loads(meta[b"pg_archiver"])}, separators=(",", ":"))
        names = table.column_names
        lines = [header] + [json.dumps(dict(zip(names, row)), ensure_ascii=False, separators=(",", ":"))
                            for row in zip(*(table.column(n).to_pylist() for n in names))]
        return zstandard.ZstdCompressor(level=level).compress(("\n".join(lines) + "\n").encode())
    raise ValueError(f"unknown format {fmt!r}")


def _stored_schema(table: pa.Table, schema: TableSchema, encodings: dict[str, str]) -> pa.Table:
    """The rows in the table's one Arrow schema (pgtypes.arrow_schema: nullable fields whatever the
    rows hold). Columns kept in an older encoding (a rewrite of an object written before format
    version 2: erase) keep their type."""
    target = arrow_schema(schema)
    if any(encodings.get(f.name) == "text" and f.type != pa.string() for f in target):
        return table
    return table if table.schema.equals(target) else table.cast(target)


#: json and jsonb are stored as plain UTF-8 text (Parquet's String type), not with Parquet's JSON
#: logical type (objects written from 2026-12-01 until this change carry it; the tools read both): Iceberg has no
#: JSON type, and its readers did not take that one for a string (pyiceberg's scan: an Arrow
#: extension type it cannot map; polars.scan_iceberg: binary, "data type mismatch"). Engines
#: reading the files parse the text as JSON where asked (DuckDB: payload::JSON).


def plain_json(table: pa.Table) -> pa.Table:
    """The tools read JSON columns back as the text they were archived from (objects that carry
    Parquet's JSON logical type read as an Arrow extension type)."""
    for i, field in enumerate(table.schema):
        if isinstance(field.type, pa.JsonType):
            table = table.set_column(i, field.name, pa.chunked_array([c.storage for c in table.column(i).chunks], type=pa.string()))
    return table


#: Rows a column's repetitiveness is judged on: counting distinct values over a whole batch cost
#: a third of the encoding time on the bench's unique payloads (5.7 vs 3.9 ms per 5,000 rows).
DICTIONARY_SAMPLE = 512


def _dictionary_columns(table: pa.Table) -> list[str]:
    """Dictionary-encode only repetitive text (actions, user agents): on unique values (ids, uuids,
    payloads) a dictionary costs time and bytes (measured on audit rows: 2x faster, 20% smaller)."""
    sample = table.slice(0, DICTIONARY_SAMPLE)
    out = []
    for field in table.schema:
        if pa.types.is_string(field.type) or pa.types.is_binary(field.type) or pa.types.is_large_string(field.type):
            distinct = pc.count_distinct(sample.column(field.name)).as_py()
            if distinct <= max(sample.num_rows // 4, 1):
                out.append(field.name)
    return out


def decode(data: bytes, *, fmt: str, columns: list[str] | None = None) -> tuple[pa.Table, TableSchema, dict[str, str], dict[str, Any]]:
    """Read an archive back: (rows, PostgreSQL schema, column encodings, metadata document)."""
    if fmt == "parquet":
        pf = pq.ParquetFile(io.BytesIO(data))
        schema, encodings, doc = read_archive_metadata(pf.schema_arrow.metadata)
        return plain_json(pf.read(columns=columns)), schema, encodings, doc
    if fmt == "jsonl":
        text = zstandard.ZstdDecompressor().decompressobj().decompress(data).decode()
        # Lines end at "\n" alone (json.dumps escapes it inside values), not at every line
        # boundary str.splitlines() knows: U+2028, U+2029 and U+0085 stay unescaped in a value
        # (ensure_ascii=False) and split its row in two, so the whole object could not be read.
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()
        doc = json.loads(lines[0])["pg_archiver"]
        meta = {b"pg_archiver": json.dumps(doc).encode()}
        schema, encodings, doc = read_archive_metadata(meta)
        names = columns or schema.names
        rows = [json.loads(line) for line in lines[1:]]
        table = pa.table({n: pa.array([r.get(n) for r in rows], pa.string()) for n in names})
        return table, schema, encodings, doc
    raise ValueError(f"unknown format {fmt!r}")


def format_of(key: str) -> str:
    for fmt, ext in EXTENSIONS.items():
        if key.endswith(ext):
            return fmt
    raise ValueError(f"{key}: not an archive object name")
