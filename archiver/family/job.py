"""A table with `children: archive` (issue 28): the table job, with every batch's children's rows
exported, stored and deleted with it (archiver/family/members.py finds the family, archiver/family/move.py
moves a batch's).

Crash safety, on top of the table job's (archiver/ledger.py): a batch's pending entry in the
table's checkpoint names its children's objects too, before any upload starts. Every object of a
family batch is stored before the one transaction that deletes the family's rows, and the
manifests (one set per table) are stored before it commits. Recovery judges each object by its
own table: rows still in the table (the transaction never committed) -> the object is taken back;
rows gone (it committed) -> the object is recorded if the crash came before its set. The delete
being one transaction, both answers agree across the family."""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from archiver.family import move as family_move
from archiver.checkpoint import Checkpoint, CheckpointStore
from archiver.delete_guard import DeletesRefused, check_deletes
from archiver.digest import RunDigest
from archiver.encoding import Encoded
from archiver.family.members import Child, Family, RefusedFamily, discover, family_lines
from archiver.family.move import ChildPart, ChildRows
from archiver.ledger import CountPresent, MoveLedger, Move, position_after
from archiver.mover import DELETE_ATTEMPTS, RowMover
from archiver.pipeline import Stored
from archiver.reader import Batch
from archiver.references import Reference
from archiver.selection import Selection
from archiver.sink import ArchiveSink
from archiver.table_job import TableJob
from common import batch_writer, iceberg
from common.archive import manifest_sets
from common.pg.db import table_schema
from common.archive.digest import secret as digest_secret
from common.errors import ArchiverError
from common.archive.manifest import Manifest
from common.pgtypes import TableSchema
from common.archive.storage import Storage
from common.archive.table_index import TableIndex, list_table, load_index

log = logging.getLogger("archiver")


@dataclass
class FamilyBatch(Batch):
    """A batch of the archived table with its children's rows (read in the reader thread)."""

    children: list[ChildRows] = field(default_factory=list)


def _manifest(doc: dict[str, Any]) -> Manifest:
    return Manifest(**{k: v for k, v in doc.items() if k in Manifest.__dataclass_fields__})


