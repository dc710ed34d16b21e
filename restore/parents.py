"""A child's archived rows (issue 28, `children: archive`) go back only where their parent rows are:
before anything is written, the foreign key values of every selected object (its manifest names
the key it follows: Manifest.parent) are looked up in the parent table. Missing ones stop the
restore with the parent's name, and nothing is half-written (restore --with-children restores the
parents first: restore/children.py)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg
import pyarrow as pa
from psycopg import sql

from common import batch_writer
from common.archive.catalog import ArchiveObject, Catalog
from common.pg.db import qualified, table_oid, table_schema
from common.errors import ArchiverError
from common.key_range import natural_column

#: Missing parent keys named in the error.
SAMPLE = 3


class MissingParents(ArchiverError):
    """A child's archived rows reference parent rows that are not in the parent table (exit 1)."""


def check_parents(conn: psycopg.Connection[Any], catalog: Catalog, objects: Iterable[ArchiveObject], *, child: str) -> None:
    """Raise MissingParents naming each parent table that lacks rows the objects' rows reference."""
    groups: dict[tuple[str, str, tuple[str, ...], tuple[str, ...]], set[tuple[Any, ...]]] = {}
    for obj in objects:
        parent = obj.manifest.parent if obj.manifest is not None else None
        if not parent:
            continue
        ident = (parent["schema"], parent["table"], tuple(parent["columns"]), tuple(parent["referenced"]))
        groups.setdefault(ident, set()).update(_references(catalog, obj, ident[2]))
    missing = []
    for (schema, table, _cols, referenced), values in groups.items():
        absent, sample = _absent(conn, schema, table, referenced, values)
        if absent:
            shown = ", ".join(sample) + (", …" if absent > len(sample) else "")
            missing.append(f"{schema}.{table} ({absent} rows with ({', '.join(referenced)}) = {shown})")
    conn.rollback()
    if missing:
        raise MissingParents(f"{child}: its archived rows reference rows that are not in {'; '.join(missing)}; restore"
                             " those first (restore --with-children on the parent table restores parents, then"
                             " children); nothing was restored")


def _references(catalog: Catalog, obj: ArchiveObject, columns: tuple[str, ...]) -> set[tuple[Any, ...]]:
    """The distinct foreign key values of an object's rows (a NULL references nothing)."""
    data = catalog.read(obj)
    assert obj.manifest is not None
    obj.manifest.check(data)
    rows, schema, _enc, _doc = batch_writer.decode(data, fmt=batch_writer.format_of(obj.key), columns=list(columns))
    cols = [natural_column(rows, c, schema).to_pylist() for c in columns]
    return {tuple(r) for r in zip(*cols) if None not in r}


def _absent(conn: psycopg.Connection[Any], schema: str, table: str, referenced: tuple[str, ...],
            values: set[tuple[Any, ...]]) -> tuple[int, list[str]]:
    """How many of the value tuples no row of the parent table has, and the first few."""
    if not values:
        return 0, []
    types = table_schema(conn, table_oid(conn, schema, table))
    ordered = sorted(values, key=repr)
    arrays = sql.SQL(", ").join(
        sql.SQL("{}::{}[]").format(sql.Literal([_text(row[i]) for row in ordered]),
                                   sql.SQL(types.column(c).pg_type))  # type: ignore[arg-type]
        for i, c in enumerate(referenced))
    names = sql.SQL(", ").join(sql.Identifier(f"v{i}") for i in range(len(referenced)))
    match = sql.SQL(" AND ").join(sql.SQL("p.{} = v.{}").format(sql.Identifier(c), sql.Identifier(f"v{i}"))
                                  for i, c in enumerate(referenced))
    shown = sql.SQL(" || ', ' || ").join(sql.SQL("v.{}::text").format(sql.Identifier(f"v{i}")) for i in range(len(referenced)))
    query = sql.SQL("SELECT count(*), (array_agg({shown} ORDER BY {names}))[1:{n}] FROM unnest({arrays}) AS v({names})"
                    " WHERE NOT EXISTS (SELECT 1 FROM {rel} AS p WHERE {match})").format(
        shown=shown, names=names, n=sql.Literal(SAMPLE), arrays=arrays, rel=qualified(schema, table), match=match)
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0]), list(row[1] or [])


def _text(value: Any) -> Any:
    if value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, (bytes, bytearray)):
        return "\\x" + bytes(value).hex()
    if isinstance(value, pa.Scalar):
        value = value.as_py()
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
