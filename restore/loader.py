"""One archive object back into PostgreSQL: read it, check it against its manifest, decode it, render
the rows as COPY input (binary, restore/copybinary.py, where every column's type has an encoder
there; otherwise text exactly as `COPY ... TO STDOUT` printed them, restore/copytext.py), COPY them
into a temporary table and move them into the target with one `INSERT ... ON CONFLICT` (issue 4,
"Restore semantics"). When none of an object's rows exists in the target yet (a restore into an
emptied table), a COPY straight into the target does the same at half the cost; the primary key
tells when it does not.

A reader thread reads, checks, decodes and renders ahead, a slice of rows at a time, while
PostgreSQL loads: memory stays flat whatever the size of the objects."""
from __future__ import annotations

import io
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from psycopg import sql

from common import batch_writer
from common.errors import ArchiverError, DataIntegrityError, session_lost
from common.archive.manifest import Manifest
from common.arrow_types import Exceptions, exceptions_of, pg_texts
from common.pgtypes import TableSchema, read_archive_metadata
from common.readahead import in_order
from common.units import rows_within
from common.archive.catalog import ArchiveObject, Catalog, TableRef
from restore import copybinary
from restore.copytext import to_copy_text
from restore.drift import ColumnPlan
from restore.target import LiveTable

STRATEGIES = ("skip", "overwrite", "fail")
_TMP_PREFIX = "_pg_archiver_restore"
_RENDER_ROWS = 8192
_AHEAD = 4  # queued chunks (slices: Prepared.slice_rows) and objects
_DOWNLOADS = 4  # objects read and checked ahead, in parallel
#: Objects up to this many rows are also rendered whole by the thread that read them: the render
#: thread alone kept PostgreSQL waiting ~1.9 s of a 10 s bench restore (py-spy); rendering ahead
#: took the median of three S3 restores from 11.3 s to 9.9 s, interleaved runs. Bounds what that
#: holds: _DOWNLOADS objects of ~7 MB of COPY input at most with the bench's rows.
_RENDER_AHEAD_ROWS = 20_000
#: ... and up to this many bytes of rows (the manifest's source_bytes): an object of wide rows
#: (~190 kB documents, 64 MB an object) rendered whole by each of the _DOWNLOADS threads held
#: ~0.5 GB. Slices are cut to about _SLICE_BYTES too, for the same rows.
_RENDER_AHEAD_BYTES = 16 << 20
_SLICE_BYTES = 4 << 20
_DONE = object()
_END = object()


class RestoreConflict(ArchiverError):
    """--conflict-strategy fail met a row that already exists (exit 1; the run is rolled back)."""


