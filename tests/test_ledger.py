"""The move ledger (archiver/ledger.py) driven directly, without threads or a database: a real
CheckpointStore and real stores on disk; which keys are "still in the table" is a plain set, since
the ledger's rule is what is tested, not the count query."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
import pyarrow as pa
import pytest

from archiver.checkpoint import Checkpoint, CheckpointStore
from archiver.ledger import MoveLedger, position_after
from archiver.selection import Bound
from archiver.sink import ArchiveSink
from archive_checks import archived
from common import batch_writer
from common.archive import layout, manifest_sets
from common.archive.fallback import FallbackDir
from common.archive.manifest import Manifest, sha256_hex
from common.pgtypes import Column, TableSchema
from common.archive.storage import LocalStorage, Storage

DB, SCHEMA, TABLE = "production_db", "public", "audit_logs"
DAY = date(2024, 1, 1)
ARCHIVE_SCHEMA = TableSchema((Column("id", "int8", "bigint", "b"), Column("created_at", "timestamptz", "timestamp with time zone", "b")))


@dataclass
class Move:
    """A batch being moved, as the ledger sees one (archiver.encoding.Encoded in the archiver)."""

    manifest: Manifest
    data: bytes
    hi: Bound


def make_move(ids: list[int]) -> Move:
    """A real Parquet object of these ids (one an hour from DAY) and its manifest."""
    start = datetime(DAY.year, DAY.month, DAY.day, tzinfo=timezone.utc)
    stamps = [start + timedelta(hours=i) for i in ids]
    rows = pa.table({"id": pa.array(ids, pa.int64()), "created_at": pa.array(stamps, pa.timestamp("us", tz="UTC"))})
    data = batch_writer.encode(rows, fmt="parquet", level=3, schema=ARCHIVE_SCHEMA,
                               encodings={"id": "native", "created_at": "native"}, extra_meta={})
    digest = sha256_hex(data)
    key = layout.object_key("", DB, SCHEMA, TABLE, DAY, f"part-{DAY:%Y%m%d}-{digest[:20]}.parquet")
    manifest = Manifest(key=key, sha256=digest, size=len(data), rows=len(ids), database=DB, schema=SCHEMA,
                        table=TABLE, primary_key="id", timestamp_column="created_at", min_pk=min(ids),
                        max_pk=max(ids), min_ts=min(stamps).isoformat(), max_ts=max(stamps).isoformat(),
                        schema_fingerprint=ARCHIVE_SCHEMA.fingerprint(), format="parquet", format_version=1,
                        archiver_version="test", created_at=start.isoformat())
    return Move(manifest, data, (max(stamps), max(ids)))


def store_object(store: Storage, move: Move, *, manifest: bool = True) -> None:
    """The batch's object, and (a crash after it) its manifest in a manifest set."""
    store.put(move.manifest.key, move.data, sha256=move.manifest.sha256)
    if manifest:
        manifest_sets.write(store, prefix="", manifests=[move.manifest])


def data_keys(store: Storage) -> set[str]:
    return {o.key for o in store.list("") if not layout.is_control_key(o.key)}


class World:
    """A table's checkpoint directory, its archive and fallback directory, and the ids still in it."""

    def __init__(self, tmp_path: Path) -> None:
        self.checkpoints = CheckpointStore(tmp_path / "checkpoints")
        self.primary = LocalStorage(tmp_path / "archive")
        self.fallback = FallbackDir(tmp_path / "fallback")
        self.sink = ArchiveSink(self.primary, self.fallback)
        self.in_table: set[int] = set()

    def ledger(self, *, delete_after_archive: bool = True) -> MoveLedger:
        return MoveLedger(self.checkpoints, database=DB, schema=SCHEMA, table=TABLE,
                          delete_after_archive=delete_after_archive)

    def count_present(self, keys: pa.Table) -> int:
        return len(self.in_table & set(keys.column(0).to_pylist()))

    def recover(self, ledger: MoveLedger) -> int:
        return ledger.recover(sink=self.sink, prefix="", keys=("id",), count_present=self.count_present)

    def saved(self) -> Checkpoint:
        cp = self.checkpoints.load(DB, SCHEMA, TABLE)
        assert cp is not None
        return cp

    def store(self, location: str) -> Storage:
        return self.fallback if location == "fallback" else self.primary

    def interrupted(self, move: Move) -> None:
        """A run that died with `move` pending (begun, not finished)."""
        self.ledger().begin([move])


