"""The archive SQL engine: DuckDB over the archived rows of one day at a time (issue 16), shared by
the query tool (rows out) and the erase tool (which rows of each object match, issue 17).

The archive's objects are read into Arrow, brought to one schema (the table's schema over every
version the selected objects' manifests record, common/conform.py: a column a day lacks is NULL
there; a widened one is read in its widest type), and registered in an in-memory DuckDB session as the view
`archive`. The operator's --where runs as DuckDB SQL inside parentheses, in a session that may not
touch files or change its own settings, and must be one expression: it is checked against an empty
table of the same schema before anything is downloaded, so a typo costs no S3 reads."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from common import batch_writer
from common.archive.catalog import ArchiveObject, Catalog
from common.errors import UsageError, first_line
from common.arrow_types import Exceptions, exceptions_of
from common.conform import conform, reader_schema
from common.pgtypes import TableSchema

VIEW = "archive"
#: The row number erase's matching() adds to judge rows one object at a time.
ROW_COLUMN = "__pg_archiver_row"
#: Rows handed to the output at a time.
BATCH_ROWS = 10_000


def quote(name: str) -> str:
    """A DuckDB identifier: DuckDB quotes exactly as PostgreSQL does ("a""b"), so psycopg's
    Identifier renders it without a connection."""
    return sql.Identifier(name).as_string(None)


#: Field metadata marking a char(n) column, whose pad the engine drops (_view).
_PADDED = {b"pg_archiver": b"bpchar"}


def union_schema(objects: list[ArchiveObject]) -> pa.Schema:
    """The table's schema over every schema version the objects' manifests record
    (common.conform.reader_schema: a column a version lacks is NULL there, a widened one is read
    in its widest type, one whose type changed otherwise as text). char(n) columns are marked
    (_PADDED)."""
    versions: dict[str, TableSchema] = {}
    for obj in sorted(objects, key=lambda o: (o.manifest.created_at if o.manifest else "") or ""):
        archived = obj.archived_schema
        if archived is not None:
            versions.pop(archived.fingerprint(), None)  # ordered by each version's newest object
            versions[archived.fingerprint()] = archived
    ordered = list(versions.values())
    padded = {c.name for v in ordered for c in v.columns if c.kind[0] == "bpchar"}
    return pa.schema([f.with_metadata(_PADDED) if f.name in padded else f for f in reader_schema(ordered)])


def _view(table: pa.Table, schema: pa.Schema, exceptions: dict[str, Exceptions] | None = None) -> pa.Table:
    """An object's rows with exactly `schema`'s columns, in its order and types."""
    table = conform(table, schema, exceptions=exceptions).table
    for i, f in enumerate(schema):
        if f.metadata == _PADDED and pa.types.is_string(f.type):
            # char(n) without its pad, as PostgreSQL compares it and casts it to text, and as JSONL
            # archives hold it: Parquet keeps 'ab   ', so `c = 'ab'` matched nothing there, and
            # an erase by such a column found no row to remove.
            table = table.set_column(i, f, pc.utf8_rtrim(table.column(i), characters=" "))
    return table


@dataclass(frozen=True, kw_only=True)
class Query:
    where: str | None
    columns: tuple[str, ...]
    timestamp_column: str
    key_columns: tuple[str, ...]

    def text(self, limit: int | None) -> str:
        cols = ", ".join(quote(c) for c in self.columns) if self.columns else "*"
        # On lines of its own: a trailing `--` comment in it cannot swallow the ORDER BY and LIMIT.
        where = f" WHERE (\n{self.where}\n)" if self.where else ""
        # a child's objects (issue 28) have no timestamp column: their key orders them
        order = ", ".join(quote(c) for c in (self.timestamp_column, *self.key_columns) if c)
        tail = f" LIMIT {int(limit)}" if limit is not None else ""
        return f"SELECT {cols} FROM {VIEW}{where} ORDER BY {order}{tail}"


class Engine:
    """One locked-down DuckDB session answering a Query over the plan's day groups."""

    def __init__(self, query: Query, schema: pa.Schema) -> None:
        self.query, self.schema = query, schema
        # No file or network access and no way to turn it back on: the --where is operator SQL.
        self.con = duckdb.connect(":memory:", config={"enable_external_access": False, "lock_configuration": True})

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.con.close()

    def check(self) -> pa.Schema:
        """Run the query on no rows: a bad --where or an unknown column is a UsageError with
        DuckDB's own first line. Returns the schema of the rows the query returns."""
        text = self.query.text(0)
        self.con.register(VIEW, self.schema.empty_table())
        try:
            if len(self.con.extract_statements(text)) != 1:
                raise UsageError("--where: must be one SQL expression, not several statements")
            return self.con.sql(text).to_arrow_reader(BATCH_ROWS).schema
        except duckdb.Error as exc:
            raise UsageError(f"query: {first_line(exc)}") from exc
        finally:
            self.con.unregister(VIEW)

    def load(self, catalog: Catalog, obj: ArchiveObject) -> pa.Table:
        """One object's rows in the query's schema, verified against its manifest first. Safe to
        call from several threads (downloads overlap; DuckDB runs in the caller's thread only)."""
        rows, doc = self.read(catalog, obj)
        return _view(rows, self.schema, exceptions_of(doc))

    def matching(self, rows: pa.Table, exceptions: dict[str, Exceptions] | None = None) -> pa.Array:
        """Which of one object's rows (as decoded, in their order; `exceptions` its metadata's)
        the --where selects: a boolean mask, for erase. The rows are brought to the engine's
        schema only to be judged."""
        conformed = _view(rows, self.schema, exceptions).append_column(ROW_COLUMN, pa.array(range(rows.num_rows), pa.int64()))
        text = f"SELECT {quote(ROW_COLUMN)} FROM {VIEW}" + (f" WHERE (\n{self.query.where}\n)" if self.query.where else "")
        self.con.register(VIEW, conformed)
        try:
            hits = self.con.sql(text).to_arrow_reader(BATCH_ROWS).read_all().column(0)
        except duckdb.Error as exc:
            raise UsageError(f"--where: {first_line(exc)}") from exc
        finally:
            self.con.unregister(VIEW)
        return pc.is_in(pa.array(range(rows.num_rows), pa.int64()), value_set=pa.array(hits.to_pylist(), pa.int64()))

    def read(self, catalog: Catalog, obj: ArchiveObject) -> tuple[pa.Table, dict[str, Any]]:
        """One object's rows as stored and its metadata document, verified against its manifest first."""
        data = catalog.read(obj)
        assert obj.manifest is not None
        obj.manifest.check(data)  # evidence: a tampered or damaged object is an error, never silently read
        rows, _schema, _encodings, doc = batch_writer.decode(data, fmt=batch_writer.format_of(obj.key))
        return rows, doc

    def scan(self, tables: list[pa.Table], *, limit: int | None) -> Iterator[pa.RecordBatch]:
        """The matching rows of whole consecutive days (query.plan.scans), in (timestamp, key) order."""
        yield from self._run(pa.concat_tables(tables), self.query.text(limit))

    def _run(self, table: pa.Table, text: str) -> Iterator[pa.RecordBatch]:
        """The query's batches; the rows stay registered until the last batch is taken."""
        self.con.register(VIEW, table)
        try:
            reader = self.con.sql(text).to_arrow_reader(BATCH_ROWS)
            yield from reader
        except duckdb.Error as exc:
            # What check() cannot see on no rows: a value the --where cannot compare ('NaN' read
            # as a number from a text column, say). The operator's condition, so a usage error.
            raise UsageError(f"--where: {first_line(exc)}") from exc
        finally:
            self.con.unregister(VIEW)