class FamilyLedger(MoveLedger):
    """The table's moves, each with its children's objects (module docstring)."""

    def __init__(self, checkpoints: CheckpointStore, **kw: Any) -> None:
        super().__init__(checkpoints, **kw)
        self.family: Family | None = None
        self.conn: psycopg.Connection[Any] | None = None
        self.schemas: dict[tuple[str, str], TableSchema] = {}
        self.parts: dict[str, list[ChildPart]] = {}  # the job's: root object key -> its children's parts
        self._child_indexes: dict[tuple[str, str, str], TableIndex] = {}

    def begin(self, moves: Sequence[Move]) -> None:
        self.cp.pending.extend(dict(asdict(m.manifest), position_after=position_after(m.hi),
                                    children=[asdict(p.manifest) for p in self.parts.get(m.manifest.key, [])])
                               for m in moves)
        self.save()

    def call_off(self, manifest: Manifest) -> None:
        super().call_off(manifest)
        self.parts.pop(manifest.key, None)

    def child_keys(self) -> set[str]:
        """The children's objects of the pending moves."""
        return {c["key"] for p in self.cp.pending for c in p.get("children", [])}

    # -- after a crash -----------------------------------------------------------------------
    def finish_pending(self, *, sink: ArchiveSink, keys: Sequence[str], count_present: CountPresent,
                       resuming: bool = True) -> int:
        self._child_indexes = {}
        return super().finish_pending(sink=sink, keys=keys, count_present=count_present, resuming=resuming)

    def _finish_interrupted(self, m: Manifest, *, sink: ArchiveSink, keys: Sequence[str],
                            count_present: CountPresent) -> bytes | None:
        if m.parent is not None:  # a child's object, from a scan after a corrupt checkpoint
            self._finish_child(m, sink)
            return None
        data = super()._finish_interrupted(m, sink=sink, keys=keys, count_present=count_present)
        entry = next((p for p in self.cp.pending if p["key"] == m.key), None)
        for doc in (entry or {}).get("children", []):
            self._finish_child(_manifest(doc), sink)
        return data

    def _finish_child(self, m: Manifest, sink: ArchiveSink) -> None:
        """A child's object of an interrupted move: judged by its own rows, as the table's is."""
        child = self._child(m)
        found = self._verified_copy(m, sink, table=child.name, recorded=self._child_recorded)
        if found is None:
            log.info("interrupted child object %s never reached storage; its rows stay in %s", m.key, child.name,
                     extra=self.ctx)
            return
        store, data = found
        assert self.conn is not None
        keys = batch_writer.decode(data, fmt=m.format, columns=list(child.keys))[0]
        present = family_move.count_present(self.conn, child, self.schemas[child.parent], keys)
        if present:
            sink.take_back(m, store.location, recorded=self._child_recorded(store, m))
            log.info("interrupted move of %s taken back: %d of its %d rows are still in %s", m.key, present, m.rows,
                     child.name, extra=self.ctx)
            return
        if not self._child_recorded(store, m):
            manifest_sets.write(store, prefix=self.prefix, manifests=[m])
        log.info("finished the interrupted move of %s: its %d rows of %s were already deleted", m.key, m.rows,
                 child.name, extra=self.ctx)

    def _child(self, m: Manifest) -> Child:
        found = next((c for c in (self.family.children if self.family else ()) if (c.schema, c.table) == (m.schema, m.table)), None)
        if found is None:
            raise ArchiverError(f"{m.key}: an interrupted move names {m.schema}.{m.table}, no longer a child of"
                                f" {self.name}; restore the foreign key (or move its object by hand) and run again")
        return found

    def _child_recorded(self, store: Storage, m: Manifest) -> bool:
        ident = (store.location, m.schema, m.table)
        if ident not in self._child_indexes:
            oldest = min((str(p.get("created_at") or "") for p in self.cp.pending), default="")
            since = None
            try:
                since = f"{datetime.fromisoformat(oldest) - timedelta(hours=1):%Y%m%dT%H%M%S%fZ}"
            except ValueError:
                pass
            self._child_indexes[ident] = load_index(
                store, list_table(store, self.prefix, self.database, m.schema, m.table), sets_from=since)
        return self._child_indexes[ident].has(m.key, manifest_sets.entry_sha256(m))

    def _load(self, sink: ArchiveSink, prefix: str) -> Checkpoint:
        self._scanned: list[dict[str, Any]] = []
        cp = super()._load(sink, prefix)
        cp.pending.extend(self._scanned)  # after the table's own, which the base sorts in read order
        return cp

    def _scan_manifests(self, stores: list[Storage], prefix: str) -> list[dict[str, Any]]:
        """After a corrupt checkpoint: the children's objects too, each judged by its own rows."""
        found = super()._scan_manifests(stores, prefix)
        for child in self.family.children if self.family else ():
            seen: set[str] = set()
            for store in stores:
                index = load_index(store, list_table(store, prefix, self.database, child.schema, child.table))
                for key, r in index.objects.items():
                    if key not in seen and r.manifest.parent is not None:
                        seen.add(key)
                        self._scanned.append(asdict(r.manifest))
        return found


