"""One archive object back into PostgreSQL: read it, check it against its manifest, decode it, render
the rows as CSV exactly as `COPY ... TO STDOUT` printed them, COPY them into a temporary table and
move them into the target with one `INSERT ... ON CONFLICT` (issue 4, "Restore semantics").

Reading and decoding run one object ahead in a background thread while PostgreSQL loads the
previous one; at most three objects are in memory at any time, so memory stays flat."""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from common import batch_writer
from common.errors import ArchiverError, DataIntegrityError
from common.manifest import Manifest
from common.pgtypes import TableSchema, to_copy_csv
from restore.catalog import ArchiveObject, Catalog, TableRef
from restore.drift import ColumnPlan
from restore.target import LiveTable

STRATEGIES = ("skip", "overwrite", "fail")
_TMP = sql.Identifier("_pg_archiver_restore")
_TMP_REL = sql.SQL("pg_temp.{}").format(_TMP)
_COPY_CHUNK = 1 << 20
_DONE = object()


class RestoreConflict(ArchiverError):
    """--conflict-strategy fail met a row that already exists (exit 1; the run is rolled back)."""


@dataclass
class Prepared:
    obj: ArchiveObject
    manifest: Manifest
    plan: ColumnPlan
    rows: int
    csv: bytes
    read_seconds: float


@dataclass
class ObjectResult:
    key: str
    location: str
    rows: int
    inserted: int = 0
    skipped: int = 0
    overwritten: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "location": self.location, "rows": self.rows, "inserted": self.inserted,
                "skipped": self.skipped, "overwritten": self.overwritten, "seconds": round(self.seconds, 3)}


PlanFor = Callable[[TableSchema, str], ColumnPlan]


def prepare(catalog: Catalog, obj: ArchiveObject, ref: TableRef, plan_for: PlanFor) -> Prepared:
    """Read, verify and decode one object; raises naming the key if it is not exactly what its
    manifest describes."""
    t0 = time.monotonic()
    m = obj.manifest
    if m is None:
        raise ArchiverError(f"{obj.key}: its manifest is not readable ({obj.storage_class}); an S3 restore request is needed first")
    data = catalog.read(obj)
    m.check(data)  # size and sha256; the message names the key
    if (m.database, m.schema, m.table) != (ref.database, ref.schema, ref.table):
        raise DataIntegrityError(f"{obj.key}: its manifest describes {m.database}/{m.schema}.{m.table}, not {ref.database}/{ref.name}")
    try:
        table, schema, encodings, _doc = batch_writer.decode(data, fmt=m.format)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the same thing here
        raise DataIntegrityError(f"{obj.key}: cannot decode the {m.format} object: {exc}") from None
    del data
    if table.num_rows != m.rows:
        raise DataIntegrityError(f"{obj.key}: holds {table.num_rows} rows, its manifest says {m.rows}")
    if schema.fingerprint() != m.schema_fingerprint:
        raise DataIntegrityError(f"{obj.key}: its schema fingerprint differs from its manifest's")
    plan = plan_for(schema, obj.key)
    csv = to_copy_csv(table.select(list(plan.load)), schema, encodings)
    return Prepared(obj, m, plan, table.num_rows, csv, time.monotonic() - t0)


@contextmanager
def prefetched(objects: list[ArchiveObject], make: Callable[[ArchiveObject], Prepared]) -> Iterator[Iterator[Prepared]]:
    """Yield prepared objects in order, preparing the next one in a background thread. An error
    while preparing an object is raised when the consumer reaches that object."""
    q: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def produce() -> None:
        for obj in objects:
            if stop.is_set():
                return
            try:
                item: Any = make(obj)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, in order
                item = exc
            _put(q, item, stop)
            if isinstance(item, BaseException):
                return
        _put(q, _DONE, stop)

    def consume() -> Iterator[Prepared]:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    worker = threading.Thread(target=produce, name="restore-reader", daemon=True)
    worker.start()
    try:
        yield consume()
    finally:
        stop.set()
        while worker.is_alive():
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.2)
            return
        except queue.Full:
            continue