@dataclass
class Prepared:
    """A verified object, ready to load. Parquet rows stay encoded until they are streamed into
    COPY a slice at a time, so memory depends on the slice size, not on the object's size."""

    obj: ArchiveObject
    manifest: Manifest
    plan: ColumnPlan
    rows: int
    schema: TableSchema  # as archived
    encodings: dict[str, str]
    data: bytes | None  # the Parquet object (verified), or None when `decoded` holds the rows
    decoded: pa.Table | None = None  # JSON lines: decoded whole (not the default format)
    #: COPY input the reader thread renders ahead, for the first pass over the rows.
    ahead: Iterator[pa.Buffer] | None = None
    #: The columns' binary COPY encoders (restore/copybinary.py), or None: the text format.
    binary: list[copybinary.Encoder] | None = None
    #: The first pass's COPY input, rendered whole by a download thread (small objects only).
    rendered: list[pa.Buffer] | None = None
    #: Values the columns' types could not hold, by column (common/arrow_types.py): rendered as
    #: their text in place of the column's NULL.
    exceptions: dict[str, Exceptions] = field(default_factory=dict)

    @property
    def small(self) -> bool:
        """Small enough to be rendered whole ahead of the load (_RENDER_AHEAD_ROWS and _BYTES)."""
        return self.rows <= _RENDER_AHEAD_ROWS and self.manifest.source_bytes <= _RENDER_AHEAD_BYTES

    def slice_rows(self) -> int:
        """Rows per slice: _RENDER_ROWS, fewer when that many would be more than _SLICE_BYTES
        (older manifests that do not record source_bytes: _RENDER_ROWS)."""
        return rows_within(_SLICE_BYTES, rows=self.rows, nbytes=self.manifest.source_bytes, most=_RENDER_ROWS)

    def batches(self) -> Iterator[pa.Table]:
        cols, n = list(self.plan.load), self.slice_rows()
        if self.data is not None:
            pf = pq.ParquetFile(io.BytesIO(self.data))
            offset = 0
            for batch in pf.iter_batches(batch_size=n, columns=cols):
                table = batch_writer.plain_json(pa.Table.from_batches([batch]).select(cols))
                yield self._as_loaded(table, offset)
                offset += table.num_rows
        else:
            assert self.decoded is not None
            table = self.decoded.select(cols)
            for off in range(0, table.num_rows, n):
                yield table.slice(off, n)

    def _as_loaded(self, table: pa.Table, offset: int) -> pa.Table:
        """Rows `offset`.. of the object with its exceptions' text in place (such a column is
        rendered as text: copybinary is not used for such an object), and widened columns in the
        live column's type (as PostgreSQL's ALTER TABLE ... TYPE turned the live rows: a real
        0.1 becomes the double 0.10000000149011612, not 0.1)."""
        for col in self.plan.widened:
            natural, i = col.natural_type(), table.column_names.index(col.name)
            if natural is not None and table.column(i).type != natural and self.encodings.get(col.name) == "native":
                table = table.set_column(i, col.name, pc.cast(table.column(i), natural))
        for name, values in self.exceptions.items():
            if name in table.column_names:
                i = table.column_names.index(name)
                table = table.set_column(i, name, pg_texts(table.column(i), values, offset=offset))
        return table

    def render(self) -> Iterator[pa.Buffer]:
        if self.binary is not None:
            yield from copybinary.to_copy_binary(self.batches(), self.binary)
            return
        for table in self.batches():
            yield from to_copy_text(table)

    def copy_chunks(self) -> Iterator[pa.Buffer]:
        """The rows as `COPY ... FROM STDIN` text input, one slice at a time: rendered ahead by the
        reader thread the first time, here again for a second pass (the staging path)."""
        ahead, self.ahead = self.ahead, None
        return ahead if ahead is not None else self.render()


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
    """Read and verify one object and read its schema; raises naming the key if it is not exactly
    what its manifest describes."""
    m = obj.manifest
    if m is None:
        raise ArchiverError(f"{obj.key}: its manifest is not readable ({obj.storage_class}); an S3 restore request is needed first")
    data = catalog.read(obj)
    m.check(data)  # size and sha256; the message names the key
    if (m.database, m.schema, m.table) != (ref.database, ref.schema, ref.table):
        raise DataIntegrityError(f"{obj.key}: its manifest describes {m.database}/{m.schema}.{m.table}, not {ref.database}/{ref.name}")
    decoded = None
    try:
        if m.format == "parquet":
            pf = pq.ParquetFile(io.BytesIO(data))
            schema, encodings, doc = read_archive_metadata(pf.schema_arrow.metadata)
            rows = pf.metadata.num_rows
        else:
            decoded, schema, encodings, doc = batch_writer.decode(data, fmt=m.format)
            rows = decoded.num_rows
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the same thing here
        raise DataIntegrityError(f"{obj.key}: cannot decode the {m.format} object: {exc}") from None
    if rows != m.rows:
        raise DataIntegrityError(f"{obj.key}: holds {rows} rows, its manifest says {m.rows}")
    if schema.fingerprint() != m.schema_fingerprint:
        raise DataIntegrityError(f"{obj.key}: its schema fingerprint differs from its manifest's")
    plan = plan_for(schema, obj.key)
    exceptions = exceptions_of(doc)
    live = {c.name: c for c in plan.widened}
    binary = None if decoded is not None or exceptions else copybinary.plan(
        [live.get(c) or schema.column(c) for c in plan.load], encodings)
    return Prepared(obj, m, plan, rows, schema, encodings, data if decoded is None else None, decoded, binary=binary,
                    exceptions=exceptions)


