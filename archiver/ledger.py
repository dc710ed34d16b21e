"""The crash-safety rule of a move (issue 3), kept in one place: a batch is pending in its table's
checkpoint before its upload starts, and leaves it only once its delete has committed, or once it
is called off (its upload never started, or the stored batch was taken back). Whatever a crash
interrupts, the next run finds every unfinished move in the checkpoint.

recover() picks up interrupted work: a pending batch is either finished (object verified and its
rows already deleted: its manifest is recorded in a manifest set if the crash came before that)
or taken back (object missing, incomplete, or its rows still in the table: the rows get archived
again, by the normal path; a withdrawal record takes it back if a set already lists it). A resumed batch's rows are never deleted here:
the checkpoint does not hold the exported rows' xmins, so a row updated between the export and the
rerun could not be told apart, and deleting it would lose the update. Archiving the batch again
costs one upload. A corrupt checkpoint is set aside and the table's manifests are scanned instead,
so an unfinished move is never forgotten.

With rows kept (delete_after_archive: false) reading resumes from a position, not from what the
table holds, so the position moves only past batches that are archived, in read order: the first
one that is not holds it, and the stored batches after it are taken back (their rows are read
again). Uploads run in parallel, so a kill can leave a later batch stored and an earlier not."""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict
from decimal import Decimal
from typing import Any, Protocol

import pyarrow as pa

from archiver.checkpoint import Checkpoint, CheckpointStore, CorruptCheckpoint
from common.key_range import iso, jsonable, natural_column, ordered_ends
from archiver.selection import Bound
from archiver.sink import ArchiveSink
from datetime import datetime, timedelta

from common import batch_writer
from common.archive import manifest_sets
from common.errors import DataIntegrityError
from common.archive.manifest import Manifest
from common.archive.storage import Storage
from common.archive.table_index import TableIndex, list_table, load_index

log = logging.getLogger("archiver")

#: How many of the keys (a table of a stored batch's key columns, as the archive holds them) are
#: still in the table.
CountPresent = Callable[[pa.Table], int]


class Move(Protocol):
    """A batch being moved, as the ledger needs it (archiver.encoding.Encoded is one)."""

    @property
    def manifest(self) -> Manifest: ...

    @property
    def hi(self) -> Bound: ...


def position_after(hi: Bound) -> dict[str, Any]:
    """Where a run that keeps its rows (delete_after_archive: false) continues after a batch: its
    last row's (timestamp, pk), or the next day's start with no key after a whole day. Not the
    manifest's max_ts and max_pk, which may come from two different rows."""
    return {"ts": iso(hi[0]), "pk": jsonable(hi[1])}