class Loader:
    """Loads prepared objects into the target on one connection; the caller owns the transaction."""

    def __init__(self, conn: psycopg.Connection[Any], live: LiveTable, strategy: str) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(strategy)
        self.conn, self.live, self.strategy = conn, live, strategy

    def load(self, item: Prepared) -> ObjectResult:
        t0 = time.monotonic()
        result = ObjectResult(item.obj.key, item.obj.location, item.rows)
        cols = list(item.plan.load)
        try:
            self._stage(cols, item.csv)
            existing = self._count_existing() if self.strategy != "skip" else 0
            if self.strategy == "fail" and existing:
                raise RestoreConflict(f"{item.obj.key}: {existing} of its {item.rows} rows already exist in "
                                      f"{self.live.name} (e.g. {self._sample_conflict()}) and --conflict-strategy is fail "
                                      "(use skip to keep the existing rows, or overwrite to replace them)")
            written = self.conn.execute(self._insert(cols)).rowcount
            self.conn.execute(sql.SQL("DROP TABLE {}").format(_TMP_REL))
        except psycopg.OperationalError:
            raise  # connection trouble: mapped to exit 3 by the caller
        except psycopg.Error as exc:
            raise ArchiverError(f"{item.obj.key}: restoring into {self.live.name} failed: "
                                f"{exc.diag.message_primary or exc}") from None
        result.overwritten = existing if self.strategy == "overwrite" else 0
        # DO UPDATE counts updated rows in rowcount too; DO NOTHING (and fail) counts only inserts.
        result.inserted = written - result.overwritten if self._updates(cols) and self.strategy == "overwrite" else written
        result.skipped = item.rows - result.inserted - result.overwritten
        result.seconds = time.monotonic() - t0
        return result

    def _stage(self, cols: list[str], csv: bytes) -> None:
        ids = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
        self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(_TMP_REL))
        # Typed like the target's columns (no constraints, no defaults): COPY parses every value
        # with the very type it was printed from.
        self.conn.execute(sql.SQL("CREATE TEMP TABLE {} AS SELECT {} FROM {} WITH NO DATA").format(
            _TMP, ids, self.live.relation))
        with self.conn.cursor() as cur:
            with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(_TMP_REL, ids)) as copy:
                view = memoryview(csv)
                for off in range(0, len(view), _COPY_CHUNK):
                    copy.write(view[off:off + _COPY_CHUNK])

    def _pk_match(self) -> sql.Composable:
        return sql.SQL(" AND ").join(
            sql.SQL("t.{c} = s.{c}").format(c=sql.Identifier(c)) for c in self.live.primary_key)

    def _count_existing(self) -> int:
        row = self.conn.execute(sql.SQL("SELECT count(*) FROM {} s WHERE EXISTS (SELECT 1 FROM {} t WHERE {})").format(
            _TMP_REL, self.live.relation, self._pk_match())).fetchone()
        return int(row[0]) if row else 0

    def _sample_conflict(self) -> str:
        cols = sql.SQL(", ").join(sql.SQL("s.{}::text").format(sql.Identifier(c)) for c in self.live.primary_key)
        row = self.conn.execute(sql.SQL("SELECT {} FROM {} s WHERE EXISTS (SELECT 1 FROM {} t WHERE {}) LIMIT 1").format(
            cols, _TMP_REL, self.live.relation, self._pk_match())).fetchone()
        return ", ".join(f"{c}={v}" for c, v in zip(self.live.primary_key, row or ()))

    def _updates(self, cols: list[str]) -> list[str]:
        """Columns an overwrite sets: not the key, and not identity columns (UPDATE cannot set a
        GENERATED ALWAYS identity; they are normally the key anyway)."""
        identity = {c.name for c in self.live.columns.columns if c.identity}
        return [c for c in cols if c not in self.live.primary_key and c not in identity]

    def _insert(self, cols: list[str]) -> sql.Composed:
        ids = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
        # OVERRIDING SYSTEM VALUE: identity columns keep their archived values.
        query = sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {}").format(
            self.live.relation, ids, ids, _TMP_REL)
        if self.strategy == "fail":
            return query  # conflicts were checked; a concurrent insert still fails the whole run
        pk = sql.SQL(", ").join(sql.Identifier(c) for c in self.live.primary_key)
        updates = self._updates(cols)
        if self.strategy == "skip" or not updates:
            return query + sql.SQL(" ON CONFLICT ({}) DO NOTHING").format(pk)
        sets = sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in updates)
        return query + sql.SQL(" ON CONFLICT ({}) DO UPDATE SET {}").format(pk, sets)