class FamilyJob(TableJob):
    """The table job of a table with `children: archive`."""

    def __init__(self, *, checkpoints: CheckpointStore, **kw: Any) -> None:
        super().__init__(checkpoints=checkpoints, **kw)
        self._checkpoints = checkpoints
        self.fledger = FamilyLedger(checkpoints, database=self.db.name, schema=self.t.schema_, table=self.t.name,
                                    delete_after_archive=self.opts.delete_after_archive, prefix=self.cfg.s3.prefix)
        self.ledger = self.fledger
        self.fledger.conn = self.conn
        self._parts: dict[str, list[ChildPart]] = {}
        self.fledger.parts = self._parts
        self.family = Family(self.t.schema_, self.t.name)
        self._digests: dict[tuple[str, str], RunDigest] = {}
        self._moved: dict[str, list[int]] = {}  # child -> [rows, objects] this run

    # -- the family ------------------------------------------------------------------------
    def _references(self, oid: int) -> tuple[Reference, ...]:
        name = self.result.name
        if not self.opts.delete_after_archive:
            raise RefusedFamily(f"{name} refused: children: archive moves the children's rows with their parents and"
                                " needs delete_after_archive: true; nothing was exported or deleted")
        self.family = discover(self.conn, oid, self.t.schema_, self.t.name,
                               archived=[(t.schema_, t.name) for t in self.db.tables])
        for child in self.family.children:
            check_deletes(self.conn, child.oid, child.name, retire=False)
        schemas = {(self.t.schema_, self.t.name): table_schema(self.conn, oid)}
        schemas.update({(c.schema, c.table): c.columns for c in self.family.children})
        self.fledger.family, self.fledger.schemas, self.schemas = self.family, schemas, schemas
        self.conn.commit()
        if self.family.children:
            log.info("children: archive: %d tables move with %s", len(self.family.children), name, extra=self.ctx)
            for line in family_lines(self.family):
                log.info("%s", line.strip(), extra=self.ctx)
        return self.family.own

    @property
    def delete_mover(self) -> RowMover:
        """The table's delete, guarded: no row that a child row still references (not exported,
        or not deleted) is deleted, so no ON DELETE action fires on an unarchived row."""
        if not hasattr(self, "_delete_mover"):
            guards = tuple(c.ref for c in self.family.first)
            self._delete_mover = RowMover(self.conn, replace(self.sel, references=self.sel.references + guards),
                                          log_extra=self.ctx)
        return self._delete_mover

    def _retire_partitions(self, oid: int) -> None:
        if self.family.children and self.opts.expired_partitions != "keep":
            log.info("%s: expired_partitions %s is not used with children: archive (a partition detached whole would"
                     " leave its children's rows behind); its rows are archived row by row",
                     self.result.name, self.opts.expired_partitions, extra=self.ctx)
            return
        super()._retire_partitions(oid)

    # -- reading, encoding, storing ------------------------------------------------------------
    def _read(self, sel: Selection, stop: Any, start_after: Any = None) -> Any:
        """In the reader thread: each batch with its children's rows (same ADBC session)."""
        all_text = self.opts.format == "jsonl"
        for batch in super()._read(sel, stop, start_after):
            children = (family_move.export_children(self.source, self.family, batch.rows, sel.schema, all_text=all_text)
                        if self.family.children else [])
            yield FamilyBatch(**{f.name: getattr(batch, f.name) for f in fields(Batch)}, children=children)

    def _encode(self, batch: Batch) -> Encoded:
        enc = super()._encode(batch)
        exported = batch.children if isinstance(batch, FamilyBatch) else []
        self._parts[enc.manifest.key] = family_move.encode_children(
            exported, root=enc.manifest, day=batch.day, prefix=self.cfg.s3.prefix, database=self.db.name,
            opts=self.opts, family=self.family)
        return enc

    def _upload(self, manifest: Manifest, data: bytes) -> str:
        location = self.sink.put(manifest, data)
        for part in self._parts.get(manifest.key, []):
            part.location = self.sink.put(part.manifest, part.data)
        return location

    def _begin(self, new: Sequence[Encoded]) -> None:
        for enc in new:
            for part in self._parts.get(enc.manifest.key, []):
                self._digest_of(part.child).note([part.manifest.key])
        super()._begin(new)

    # -- the move ------------------------------------------------------------------------------
    def _finish_group(self, group: list[Stored]) -> None:
        """Batch by batch: each family's move is one transaction of its own."""
        for enc, location in group:
            self._finish_family(enc, location)

    def _finish_family(self, enc: Encoded, location: str) -> None:
        m = enc.manifest
        parts = self._parts.get(m.key, [])
        for attempt in range(DELETE_ATTEMPTS):
            try:
                why = self._delete_family(enc, parts)
                break
            except family_move.LockTimeout:
                if attempt == DELETE_ATTEMPTS - 1:
                    raise
                log.warning("the move of %s with its children hit a lock timeout; retrying in %ds", m.key, 2 ** attempt,
                            extra=self.ctx)
                time.sleep(2 ** attempt)
        if why is not None:
            self.mover.rollback()
            if family_move.kept_by_database(self.conn, self.family, self.sel, enc, parts, self.schemas):
                raise DeletesRefused(
                    f"{self.result.name}: the move of {m.key} with its children came short ({why}), though no row of"
                    " the family changed since the export: a BEFORE DELETE trigger that returns NULL or a row-level"
                    " security policy keeps rows (of the table or a child); the batches stored and not yet deleted"
                    " were taken back, their rows stay in the tables")
            self.sink.take_back(m, location, recorded=False)
            for part in parts:
                self.sink.take_back(part.manifest, part.location, recorded=False)
            self.ledger.call_off(m)
            self.result.rolled_back_batches += 1
            self.observer.batch_failed(self.result, kind="conflict")
            log.warning("batch %s and its children's objects rolled back (%s): rows changed or gained references since"
                        " export; they will be archived on a later run",
                        m.key, why, extra=self.ctx)
            return
        self._commit([(enc, location)])

    def _delete_family(self, enc: Encoded, parts: list[ChildPart]) -> str | None:
        """Lock, then delete the children's rows and the table's (the transaction stays open);
        None when every count agrees, else why not."""
        m = enc.manifest
        family_move.lock_root(self.conn, self.sel, enc)
        why = family_move.delete_children(self.conn, self.family, parts, self.schemas, m.key)
        if why is None:
            deleted = self.delete_mover.delete_batch(enc)
            if deleted != m.rows:
                why = f"{self.result.name}: {max(deleted, 0)} of its {m.rows} exported rows deleted"
        return why

    def _to_record(self, group: list[Stored]) -> list[tuple[Manifest, str]]:
        out = super()._to_record(group)
        for enc, _location in group:
            out += [(p.manifest, p.location) for p in self._parts.get(enc.manifest.key, [])]
        return out

    def _done(self, enc: Encoded, location: str) -> None:
        parts = self._parts.get(enc.manifest.key, [])
        super()._done(enc, location)  # the ledger forgets the batch and its parts
        for part in parts:
            self._digest_of(part.child).done(part.manifest)
            moved = self._moved.setdefault(part.child.name, [0, 0])
            moved[0] += part.rows
            moved[1] += 1

    def _register_iceberg(self) -> None:
        """The table's Iceberg table, then each child's (its own, unpartitioned: the objects are
        cut by their parents' days). Every child, not only those this run moved rows of: a sync
        with nothing new is one listing, and it registers what an interrupted run left."""
        super()._register_iceberg()
        if not iceberg.enabled(self.cfg) or self.sink.s3_down:
            return
        for child in self.family.children:
            iceberg.after_change(self.cfg, self.sink.primary, self.db.name, child.schema, child.table)

    # -- the end of the run -------------------------------------------------------------------
    def _digest_of(self, child: Child) -> RunDigest:
        ident = (child.schema, child.table)
        if ident not in self._digests:
            self._digests[ident] = RunDigest(
                self._checkpoints.path(self.db.name, child.schema, child.table).with_suffix(".undigested"),
                prefix=self.cfg.s3.prefix, database=self.db.name, schema=child.schema, table=child.table,
                key_secret=digest_secret(self.cfg))
        return self._digests[ident]

    def _write_digest(self) -> None:
        super()._write_digest()
        for name, (rows, objects) in sorted(self._moved.items()):
            note = f"child {name}: {rows} rows archived in {objects} objects"
            self.result.notes.append(note)
            log.info("%s", note, extra=self.ctx)
        for child in self.family.children:  # a crashed run's journal waits for a digest too
            if self._checkpoints.path(self.db.name, child.schema, child.table).with_suffix(".undigested").exists():
                self._digest_of(child)
        if self.sink.s3_down or not self._digests:
            return
        stores = [s for s in (self.sink.primary, self.sink.fallback) if s is not None]
        pending = self.fledger.child_keys()
        for (schema, table), run_digest in self._digests.items():
            try:
                run_digest.write(stores, pending=pending)
            except Exception as exc:  # noqa: BLE001 - the moves are done; only their digest waits
                log.warning("digest of %s.%s not written (%s); the next run's digest records these objects",
                            schema, table, exc, extra=self.ctx)
