"""One expired leaf partition retired whole (archiver/partitions.py says why it is safe): archived
through the usual pipeline with its batches kept pending, verified and re-counted, detached,
re-counted once detached, its batches finished, then dropped (drop) or kept (detach). Any count
that disagrees takes the batches back and leaves the leaf to the row-by-row path."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from archiver.encoding import Encoded
from archiver.hooks import Hook
from archiver.ledger import MoveLedger
from archiver.partitions import Leaf, attach, count_leaf, detach, finish_detached, leaf_selection, leaves, whole_before
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
    encode: Callable[[Batch, Selection], Encoded]
    #: pipeline factory: (read, encode, begin) -> BatchPipeline
    pipeline: Callable[..., BatchPipeline]
    done: Callable[[Encoded, str], None]
    stopping: Callable[[], bool]

    def retire(self, leaf: Leaf) -> bool:
        """Archive, verify, detach (and drop) one leaf. False leaves it to the row-by-row path."""
        before = count_leaf(self.conn, self.sel, leaf.relation)
        if before.not_expired:
            log.info("partition %s holds %d rows the run does not archive (newer than the cutoff or before year 1):"
                     " archived row by row", leaf.qualified_name, before.not_expired, extra=self.ctx)
            return False
        doc = leaf.doc()
        self.ledger.cp.retiring = {"leaf": doc, "mode": self.mode, "step": "archiving", "rows": None}
        self.ledger.save()
        stored = self._archive(leaf)
        if stored is None:
            return False
        rows = sum(enc.rows for enc, _ in stored)
        after = count_leaf(self.conn, self.sel, leaf.relation)
        if after.rows != rows or after.not_expired:
            return self._take_back(stored, f"it holds {after.rows} rows, {rows} were archived", leaf)
        self.ledger.cp.retiring.update(step="archived", rows=rows)
        self.ledger.save()
        self.hook("after_partition_archived")
        if not self._still_retirable(leaf, rows):
            return self._take_back(stored, "it changed before its detach", leaf)
        detach(self.conn, doc)
        self.hook("after_detach")
        detached = count_leaf(self.conn, self.sel, leaf.relation)
        if detached.rows != rows or detached.not_expired:
            attach(self.conn, doc)
            return self._take_back(stored, f"a row reached it during its detach ({detached.rows} rows, {rows} archived)", leaf)
        for enc, location in stored:
            self.done(enc, location)
        self.ledger.cp.retiring.update(step="detached")
        self.ledger.save()
        finish_detached(self.conn, self.sel, self.ledger.cp.retiring, mode=self.mode, ctx=self.ctx, hook=self.hook)
        self.ledger.cp.retiring = None
        self.ledger.save()
        return True

    def _archive(self, leaf: Leaf) -> list[Stored] | None:
        """Every row of the leaf stored, its batches pending; None (all taken back) on a stop."""
        sel = leaf_selection(self.sel, leaf)
        stored: list[Stored] = []

        def encode(batch: Batch) -> Encoded:
            enc = self.encode(batch, sel)
            enc.manifest.partition = leaf.doc()  # before begin(): the pending entry records it too
            return enc

        def begin(new: Sequence[Encoded]) -> None:
            self.ledger.begin(new)
            self.hook("after_checkpoint")

        with self.pipeline(read=lambda stop: self.read(sel, stop), encode=encode, begin=begin) as pipe:
            for group in pipe.stored():
                self.hook("after_upload")
                stored.extend(group)
        if self.stopping():
            self._take_back(stored, "the run is stopping", leaf)
            return None
        return stored

    def _still_retirable(self, leaf: Leaf, rows: int) -> bool:
        """Re-checked at detach time: the bound (from the catalog again) lies before the cutoff,
        and the leaf holds exactly the rows archived."""
        now = next((x for x in leaves(self.conn, self.oid, self.sel.table.timestamp_column) if x.oid == leaf.oid), None)
        ok = now is not None and now.bound == leaf.bound and whole_before(self.conn, self.sel, now)
        self.conn.commit()
        n = count_leaf(self.conn, self.sel, leaf.relation)
        return ok and n.rows == rows and n.not_expired == 0

    def _take_back(self, stored: list[Stored], why: str, leaf: Leaf) -> bool:
        for enc, location in stored:
            self.sink.withdraw(enc.manifest.key, location)
            self.ledger.call_off(enc.manifest)
        self.ledger.cp.retiring = None
        self.ledger.save()
        log.warning("partition %s not retired (%s): its %d batches were taken back; its rows go row by row",
                    leaf.qualified_name, why, len(stored), extra=self.ctx)
        return False
