"""Picking up interrupted work (issue 3): batches a checkpoint names as in flight are either
finished (object verified and its rows already deleted) or taken back (object missing, incomplete,
or its rows still in the table: the rows get archived again, by the normal path).

A resumed batch's rows are never deleted here: the checkpoint does not hold the exported rows'
xmins, so a row updated between the export and the rerun could not be told apart, and deleting
it would lose the update. Archiving the batch again costs one upload. A corrupt checkpoint is set
aside and the table's manifests are scanned instead, so an unfinished move is never forgotten."""
from __future__ import annotations

import logging
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from archiver.encoding import iso, jsonable, typed_column
from archiver.selection import Bound
from common import batch_writer, layout
from archiver.checkpoint import Checkpoint, CorruptCheckpoint
from common.errors import DataIntegrityError
from common.manifest import Manifest, sha256_hex

if TYPE_CHECKING:
    from archiver.table_job import TableJob

log = logging.getLogger("archiver")


def load_checkpoint(job: TableJob) -> Checkpoint:
    try:
        cp = job.checkpoints.load(job.db.name, job.t.schema_, job.t.name)
    except CorruptCheckpoint as exc:
        log.error("%s; scanning this table's archives for unfinished moves", exc, extra=job.ctx)
        cp = Checkpoint(job.db.name, job.t.schema_, job.t.name)
        cp.pending = sorted(_scan_manifests(job), key=lambda m: (m["max_ts"], str(m["max_pk"])))
    return cp or Checkpoint(job.db.name, job.t.schema_, job.t.name)


def _scan_manifests(job: TableJob) -> list[dict[str, Any]]:
    """All manifests of this table (after a corrupt checkpoint): each is finished like an
    interrupted batch, which deletes whatever of its rows is still in the table."""
    prefix = layout.table_prefix(job.cfg.s3.prefix, job.db.name, job.t.schema_, job.t.name)
    found = []
    for store in (job.sink.primary, job.sink.fallback):
        if store is None:
            continue
        for info in store.list(prefix):
            if layout.is_manifest(info.key):
                m = Manifest.from_bytes(store.get(info.key), key=info.key)
                found.append(asdict(m))
    return found


def position_after(hi: Bound) -> dict[str, Any]:
    """Where a run that keeps its rows (delete_after_archive: false) continues after a batch: its
    last row's (timestamp, pk), or the next day's start with no key after a whole day. Not the
    manifest's max_ts and max_pk, which may come from two different rows."""
    return {"ts": iso(hi[0]), "pk": jsonable(hi[1])}


def finish_pending(job: TableJob, cp: Checkpoint) -> None:
    if not cp.pending:
        if cp.position and not job.opts.delete_after_archive:
            log.info("Resuming from checkpoint: %s after position %s", job.result.name, cp.position, extra=job.ctx)
        return
    for entry in list(cp.pending):
        manifest = Manifest(**{k: v for k, v in entry.items() if k in Manifest.__dataclass_fields__})
        log.info("Resuming from checkpoint: %s position %s, interrupted batch %s", job.result.name,
                 cp.position or "start", manifest.key, extra=job.ctx)
        _finish_interrupted(job, manifest)
        cp.pending.remove(entry)
        if not job.opts.delete_after_archive:
            cp.position = entry.get("position_after") or {"ts": manifest.max_ts, "pk": manifest.max_pk}
        job.checkpoints.save(cp)
        job.result.resumed += 1


def _finish_interrupted(job: TableJob, m: Manifest) -> None:
    for store in (job.sink.primary, job.sink.fallback):
        if store is None or store.head(m.key) is None:
            continue
        data = store.get(m.key)
        try:
            m.check(data)
        except DataIntegrityError as exc:
            log.warning("interrupted upload %s is incomplete (%s); removed, its rows stay in the table", m.key, exc, extra=job.ctx)
            job.sink.remove(m.key, store.location)
            continue
        if job.opts.delete_after_archive and (present := _rows_present(job, data, m)):
            job.sink.withdraw(m.key, store.location)
            log.info("interrupted move of %s taken back: %d of its %d rows are still in the table and will be archived again",
                     m.key, present, m.rows, extra=job.ctx)
            return
        if store.head(layout.manifest_key(m.key)) is None:
            mb = m.to_bytes()
            store.put(layout.manifest_key(m.key), mb, sha256=sha256_hex(mb))
        if job.opts.delete_after_archive:
            log.info("finished the interrupted move of %s: its %d rows were already deleted", m.key, m.rows, extra=job.ctx)
        return
    log.info("interrupted batch %s never reached storage; its rows stay in the table and will be archived again", m.key, extra=job.ctx)


def _rows_present(job: TableJob, data: bytes, m: Manifest) -> int:
    """How many of a stored batch's rows are still in the table. Our delete of a batch is one
    transaction, so it is all or none; some gone means the application deleted them since."""
    table = batch_writer.decode(data, fmt=m.format, columns=[job.t.primary_key])[0]
    # typed: JSONL keeps keys as text
    pks = typed_column(table, job.t.primary_key, job.sel).to_pylist()
    row = job.conn.execute(job.sel.present_query(pks).as_bytes(job.conn), prepare=False).fetchone()
    job.conn.commit()
    return int(row[0]) if row else 0