@pytest.fixture()
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def pending_keys(cp: Checkpoint) -> list[str]:
    return [p["key"] for p in cp.pending]


# -- the normal path -------------------------------------------------------------------------

def test_begin_writes_pending_before_anything_is_uploaded(world: World) -> None:
    first, second = make_move([1, 2]), make_move([3, 4])
    world.ledger().begin([first, second])
    saved = world.saved()  # on disk already: an upload started after this is never forgotten
    assert pending_keys(saved) == [first.manifest.key, second.manifest.key]
    assert saved.pending[1]["position_after"] == position_after(second.hi)
    assert list(world.primary.list("")) == []


def test_finish_removes_the_batch_from_pending_and_moves_the_position(world: World) -> None:
    first, second = make_move([1, 2]), make_move([3, 4])
    ledger = world.ledger()
    ledger.begin([first, second])
    ledger.finish(first)
    ledger.save()
    saved = world.saved()
    assert pending_keys(saved) == [second.manifest.key]
    assert saved.position == position_after(first.hi)


def test_call_off_forgets_the_batch_and_keeps_the_position(world: World) -> None:
    first, second = make_move([1, 2]), make_move([3, 4])
    ledger = world.ledger()
    ledger.begin([first, second])
    ledger.finish(first)
    ledger.call_off(second.manifest)
    ledger.save()
    saved = world.saved()
    assert saved.pending == [] and saved.position == position_after(first.hi)


# -- after a crash ---------------------------------------------------------------------------

@pytest.mark.parametrize("location", ["local", "fallback"])
def test_recover_confirms_a_stored_batch_whose_rows_are_gone_and_writes_its_missing_manifest(world: World, location: str) -> None:
    move = make_move([1, 2, 3])
    world.interrupted(move)
    # killed between object and manifest, and the application has deleted the rows since: the
    # object is their only copy now, and it gets its manifest
    store_object(world.store(location), move, manifest=False)
    ledger = world.ledger()
    assert world.recover(ledger) == 1
    store = world.store(location)
    assert store.get(move.manifest.key) == move.data
    assert archived(store) == {move.manifest.key: move.manifest}
    assert world.saved().pending == []


@pytest.mark.parametrize("still_there", [{1, 2, 3}, {2}], ids=["all rows", "some rows"])
def test_recover_withdraws_a_stored_batch_whose_rows_are_still_in_the_table(world: World, still_there: set[int]) -> None:
    move = make_move([1, 2, 3])
    world.interrupted(move)
    store_object(world.primary, move)
    world.in_table = still_there | {99}
    assert world.recover(world.ledger()) == 1
    # taken back, not deleted: the rows get archived again by the normal path
    assert data_keys(world.primary) == set() and archived(world.primary) == {}
    assert world.saved().pending == []


def test_recover_removes_an_incomplete_object(world: World) -> None:
    move = make_move([1, 2, 3])
    world.interrupted(move)
    world.primary.put(move.manifest.key, move.data[:-10], sha256=sha256_hex(move.data[:-10]))
    world.in_table = {1, 2, 3}
    assert world.recover(world.ledger()) == 1
    assert list(world.primary.list("")) == []
    assert world.saved().pending == []


def test_recover_of_a_batch_that_never_reached_storage_only_forgets_it(world: World) -> None:
    move = make_move([1, 2, 3])
    world.interrupted(move)
    world.in_table = {1, 2, 3}
    assert world.recover(world.ledger()) == 1
    assert list(world.primary.list("")) == [] and list(world.fallback.list("")) == []
    assert world.saved().pending == []


