"""Per-table checkpoints (issue 3): which batch is in flight (uploaded or about to be, rows not yet
deleted) and how far archiving got. Written atomically: temp file, fsync, rename, fsync dir. A
corrupt file is reported and set aside, never trusted."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from common.errors import StateNotSaved
from common.files import atomic_write, replace_durable

log = logging.getLogger("archiver.checkpoint")
CHECKPOINT_VERSION = 1


class CorruptCheckpoint(Exception):
    pass


@dataclass
class Checkpoint:
    database: str
    schema: str
    table: str
    #: Manifests (as dicts) of batches written or being written whose rows may not be deleted yet.
    pending: list[dict[str, Any]] = field(default_factory=list)
    #: Last archived (timestamp, primary key), as text; used when rows are kept (delete_after_archive: false).
    position: dict[str, Any] | None = None
    updated_at: float = 0.0
    #: A whole partition being retired (archiver/partitions.py): which leaf, its bound, the mode
    #: and the step reached; its batches stay pending until the leaf is detached.
    retiring: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"version": CHECKPOINT_VERSION, "database": self.database, "schema": self.schema,
                "table": self.table, "pending": self.pending, "position": self.position,
                "updated_at": self.updated_at, "retiring": self.retiring}


#: Longest `<schema>.<table>` part of a checkpoint's file name: file systems allow 255 bytes, and
#: ".json" (5) and atomic_write's temporary ".tmp-<name>.<8>.part" (19) or ".corrupt-<time>" (19)
#: come on top. Every name up to it could always be saved, and keeps its file; a longer one never
#: could (every run failed), so it alone is shortened: no checkpoint is lost to an upgrade.
NAME_BYTES = 255 - 5 - 19
#: A database's folder, with no suffix.
FOLDER_BYTES = 255


def _short(quoted: str, *names: str, limit: int) -> str:
    """A percent-quoted name, or when longer than `limit` its start and a hash of the names:
    PostgreSQL allows 63-byte schema and table names, and quoted non-ASCII ones (three bytes per
    byte) made a file name too long for the file system, failing every run of such a table."""
    if len(quoted) <= limit:
        return quoted
    digest = hashlib.sha256("\0".join(names).encode()).hexdigest()[:32]
    return f"{quoted[:limit - 33]}~{digest}"


class CheckpointStore:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, database: str, schema: str, table: str) -> Path:
        q = lambda s: quote(s, safe="-_.")  # noqa: E731 - hostile names stay inside the directory
        folder = _short(q(database), database, limit=FOLDER_BYTES)
        return self.directory / folder / f"{_short(f'{q(schema)}.{q(table)}', schema, table, limit=NAME_BYTES)}.json"

    def load(self, database: str, schema: str, table: str) -> Checkpoint | None:
        """The saved checkpoint, None when there is none; raises CorruptCheckpoint (after moving the
        bad file aside as *.corrupt-<time>) when it cannot be trusted."""
        path = self.path(database, schema, table)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw)
            if doc.get("version") != CHECKPOINT_VERSION or (doc["database"], doc["schema"], doc["table"]) != (database, schema, table):
                raise ValueError("version or table does not match")
            if not isinstance(doc["pending"], list):
                raise ValueError("pending is not a list")
            return Checkpoint(database, schema, table, doc["pending"], doc.get("position"), float(doc.get("updated_at", 0)),
                              doc.get("retiring"))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            aside = path.with_name(path.name + f".corrupt-{int(time.time())}")
            replace_durable(path, aside)
            raise CorruptCheckpoint(f"checkpoint {path} is corrupt ({exc}); moved to {aside.name}") from None

    def save(self, cp: Checkpoint) -> None:
        path = self.path(cp.database, cp.schema, cp.table)
        cp.updated_at = time.time()
        try:
            atomic_write(path, json.dumps(cp.to_json(), default=str).encode())
        except OSError as exc:  # it counts only once on disk: the caller must not go on as if saved
            raise StateNotSaved.of("checkpoint", path, exc) from exc