class MoveLedger:
    """One table's moves in its checkpoint. Only the mover thread calls it."""

    def __init__(self, checkpoints: CheckpointStore, *, database: str, schema: str, table: str,
                 delete_after_archive: bool, prefix: str = "") -> None:
        self._checkpoints = checkpoints
        self.prefix = prefix  # s3.prefix: where the table's manifest sets are
        self._indexes: dict[str, TableIndex] = {}
        self.database, self.schema, self.table = database, schema, table
        self.delete_after_archive = delete_after_archive
        self.cp = Checkpoint(database, schema, table)  # recover() loads the saved one
        self.ctx = {"database": database, "table": self.name}

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def start_after(self) -> tuple[Any, Any] | None:
        """Where reading continues: after the last archived row when rows are kept; otherwise the
        table itself says what is left, and reading starts at the beginning."""
        pos = self.cp.position
        return (pos["ts"], pos["pk"]) if pos and not self.delete_after_archive else None

    # -- the normal path ---------------------------------------------------------------------
    def begin(self, moves: Sequence[Move]) -> None:
        """These batches are about to be uploaded: pending, in one checkpoint write."""
        self.cp.pending.extend(dict(asdict(m.manifest), position_after=position_after(m.hi)) for m in moves)
        self.save()

    def finish(self, move: Move) -> None:
        """The batch's delete committed (or its rows are kept): it is done, and reading would
        continue after it."""
        self.call_off(move.manifest)
        self.cp.position = position_after(move.hi)

    def call_off(self, manifest: Manifest) -> None:
        """The batch is no longer moving: its upload never started, or it was taken back.
        Saved with the next begin (or the final save): if a crash comes first, the rerun finds
        the move finished, or nothing stored, and only confirms it."""
        self.cp.pending = [p for p in self.cp.pending if p["key"] != manifest.key]

    def save(self) -> None:
        self._checkpoints.save(self.cp)

    # -- after a crash -----------------------------------------------------------------------
    def recover(self, *, sink: ArchiveSink, prefix: str, keys: Sequence[str], count_present: CountPresent,
                settle: Callable[[Checkpoint], None] | None = None) -> int:
        """Load the checkpoint, let `settle` bring an interrupted partition retirement to a state
        the rule below can judge (archiver/partitions.py: a leaf detached or still attached), then
        finish or take back each pending move (see the module's docstring), saving after each.
        Returns how many there were."""
        self.prefix = prefix
        self.cp = self._load(sink, prefix)
        if settle is not None and self.cp.retiring:
            settle(self.cp)
        if not self.cp.pending:
            if self.cp.position and not self.delete_after_archive:
                log.info("Resuming from checkpoint: %s after position %s", self.name, self.cp.position, extra=self.ctx)
            return 0
        return self.finish_pending(sink=sink, keys=keys, count_present=count_present)

    def finish_pending(self, *, sink: ArchiveSink, keys: Sequence[str], count_present: CountPresent,
                       resuming: bool = True) -> int:
        """Finish or take back every pending move, as after a crash (recover()); also called by
        a run that must stop moving rows at once (archiver/delete_guard.py), with `resuming` off."""
        resumed = 0
        gap: str | None = None  # rows kept: the first batch in read order that is not archived
        self._indexes = {}  # read afresh: what this recovery may write is judged on what is stored now
        for entry in list(self.cp.pending):
            manifest = Manifest(**{k: v for k, v in entry.items() if k in Manifest.__dataclass_fields__})
            if resuming:
                log.info("Resuming from checkpoint: %s position %s, interrupted batch %s", self.name,
                         self.cp.position or "start", manifest.key, extra=self.ctx)
            if gap is not None:
                self._behind_gap(manifest, gap, sink=sink, keys=keys, count_present=count_present)
            elif (data := self._finish_interrupted(manifest, sink=sink, keys=keys, count_present=count_present)) is not None:
                if not self.delete_after_archive:
                    self.cp.position = entry.get("position_after") or last_row_position(data, manifest, keys)
            elif not self.delete_after_archive:
                # Reading goes on from the position, so it must not pass rows no object holds.
                gap = manifest.key
            self.cp.pending.remove(entry)
            self.save()
            resumed += 1
        return resumed

    def _behind_gap(self, m: Manifest, gap: str, *, sink: ArchiveSink, keys: Sequence[str],
                    count_present: CountPresent) -> None:
        """Rows kept, and an earlier batch was not archived: reading resumes before it and will
        reach this batch's rows again. Taken back when all of them are still in the table, so
        they are archived once; kept when some are gone (the archive is their only copy), at the
        price of the others being archived twice."""
        found = self._verified_copy(m, sink)
        if found is None:
            return
        store, data = found
        if _rows_present(data, m, keys, count_present) == m.rows:
            sink.take_back(m, store.location, recorded=self._recorded(store, m))
            log.info("interrupted batch %s taken back: the earlier batch %s was not archived, and the run"
                     " resumes before it", m.key, gap, extra=self.ctx)
            return
        self._record(store, m)
        log.warning("interrupted batch %s kept (some of its rows are no longer in the table); the earlier"
                    " batch %s was not archived, so the rest of its rows will be archived a second time",
                    m.key, gap, extra=self.ctx)

    def _load(self, sink: ArchiveSink, prefix: str) -> Checkpoint:
        try:
            cp = self._checkpoints.load(self.database, self.schema, self.table)
        except CorruptCheckpoint as exc:
            log.error("%s; scanning this table's archives for unfinished moves", exc, extra=self.ctx)
            cp = Checkpoint(self.database, self.schema, self.table)
            # In read order, so that a resumed run (rows kept) starts after the last one.
            cp.pending = sorted(self._scan_manifests(_stores(sink), prefix), key=lambda m: (m["max_ts"], _ordered(m["max_pk"])))
        return cp or Checkpoint(self.database, self.schema, self.table)

    def _scan_manifests(self, stores: list[Storage], prefix: str) -> list[dict[str, Any]]:
        """All manifests of this table (after a corrupt checkpoint): each is finished like an
        interrupted batch, which takes back whichever still has rows in the table."""
        found: dict[str, dict[str, Any]] = {}
        for store in stores:
            index = load_index(store, list_table(store, prefix, self.database, self.schema, self.table))
            for key, r in index.objects.items():
                found.setdefault(key, asdict(r.manifest))
        return list(found.values())

    def _finish_interrupted(self, m: Manifest, *, sink: ArchiveSink, keys: Sequence[str],
                            count_present: CountPresent) -> bytes | None:
        """Finish the move (returns the archived object's bytes) or take it back (None)."""
        found = self._verified_copy(m, sink)
        if found is None:
            log.info("interrupted batch %s never reached storage; its rows stay in the table and will be archived again", m.key, extra=self.ctx)
            return None
        store, data = found
        if self.delete_after_archive and (present := _rows_present(data, m, keys, count_present)):
            sink.take_back(m, store.location, recorded=self._recorded(store, m))
            log.info("interrupted move of %s taken back: %d of its %d rows are still in the table and will be archived again",
                     m.key, present, m.rows, extra=self.ctx)
            return None
        self._record(store, m)
        if self.delete_after_archive:
            log.info("finished the interrupted move of %s: its %d rows were already deleted", m.key, m.rows, extra=self.ctx)
        return data

    def _verified_copy(self, m: Manifest, sink: ArchiveSink, *, table: str = "the table",
                       recorded: Callable[[Storage, Manifest], bool] | None = None) -> tuple[Storage, bytes] | None:
        """The batch's first complete stored copy (primary, then fallback); an incomplete one is
        removed on the way (its rows are still in `table`; a family's child passes its own)."""
        recorded = recorded or self._recorded
        for store in _stores(sink):
            if store.head(m.key) is None:
                continue
            data = store.get(m.key)
            try:
                m.check(data)
            except DataIntegrityError as exc:
                log.warning("interrupted upload %s is incomplete (%s); removed, its rows stay in %s", m.key, exc, table,
                            extra=self.ctx)
                sink.take_back(m, store.location, recorded=recorded(store, m))
                continue
            return store, data
        return None

    def _index(self, store: Storage) -> TableIndex:
        """The table's manifests in `store` that an interrupted run could have written: the sets
        named after the oldest pending batch was encoded (less an hour, for a clock stepped back).
        Read once per recovery and store."""
        if store.location not in self._indexes:
            oldest = min((str(p.get("created_at") or "") for p in self.cp.pending), default="")
            since = None
            try:
                since = f"{datetime.fromisoformat(oldest) - timedelta(hours=1):%Y%m%dT%H%M%S%fZ}"
            except ValueError:
                pass  # no time to go by: every set is read
            self._indexes[store.location] = load_index(
                store, list_table(store, self.prefix, self.database, self.schema, self.table), sets_from=since)
        return self._indexes[store.location]

    def _recorded(self, store: Storage, m: Manifest) -> bool:
        return self._index(store).has(m.key, manifest_sets.entry_sha256(m))

    def _record(self, store: Storage, m: Manifest) -> None:
        """The move is finished: its manifest is recorded (once) before it leaves pending."""
        if not self._recorded(store, m):
            manifest_sets.write(store, prefix=self.prefix, manifests=[m])


