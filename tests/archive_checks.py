"""Helpers that read what the archiver left behind, for the invariant every test checks: each
original row is in its table or in exactly one archive object; never both, never neither, never twice."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
import pyarrow.compute as pc
from psycopg import sql

from common import batch_writer
from common.archive.manifest import Manifest
from common.archive.storage import Storage
from common.archive.table_index import by_table, load_table


def archived(store: Storage, prefix: str = "", *, root: str = "") -> dict[str, Manifest]:
    """Every data object under `prefix` that counts as archived in the store (its manifest recorded,
    not withdrawn; common/archive/table_index.py), with its manifest: the definition every reader uses.
    `root`: the archive's s3.prefix."""
    out: dict[str, Manifest] = {}
    for ident, _infos in by_table(store.list(prefix), root):
        if ident is None:
            continue
        listing, index = load_table(store, root, *ident)
        out.update({k: r.manifest for k, r in index.objects.items() if k in listing.data and k.startswith(prefix)})
    return out


def archived_ids(*stores: Storage | None, prefix: str = "", pk: str = "id") -> Counter[Any]:
    """Primary keys in every data object that counts as archived, across the given stores."""
    ids: Counter[Any] = Counter()
    for store in stores:
        if store is None:
            continue
        for key in archived(store, prefix):
            table, schema, _enc, _doc = batch_writer.decode(store.get(key), fmt=batch_writer.format_of(key), columns=[pk])
            column = table.column(pk)
            natural = schema.column(pk).natural_type()
            if natural is not None and column.type != natural:  # JSONL keeps PostgreSQL text
                column = pc.cast(column, natural)
            ids.update(column.to_pylist())
    return ids


def manifests(store: Storage, prefix: str = "") -> list[Manifest]:
    return list(archived(store, prefix).values())


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


def set_holding(store: Storage, key: str, prefix: str = "") -> str:
    """The manifest set that records `key` (the newest, when several do)."""
    for ident, infos in by_table(store.list(prefix), prefix):
        if ident is not None:
            recorded = load_table(store, prefix, *ident)[1].recorded(key)
            if recorded:
                return recorded[-1].source
    raise KeyError(key)


def edit_manifest(store: Storage, key: str, prefix: str = "", **changes: Any) -> None:
    """Change fields of `key`'s manifest in the set that holds it, stored again under the same key,
    its entry's identity recomputed: what someone rewriting the archive by hand would do."""
    import json

    from common.archive.manifest import sha256_hex
    from common.archive.manifest_sets import entry_bytes

    skey = set_holding(store, key, prefix)
    doc = json.loads(store.get(skey))
    for entry in doc["entries"]:
        if entry["manifest"]["key"] == key:
            entry["manifest"].update(changes)
            entry["manifest_sha256"] = sha256_hex(entry_bytes(entry["manifest"]))
    data = json.dumps(doc).encode()
    store.put(skey, data, sha256=sha256_hex(data))


def drop_manifest(store: Storage, key: str, prefix: str = "") -> None:
    """Remove `key`'s entry from the set that holds it (the set stored again)."""
    import json

    from common.archive.manifest import sha256_hex

    skey = set_holding(store, key, prefix)
    doc = json.loads(store.get(skey))
    doc["entries"] = [e for e in doc["entries"] if e["manifest"]["key"] != key]
    data = json.dumps(doc).encode()
    store.put(skey, data, sha256=sha256_hex(data))


def copy_archived(source: Storage, target: Storage, key: str, new_key: str | None = None, prefix: str = "") -> str:
    """Copy an archived object and its manifest (in a set of its own) to `target`, under `new_key`
    if given (its manifest then names that key): what an archiver would have written there."""
    from common.archive import manifest_sets

    manifest = archived(source, root=prefix)[key]
    data = source.get(key)
    if new_key is not None:
        from common.archive import layout

        parsed = layout.parse_key(prefix, new_key)
        assert parsed is not None
        manifest.key, manifest.database, manifest.schema, manifest.table = new_key, parsed.database, parsed.schema, parsed.table
    target.put(manifest.key, data, sha256=manifest.sha256)
    manifest_sets.write(target, prefix=prefix, manifests=[manifest])
    return manifest.key