@contextmanager
def prefetched(objects: list[ArchiveObject], make: Callable[[ArchiveObject], Prepared]) -> Iterator[Iterator[Prepared]]:
    """Yield prepared objects in order. A reader thread renders each object's COPY chunks ahead,
    through a small bounded queue, while PostgreSQL loads what came before: rendering overlaps
    loading, and memory holds a few chunks, never a whole decoded object. The objects themselves
    are read and checked (`make`) by _DOWNLOADS threads ahead of it: one GET after another, each
    waiting on S3, made the reader the slower side of the bench's restore. An error of the
    reader is raised where the consumer reaches it."""
    q: queue.Queue[Any] = queue.Queue(maxsize=_AHEAD)
    stop = threading.Event()

    def produce() -> None:
        # Each object read ahead holds its verified compressed bytes: a few MB at most.
        with ThreadPoolExecutor(max_workers=_DOWNLOADS, thread_name_prefix="restore-get") as pool, \
                closing(in_order(objects, lambda obj: pool.submit(_rendered_ahead, make, obj), ahead=_DOWNLOADS,
                                 stop=stop)) as prepared:
            try:
                for item in prepared:
                    if not _put(q, item, stop):
                        return
                    chunks_of, item.rendered = item.rendered, None
                    for chunk in chunks_of if chunks_of is not None else item.render():
                        if not _put(q, chunk, stop):
                            return
                    _put(q, _END, stop)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, in order
                _put(q, exc, stop)
                return
        _put(q, _DONE, stop)

    def chunks() -> Iterator[pa.Buffer]:
        while (event := q.get()) is not _END:
            if isinstance(event, BaseException):
                raise event
            yield event

    def consume() -> Iterator[Prepared]:
        while True:
            event = q.get()
            while isinstance(event, pa.Buffer) or event is _END:
                event = q.get()  # the rest of an object whose first pass stopped early
            if event is _DONE:
                return
            if isinstance(event, BaseException):
                raise event
            event.ahead = chunks()
            yield event

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


def _rendered_ahead(make: Callable[[ArchiveObject], Prepared], obj: ArchiveObject) -> Prepared:
    """make(obj), and for a small object its COPY input too: one render thread could not keep up."""
    item = make(obj)
    if item.small:
        item.rendered = list(item.render())
    return item


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