def _stores(sink: ArchiveSink) -> list[Storage]:
    return [s for s in (sink.primary, sink.fallback) if s is not None]


def last_row_position(data: bytes, m: Manifest, keys: Sequence[str]) -> dict[str, Any]:
    """position_after() of a stored batch that names none (a checkpoint older than
    position_after, or manifests scanned after a corrupt one): its last row in read order,
    (timestamp, key). Not (max_ts, max_pk), which may come from two rows: resuming there passed
    the rows of max_ts with a key between the two. Text keys are compared bytewise here, where
    PostgreSQL uses the column's collation: only rows sharing the last timestamp can differ."""
    rows, schema, _, _ = batch_writer.decode(data, fmt=m.format, columns=[m.timestamp_column, *keys])
    natural = pa.table({n: natural_column(rows, n, schema) for n in (m.timestamp_column, *keys)})
    _, last = ordered_ends(natural)
    values = [natural.column(k)[last].as_py() for k in keys]
    return {"ts": iso(natural.column(0)[last].as_py()), "pk": jsonable(values[0] if len(values) == 1 else values)}


def _ordered(pk: Any) -> Any:
    """A manifest key (JSON) in its natural order, for manifests sharing their max_ts: numbers as
    numbers (str() put "99" after "100"; numeric keys are written as text, NaN after every
    number as in PostgreSQL), the rest as text, a composite key column by column."""
    if isinstance(pk, list):
        return tuple(_ordered(v) for v in pk)
    if isinstance(pk, (int, float)) and not isinstance(pk, bool):
        return (0, Decimal(pk))
    if isinstance(pk, str) and _NUMBER.fullmatch(pk):
        return (0, Decimal(pk))
    return (2, "") if pk == "NaN" else (1, str(pk))


_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def _rows_present(data: bytes, m: Manifest, keys: Sequence[str], count_present: CountPresent) -> int:
    """How many of a stored batch's rows are still in the table. Our delete of a batch is one
    transaction, so it is all or none; some gone means the application deleted them since."""
    return count_present(batch_writer.decode(data, fmt=m.format, columns=list(keys))[0])
