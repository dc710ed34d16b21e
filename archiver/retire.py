"""Expired leaf partitions retired whole (archiver/partitions.py says why it is safe), through one
pipeline for all of them: the reader goes from leaf to leaf while the leaves already stored are
verified, detached and dropped, so the DDL and the counts of one leaf overlap the export of the
next (a pipeline per leaf filled and drained eleven times on the bench, and made threads and
allocator arenas anew each time).

A leaf is complete once a batch of a later leaf (or the pipeline's end) comes out of the pipeline,
which hands batches out in read order. Its batches stay pending in the checkpoint until it is
detached and re-counted; any count that disagrees takes them back and leaves the leaf to the
row-by-row path. Batches of the leaves after it are pending too: still attached, their rows are in
the table, so after a crash the ledger takes them back like any other interrupted move."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pyarrow as pa

from archiver.encoding import Encoded
from archiver.hooks import Hook
from archiver.ledger import MoveLedger
from archiver.partitions import (Leaf, attach, count_leaf, detach, drop_verified, holds_unarchivable, leaf_selection,
                                 leaves, partition_constraint, whole_before)
from archiver.pipeline import BatchPipeline, Stored
from archiver.reader import Batch
from archiver.selection import Selection
from archiver.sink import ArchiveSink

log = logging.getLogger("archiver")


@dataclass
class Retirer:
    """The table job's pieces a retirement uses (archiver/table_job.py builds it)."""

    conn: psycopg.Connection[Any]
    sel: Selection
    oid: int
    ledger: MoveLedger
    sink: ArchiveSink
    hook: Hook
    mode: str  # detach | drop
    ctx: dict[str, str]
    #: (selection, stop) -> the leaf's batches
    read: Callable[[Selection, threading.Event], Iterable[Batch]]
    #: the database's snapshot, taken before a leaf's first read (ArrowSource.snapshot)
    snapshot: Callable[[], str]
    encode: Callable[[Batch, Selection], Encoded]
    #: pipeline factory: (read, encode, begin) -> BatchPipeline
    pipeline: Callable[..., BatchPipeline]
    done: Callable[[Encoded, str], None]
    stopping: Callable[[], bool]
    #: the stop file, --max-rows, max runtime: checked between leaves
    should_stop: Callable[[], bool]
    #: whether retire_all() ended early for a stop (its incomplete leaves were taken back)
    stopped: bool = False
    #: each leaf's export snapshot, by oid: its detach-time checks find any row written since
    snapshots: dict[int, str] = field(default_factory=dict)

    def retire_all(self, whole: Sequence[Leaf]) -> int:
        """Archive, verify, detach (and drop) every leaf that allows it; returns how many were
        retired. The others are left to the row-by-row path."""
        todo = [leaf for leaf in whole if self._whole_leaf(leaf)]
        stored: dict[int, list[Stored]] = {leaf.oid: [] for leaf in todo}
        by_name = {(leaf.schema, leaf.name): leaf for leaf in todo}
        sels = {leaf.oid: leaf_selection(self.sel, leaf) for leaf in todo}
        pending = iter(todo)  # leaves whose batches may still come, in read order
        current = next(pending, None)
        retired = 0
        stopped = False
        with self.pipeline(read=lambda stop: self._read_all(todo, sels, stop), encode=self._encoder(sels),
                           begin=self._begin) as pipe:
            for group in pipe.stored():
                self.hook("after_upload")
                for enc, location in group:
                    leaf = by_name[_leaf_of(enc)]
                    while current is not None and current.oid != leaf.oid:  # every batch of `current` is out
                        if not stopped:
                            retired += self._finish(current, stored.pop(current.oid))
                            stopped = self._stop_reading(pipe)
                        current = next(pending, None)
                    _keep_manifest_only(enc)
                    stored[leaf.oid].append((enc, location))
            self.stopped = stopped or self.stopping()
        for leaf in todo:  # the leaves not finished above, in read order
            if leaf.oid not in stored:
                continue
            if self.stopped:
                self._take_back(stored.pop(leaf.oid), "the run is stopping", leaf, recorded=False)
            else:
                retired += self._finish(leaf, stored.pop(leaf.oid))
        return retired

    # -- reading -----------------------------------------------------------------------------
    def _whole_leaf(self, leaf: Leaf) -> bool:
        if holds_unarchivable(self.conn, self.sel, leaf.relation):
            log.info("partition %s holds rows the run does not archive (newer than the cutoff or before year 1):"
                     " archived row by row", leaf.qualified_name, extra=self.ctx)
            return False
        return True

    def _read_all(self, todo: Sequence[Leaf], sels: dict[int, Selection], stop: threading.Event) -> Iterator[Batch]:
        for leaf in todo:
            if stop.is_set():
                return
            # Every row the leaf's reads saw was committed by then, or later: a row the detach-time
            # count finds that this snapshot does not see was written since, or read (when
            # committed between the snapshot and its window) and the leaf goes row by row anyway.
            self.snapshots[leaf.oid] = self.snapshot()
            for batch in self.read(sels[leaf.oid], stop):
                batch.origin = leaf
                yield batch

    def _encoder(self, sels: dict[int, Selection]) -> Callable[[Batch], Encoded]:
        def encode(batch: Batch) -> Encoded:
            leaf: Leaf = batch.origin
            enc = self.encode(batch, sels[leaf.oid])
            enc.manifest.partition = leaf.doc()  # before begin(): the pending entry records the leaf too
            return enc
        return encode

    def _begin(self, new: Sequence[Encoded]) -> None:
        self.ledger.begin(new)
        self.hook("after_checkpoint")

    def _stop_reading(self, pipe: BatchPipeline) -> bool:
        """Between leaves: a stop asked for ends the reading; the leaves not complete are taken back."""
        if self.stopping() or self.should_stop():
            pipe.stop_reading()
            return True
        return False

    # -- one complete leaf -------------------------------------------------------------------
    def _finish(self, leaf: Leaf, stored: list[Stored]) -> bool:
        """Every batch of the leaf is stored: re-check, detach, re-count, finish, drop."""
        rows = sum(enc.rows for enc, _ in stored)
        doc = leaf.doc()
        snapshot = self.snapshots.pop(leaf.oid)
        constraint = partition_constraint(self.conn, leaf.oid)  # to attach it again next to a default partition
        self.ledger.cp.retiring = {"leaf": doc, "mode": self.mode, "step": "archived", "rows": rows, "snapshot": snapshot,
                                   "constraint": constraint}
        self.ledger.save()
        if not self._still_retirable(leaf, rows, snapshot):
            return self._take_back(stored, "rows were written to it since its export", leaf, recorded=False)
        # The leaf's manifests, in one set, before its rows leave the table with it.
        self.sink.record([(enc.manifest, location) for enc, location in stored])
        self.hook("after_manifest_set")
        self.hook("after_partition_archived")
        detach(self.conn, doc)
        self.hook("after_detach")
        # One count of the detached leaf under a lock that keeps it as counted until its drop
        # (partitions.drop_verified): no row can reach it through the table any more.
        with drop_verified(self.conn, self.sel, doc, rows=rows, drop=self.mode == "drop", snapshot=snapshot) as verified:
            if not verified.ok:
                self.conn.rollback()
                attach(self.conn, self.sel, doc, constraint=constraint, ctx=self.ctx)
                return self._take_back(stored, f"rows were written to it during its detach ({verified.rows} rows,"
                                       f" {rows} archived, {verified.written_since} written since the export)", leaf,
                                       recorded=True)
            for enc, location in stored:
                self.done(enc, location)
            self.ledger.cp.retiring.update(step="detached")
            self.ledger.save()
            if self.mode == "drop":
                self.hook("before_drop")
        self.ledger.cp.retiring = None
        self.ledger.save()
        if self.mode == "drop":
            log.info("partition %s retired: archived, detached and dropped (%s)", leaf.qualified_name, leaf.bound, extra=self.ctx)
        else:
            log.info("partition %s retired: detached and kept as a table of its own (%s); the archiver no longer reads it",
                     leaf.qualified_name, leaf.bound, extra=self.ctx)
        return True

    def _still_retirable(self, leaf: Leaf, rows: int, snapshot: str) -> bool:
        """Re-checked at detach time: the bound (from the catalog again) lies before the cutoff,
        and the leaf holds exactly the rows archived (LeafCount.holds)."""
        now = next(iter(leaves(self.conn, self.oid, self.sel.table.timestamp_column, only=leaf.oid)), None)
        ok = now is not None and now.bound == leaf.bound and whole_before(self.conn, self.sel, now)
        self.conn.commit()
        return ok and count_leaf(self.conn, self.sel, leaf.relation, snapshot=snapshot).holds(rows)

    def _take_back(self, stored: list[Stored], why: str, leaf: Leaf, *, recorded: bool) -> bool:
        """`recorded`: the leaf's manifest set was stored (a withdrawal record takes each back)."""
        for enc, location in stored:
            self.sink.take_back(enc.manifest, location, recorded=recorded)
            self.ledger.call_off(enc.manifest)
        self.ledger.cp.retiring = None
        self.ledger.save()
        log.warning("partition %s not retired (%s): its %d batches were taken back; its rows go row by row",
                    leaf.qualified_name, why, len(stored), extra=self.ctx)
        return False


def _leaf_of(enc: Encoded) -> tuple[str, str]:
    part = enc.manifest.partition
    assert part is not None
    return part["schema"], part["name"]


def _keep_manifest_only(enc: Encoded) -> None:
    """A stored batch waits for its leaf's detach with its manifest alone: nothing deletes its rows
    (the leaf goes whole), so neither its bytes nor its keys and xmins are needed. With the keys
    kept (then slices of the read windows), the 2M-row bench's peak RSS crept from ~280 to ~320 MB
    over a run; without them, and with keys copied at encode time, it stays at ~242 MB."""
    enc.data = b""
    enc.keys = enc.keys.schema.empty_table()
    enc.xmins = pa.array([], enc.xmins.type)