def test_recover_without_a_checkpoint_has_nothing_to_do(world: World) -> None:
    ledger = world.ledger()
    assert world.recover(ledger) == 0 and ledger.start_after is None
    assert world.checkpoints.load(DB, SCHEMA, TABLE) is None


def test_recover_after_a_corrupt_checkpoint_scans_the_manifests(world: World) -> None:
    archived_, unfinished = make_move([1, 2]), make_move([3, 4])
    store_object(world.primary, archived_)  # rows deleted: a finished move
    store_object(world.fallback, unfinished)  # rows still in the table: the move the checkpoint named
    world.in_table = {3, 4}
    world.interrupted(unfinished)
    path = world.checkpoints.path(DB, SCHEMA, TABLE)
    path.write_text(path.read_text()[:20])  # truncated by a broken disk, say
    assert world.recover(world.ledger()) == 2  # every manifest of the table is treated as pending
    assert world.primary.get(archived_.manifest.key) == archived_.data
    assert data_keys(world.fallback) == set() and archived(world.fallback) == {}
    assert list(path.parent.glob("*.corrupt-*"))
    assert world.saved().pending == []


def test_rows_kept_recover_confirms_the_batch_and_moves_the_position_past_it(world: World) -> None:
    """delete_after_archive: false: the rows are always still there, the batch is archived all the same."""
    first, second = make_move([1, 2]), make_move([3, 4])
    world.ledger(delete_after_archive=False).begin([first, second])
    store_object(world.primary, first)
    store_object(world.primary, second, manifest=False)
    world.in_table = {1, 2, 3, 4}
    ledger = world.ledger(delete_after_archive=False)
    assert world.recover(ledger) == 2
    assert set(archived(world.primary)) == data_keys(world.primary) == {first.manifest.key, second.manifest.key}
    saved = world.saved()
    assert saved.pending == [] and saved.position == position_after(second.hi)
    assert ledger.start_after == (position_after(second.hi)["ts"], position_after(second.hi)["pk"])


def test_rows_deleted_reading_starts_at_the_beginning_whatever_the_position(world: World) -> None:
    move = make_move([1, 2])
    ledger = world.ledger()
    ledger.begin([move])
    ledger.finish(move)
    ledger.save()
    again = world.ledger()
    world.recover(again)
    assert world.saved().position is not None and again.start_after is None


def test_a_pending_entry_without_position_after_falls_back_to_the_manifest_range(world: World) -> None:
    """Checkpoints written before position_after existed name only the manifest."""
    move = make_move([5, 6])
    cp = Checkpoint(DB, SCHEMA, TABLE, pending=[json.loads(move.manifest.to_bytes())])
    world.checkpoints.save(cp)
    store_object(world.primary, move)
    ledger = world.ledger(delete_after_archive=False)
    world.recover(ledger)
    assert world.saved().position == {"ts": move.manifest.max_ts, "pk": move.manifest.max_pk}


# -- rows kept (delete_after_archive: false): the position never passes a batch not archived --

def test_rows_kept_a_batch_that_never_reached_storage_holds_the_position_before_it(world: World) -> None:
    """Uploads run in parallel: a kill can leave a later batch stored and an earlier one not. The
    rerun reads on from the position, so moving it past the missing batch would leave its rows
    out of the archive for good; the later batch, whose rows stay in the table, is taken back so
    that they are archived once, in order, not twice."""
    first, lost, later = make_move([1, 2]), make_move([3, 4]), make_move([5, 6])
    world.ledger(delete_after_archive=False).begin([first, lost, later])
    store_object(world.primary, first)
    store_object(world.primary, later)
    world.in_table = {1, 2, 3, 4, 5, 6}
    ledger = world.ledger(delete_after_archive=False)
    assert world.recover(ledger) == 3
    saved = world.saved()
    assert saved.pending == [] and saved.position == position_after(first.hi)
    assert set(archived(world.primary)) == data_keys(world.primary) == {first.manifest.key}