class Loader:
    """Loads prepared objects into the target on one connection; the caller owns the transaction."""

    def __init__(self, conn: psycopg.Connection[Any], live: LiveTable, strategy: str) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(strategy)
        self.conn, self.live, self.strategy = conn, live, strategy
        #: Staging tables by column list, created once: creating and dropping one per object costs
        #: catalog writes and a WAL flush each, which dominated restores of many small objects.
        self._staging: dict[tuple[str, ...], sql.Composed] = {}

    def load(self, item: Prepared) -> ObjectResult:
        t0 = time.monotonic()
        result = ObjectResult(item.obj.key, item.obj.location, item.rows)
        cols = list(item.plan.load)
        try:
            moved = self._direct(cols, item)
            if moved is None:
                moved = self._move(cols, self._stage(cols, item))
            result.inserted, result.overwritten = moved
        except psycopg.errors.UniqueViolation as exc:
            what = (exc.diag.message_detail or "a row already exists").rstrip(".")
            if self.strategy == "fail":
                raise RestoreConflict(f"{item.obj.key}: {what} in {self.live.name} and --conflict-strategy is fail "
                                      "(use skip to keep the existing rows, or overwrite to replace them)") from None
            raise ArchiverError(f"{item.obj.key}: restoring into {self.live.name} failed: {what} "
                                f"({exc.diag.constraint_name or 'a unique constraint'})") from None
        except psycopg.Error as exc:
            if session_lost(exc):
                raise  # connection trouble: mapped to exit 3 by the caller
            raise ArchiverError(f"{item.obj.key}: restoring into {self.live.name} failed: "
                                f"{exc.diag.message_primary or exc}") from None
        result.skipped = item.rows - result.inserted - result.overwritten
        result.seconds = time.monotonic() - t0
        return result

    def _direct(self, cols: list[str], item: Prepared) -> tuple[int, int] | None:
        """Fast path: COPY straight into the target. When no archived row exists in the target yet
        (the usual full restore into an emptied table) this is exactly what the INSERT ... ON
        CONFLICT would do, at the cost of a single COPY. The primary key refuses the first
        conflicting row; then, for skip/overwrite, this object is rolled back to its savepoint and
        takes the staging path. Returns (inserted, overwritten), or None for "use the staging path"."""
        if not self.live.copy_ok:
            return None
        # A deferrable key would only complain at commit: make it (and the rest) check now.
        if self.strategy == "fail":
            self.conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
            return self._copy(self.live.relation, cols, item), 0  # a duplicate aborts the run's transaction
        self.conn.execute("SET CONSTRAINTS ALL IMMEDIATE; SAVEPOINT pg_archiver_object")  # one round trip
        try:
            copied = self._copy(self.live.relation, cols, item)
        except psycopg.errors.UniqueViolation:
            self.conn.execute("ROLLBACK TO SAVEPOINT pg_archiver_object")
            return None
        self.conn.execute("RELEASE SAVEPOINT pg_archiver_object")
        return copied, 0

    def _copy(self, relation: sql.Composable, cols: list[str], item: Prepared) -> int:
        ids = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
        fmt = sql.SQL(" (FORMAT binary)" if item.binary is not None else "")
        with self.conn.cursor() as cur:
            with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN{}").format(relation, ids, fmt)) as copy:
                for chunk in item.copy_chunks():
                    copy.write(memoryview(chunk))
            return cur.rowcount

    def _stage(self, cols: list[str], item: Prepared) -> sql.Composed:
        """COPY the rows into an empty staging table typed like the target's columns (no
        constraints, no defaults), so every value is parsed by the very type it was printed from."""
        ids = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
        tmp = self._staging.get(tuple(cols))
        if tmp is None:
            name = sql.Identifier(f"{_TMP_PREFIX}_{len(self._staging)}")
            # ON COMMIT DELETE ROWS empties it at each commit without catalog changes.
            self.conn.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DELETE ROWS AS SELECT {} FROM {} WITH NO DATA")
                              .format(name, ids, self.live.relation))
            tmp = self._staging[tuple(cols)] = sql.SQL("pg_temp.{}").format(name)
        elif self.strategy == "fail":
            # The run is one transaction, so no commit empties it: truncate it (in place, as it
            # was created in this transaction).
            self.conn.execute(sql.SQL("TRUNCATE {}").format(tmp))
        else:
            # Several objects share a transaction (restore/commits.py), so the commit that empties
            # it may not have come since the last object: a DELETE (a temporary table: no WAL, no
            # catalog change, unlike TRUNCATE of a table created in an earlier transaction).
            self.conn.execute(sql.SQL("DELETE FROM {}").format(tmp))
        self._copy(tmp, cols, item)
        return tmp

    def _updates(self, cols: list[str]) -> list[str]:
        """Columns an overwrite sets: not the key, and not identity columns (UPDATE cannot set a
        GENERATED ALWAYS identity; they are normally the key anyway)."""
        identity = {c.name for c in self.live.columns.columns if c.identity}
        return [c for c in cols if c not in self.live.primary_key and c not in identity]

    def _move(self, cols: list[str], tmp: sql.Composed) -> tuple[int, int]:
        """One INSERT of the staged rows; returns (inserted, overwritten). No conflict pre-count: it
        would join against a target whose statistics lag behind the rows this run adds, and
        seq-scan it per object. `fail` lets the primary key refuse the first duplicate."""
        ids = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
        # OVERRIDING SYSTEM VALUE: identity columns keep their archived values.
        query = sql.SQL("INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {}").format(
            self.live.relation, ids, ids, tmp)
        if self.strategy == "fail":
            return self.conn.execute(query).rowcount, 0
        pk = sql.SQL(", ").join(sql.Identifier(c) for c in self.live.primary_key)
        updates = self._updates(cols)
        if self.strategy == "skip" or not updates:
            return self.conn.execute(query + sql.SQL(" ON CONFLICT ({}) DO NOTHING").format(pk)).rowcount, 0
        sets = sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in updates)
        # xmax is 0 on a freshly inserted row and set on a row the upsert updated: one statement
        # tells both counts.
        counted = sql.SQL("WITH w AS ({} ON CONFLICT ({}) DO UPDATE SET {} RETURNING (xmax = 0) AS fresh)"
                          " SELECT count(*) FILTER (WHERE fresh), count(*) FILTER (WHERE NOT fresh) FROM w")
        row = self.conn.execute(counted.format(query, pk, sets)).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)
