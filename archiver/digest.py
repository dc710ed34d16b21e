"""The table job's run digest (issue 17, common/archive/digest.py): at the end of each table's run, one
digest listing every object whose move finished, chained to the table's previous digest.

Crash safety: every batch is written to a small journal beside the table's checkpoint before its
upload starts (`<checkpoint>.undigested`, appended and fsynced), and the journal is emptied only
once a digest has been stored. A run killed before its digest therefore leaves the journal; the
next run's digest covers those objects too (its recovery has by then finished or taken back each
interrupted move). Each journal key still pending in the checkpoint waits for the run that
finishes its move; one whose object and manifest are stored and not withdrawn was archived and is
covered; one with neither was called off and is dropped. Until that next run, validate reports
the objects newer than the last digest as not yet covered, never as orphans."""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from common.archive import digest
from common.errors import StateNotSaved
from common.files import append_durable, fsync_dir
from common.archive.manifest import Manifest
from common.archive.storage import Storage
from common.archive.table_index import list_table, load_index

log = logging.getLogger("archiver")


class RunDigest:
    def __init__(self, journal: Path, *, prefix: str, database: str, schema: str, table: str,
                 key_secret: bytes | None) -> None:
        self.journal = journal
        self.prefix, self.database, self.schema, self.table = prefix, database, schema, table
        self.key_secret = key_secret
        self.entries: dict[str, digest.DigestEntry] = {}  # moves finished in this run
        self.ctx = {"database": database, "table": f"{schema}.{table}"}

    # -- while the run goes --------------------------------------------------------------------
    def note(self, keys: Iterable[str]) -> None:
        """Before these batches' uploads start: journaled, so a crash cannot hide them."""
        lines = "".join(json.dumps({"key": k}) + "\n" for k in keys)
        try:
            append_durable(self.journal, lines.encode())
        except OSError as exc:  # unjournaled, an upload could be missing from every digest
            raise StateNotSaved.of("digest journal", self.journal, exc) from exc

    def done(self, manifest: Manifest) -> None:
        self.entries[manifest.key] = digest.DigestEntry.of(manifest)

    # -- at the end ----------------------------------------------------------------------------
    def write(self, stores: list[Storage], *, pending: set[str]) -> str | None:
        """Store the digest of this run (and of earlier journaled moves since finished); returns its
        key, None when there was nothing to record. An error propagates: the journal stays."""
        journaled = self._journaled()
        chain_head = digest.head(stores[0], self.prefix, self.database, self.schema, self.table)
        covered = {e.key: e.manifest_sha256 for e in chain_head.digest.objects} if chain_head else {}
        entries = dict(self.entries)
        entries.update(self._stored_entries(stores, journaled - set(entries) - pending))
        entries = {k: e for k, e in entries.items() if covered.get(k) != e.manifest_sha256}
        written: str | None = None
        waiting = sorted(journaled & pending)
        if entries or waiting:
            written = digest.write(stores[0], prefix=self.prefix, database=self.database, schema=self.schema,
                               table=self.table, objects=[entries[k] for k in sorted(entries)], pending=waiting,
                               key_secret=self.key_secret, previous=chain_head)
            log.info("digest %s records %d objects (chained to %s)", written, len(entries),
                     chain_head.key if chain_head else "none: the first digest", extra=self.ctx)
        self._keep(journaled & pending)
        return written

    def _journaled(self) -> set[str]:
        try:
            text = self.journal.read_text(encoding="utf-8")
        except FileNotFoundError:
            return set()
        keys = set()
        for line in text.splitlines():
            try:
                keys.add(str(json.loads(line)["key"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a crash mid-append: its upload had not started
        return keys

    def _keep(self, keys: set[str]) -> None:
        """Only the moves still pending stay journaled, for the run that finishes them."""
        if not keys:
            self.journal.unlink(missing_ok=True)
            return
        # Not atomic_write: its temp name is longer than this one, and the longest journal names
        # (archiver/checkpoint.py: NAME_BYTES) would not fit the file system's 255 bytes.
        tmp = self.journal.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write("".join(json.dumps({"key": k}) + "\n" for k in sorted(keys)).encode())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.journal)
        fsync_dir(self.journal.parent)


    def _stored_entries(self, stores: list[Storage], keys: set[str]) -> dict[str, digest.DigestEntry]:
        """The entries of objects archived by an earlier, interrupted run: recorded in a manifest set
        and not withdrawn (the first store that has it). A move called off has none."""
        found: dict[str, digest.DigestEntry] = {}
        for store in stores:
            if not keys - set(found):
                break
            index = load_index(store, list_table(store, self.prefix, self.database, self.schema, self.table))
            for key in sorted(keys - set(found)):
                r = index.current(key)
                if r is not None:
                    found[key] = digest.DigestEntry(key, r.manifest.sha256, r.manifest.size, r.manifest.rows, r.sha256)
        return found