def test_rows_kept_an_incomplete_upload_holds_the_position_before_it(world: World) -> None:
    first, torn = make_move([1, 2]), make_move([3, 4])
    world.ledger(delete_after_archive=False).begin([first, torn])
    store_object(world.primary, first)
    world.primary.put(torn.manifest.key, torn.data[:-7], sha256=sha256_hex(torn.data[:-7]))
    world.in_table = {1, 2, 3, 4}
    world.recover(world.ledger(delete_after_archive=False))
    assert world.saved().position == position_after(first.hi)
    assert world.primary.head(torn.manifest.key) is None


def test_rows_kept_a_later_batch_whose_rows_are_gone_is_kept_not_taken_back(world: World) -> None:
    """The application deleted its rows since: the archive is their only copy."""
    first, lost, later = make_move([1, 2]), make_move([3, 4]), make_move([5, 6])
    world.ledger(delete_after_archive=False).begin([first, lost, later])
    store_object(world.primary, first)
    store_object(world.primary, later)
    world.in_table = {1, 2, 3, 4, 5}
    world.recover(world.ledger(delete_after_archive=False))
    assert world.saved().position == position_after(first.hi)
    assert world.primary.get(later.manifest.key) == later.data
    assert later.manifest.key in archived(world.primary)


def make_rows_move(rows: list[tuple[int, int]]) -> Move:
    """A batch of (id, hour) rows, in read order (timestamp, then id)."""
    start = datetime(DAY.year, DAY.month, DAY.day, tzinfo=timezone.utc)
    ids, stamps = [i for i, _ in rows], [start + timedelta(hours=h) for _, h in rows]
    move = make_move(ids)
    table = pa.table({"id": pa.array(ids, pa.int64()), "created_at": pa.array(stamps, pa.timestamp("us", tz="UTC"))})
    data = batch_writer.encode(table, fmt="parquet", level=3, schema=ARCHIVE_SCHEMA,
                               encodings={"id": "native", "created_at": "native"}, extra_meta={})
    digest = sha256_hex(data)
    m = move.manifest
    m.key = layout.object_key("", DB, SCHEMA, TABLE, DAY, f"part-{DAY:%Y%m%d}-{digest[:20]}.parquet")
    m.sha256, m.size, m.min_ts, m.max_ts = digest, len(data), min(stamps).isoformat(), max(stamps).isoformat()
    return Move(m, data, (stamps[-1], ids[-1]))


def corrupt_and_recover_kept(world: World, *moves: Move) -> Checkpoint:
    for move in moves:
        store_object(world.primary, move)
    world.in_table = {i for move in moves for i in range(move.manifest.min_pk, move.manifest.max_pk + 1)}
    world.checkpoints.save(Checkpoint(DB, SCHEMA, TABLE))
    path = world.checkpoints.path(DB, SCHEMA, TABLE)
    path.write_text(path.read_text()[:20])
    world.recover(world.ledger(delete_after_archive=False))
    return world.saved()


def test_rows_kept_after_a_corrupt_checkpoint_the_position_follows_numeric_key_order(world: World) -> None:
    """Two batches of one timestamp (a bulk insert cut by the batch size): the scan ordered them by
    str(max_pk), "99" after "100", and the rerun archived ids 100 and 101 a second time."""
    first, second = make_rows_move([(98, 5), (99, 5)]), make_rows_move([(100, 5), (101, 5)])
    assert corrupt_and_recover_kept(world, second, first).position == position_after(second.hi)


def test_rows_kept_after_a_corrupt_checkpoint_the_position_is_the_last_row_not_max_ts_and_max_pk(world: World) -> None:
    """max_pk (9) comes from an earlier row than max_ts: resuming after (hour 5, 9) skipped the
    rows of hour 5 with ids 6 to 9 (the batch ended at (hour 5, 5))."""
    move = make_rows_move([(9, 4), (5, 5)])
    assert corrupt_and_recover_kept(world, move).position == {"ts": "2024-01-01T05:00:00+00:00", "pk": 5}
