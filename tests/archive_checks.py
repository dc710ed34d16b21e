"""Helpers that read what the archiver left behind, for the invariant every test checks: each
original row is in its table or in exactly one archive object; never both, never neither, never twice."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
import pyarrow.compute as pc
from psycopg import sql

from common import batch_writer, layout
from common.manifest import Manifest
from common.storage import Storage


def archived_ids(*stores: Storage | None, prefix: str = "", pk: str = "id") -> Counter[Any]:
    """Primary keys in every data object that has a manifest, across the given stores."""
    ids: Counter[Any] = Counter()
    for store in stores:
        if store is None:
            continue
        for info in store.list(prefix):
            if layout.is_manifest(info.key) or info.key.startswith(".quarantine/"):
                continue
            if all(store.head(k) is None for k in layout.manifest_keys(info.key)):
                continue  # not committed; validate reports it as an orphan
            table, schema, _enc, _doc = batch_writer.decode(store.get(info.key), fmt=batch_writer.format_of(info.key), columns=[pk])
            column = table.column(pk)
            natural = schema.column(pk).natural_type()
            if natural is not None and column.type != natural:  # JSONL keeps PostgreSQL text
                column = pc.cast(column, natural)
            ids.update(column.to_pylist())
    return ids


def manifests(store: Storage, prefix: str = "") -> list[Manifest]:
    return [Manifest.from_bytes(store.get(o.key), key=o.key) for o in store.list(prefix) if layout.is_manifest(o.key)]


def table_ids(conn: psycopg.Connection[Any], table: str = "audit_logs", pk: str = "id") -> set[Any]:
    q = sql.SQL("SELECT {} FROM {}").format(sql.Identifier(pk), sql.Identifier(table))
    return {r[0] for r in conn.execute(q).fetchall()}


def assert_invariant(original: set[Any], in_table: set[Any], archived: Counter[Any]) -> None:
    twice = {k for k, n in archived.items() if n > 1}
    assert not twice, f"rows archived twice: {sorted(twice)[:10]}"
    both = in_table & set(archived)
    assert not both, f"rows both in table and archive: {sorted(both)[:10]}"
    lost = original - in_table - set(archived)
    assert not lost, f"rows lost: {sorted(lost)[:10]}"
    extra = (in_table | set(archived)) - original
    assert not extra, f"rows that were never there: {sorted(extra)[:10]}"


class OnceAt:
    """A hook (archiver/hooks.py, common/hooks.py) that runs `action` the first time any thread
    reaches `point` (with `when`, the first time it does so while `when()` holds): a change made
    between two steps of a move, once."""

    def __init__(self, point: str, action: Callable[[], None], *, when: Callable[[], bool] = lambda: True) -> None:
        self.point, self.action, self.when, self.done = point, action, when, False

    def __call__(self, point: str) -> None:
        if point == self.point and not self.done and self.when():
            self.done = True
            self.action()
