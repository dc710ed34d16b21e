"""Which legal holds hold an archived object (issue 29): the one judgement `hold`, `expire`, `erase`
and the archiver's uploads share.

An object is held by a hold that listed it when placed, by a whole-table hold, by a dates hold
whose days include the object's UTC day, and by a --where hold when one of its rows matches the
condition (query's engine, common/archive_sql.py). The scope decides, not the list: an object
written after the hold, or replacing a held one after an erasure, is held as well. An object whose
rows cannot be read (an archive storage class not restored) counts as held by every --where hold:
a hold that cannot be ruled out is kept."""
from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import date

from common.archive_sql import Engine, Query, union_schema
from common.arrow_types import exceptions_of
from common import batch_writer
from common.archive import layout
from common.archive.catalog import ArchiveObject, Catalog
from common.lifecycle.holds import Hold, active
from common.lifecycle.legal_hold import set_on
from common.archive.manifest import Manifest
from common.archive.storage import S3Storage

log = logging.getLogger("holds")


def engine(hold: Hold, objects: Sequence[ArchiveObject], *, timestamp_column: str = "",
           key_columns: tuple[str, ...] = ()) -> Engine:
    """A DuckDB session judging the hold's --where over these objects' schema."""
    first = next((o.manifest for o in objects if o.manifest), None)
    ts = first.timestamp_column if first else timestamp_column
    keys = tuple(first.key_columns) if first else key_columns
    return Engine(Query(where=hold.where, columns=(), timestamp_column=ts, key_columns=keys),
                  union_schema([o for o in objects if o.manifest]))


def rows_match(hold: Hold, obj: ArchiveObject, rows: object, doc: dict[str, object]) -> bool:
    with engine(hold, [obj]) as e:
        mask = e.matching(rows, exceptions_of(doc))  # type: ignore[arg-type]
        return bool(mask.true_count)


def matches(catalog: Catalog, hold: Hold, obj: ArchiveObject) -> bool:
    """Whether a row of the object matches the hold's --where (read and verified first)."""
    if obj.needs_s3_restore or obj.manifest is None:
        return True
    with engine(hold, [obj]) as e:
        rows, doc = e.read(catalog, obj)
        return bool(e.matching(rows, exceptions_of(doc)).true_count)


def covers(catalog: Catalog, hold: Hold, obj: ArchiveObject) -> bool:
    """Whether the object is in the hold's scope (active or not), cheapest judgement first."""
    return obj.key in hold.objects or hold.covers_day(obj.day) or (hold.scope == "where" and matches(catalog, hold, obj))


def holding(catalog: Catalog, holds: Sequence[Hold], obj: ArchiveObject) -> list[Hold]:
    """The active holds that hold this object."""
    return [h for h in holds if h.active and covers(catalog, h, obj)]


def holding_batch(holds: Sequence[Hold], manifest: Manifest, data: bytes, day: date) -> list[Hold]:
    """The active holds that hold a batch about to be archived (the archiver's upload path), its
    rows judged from the bytes in hand: no read back from S3."""
    found = [h for h in holds if h.active and h.covers_day(day)]
    where = [h for h in holds if h.active and h.scope == "where"]
    if where:
        obj = ArchiveObject(manifest.key, day, "s3", manifest.size, "STANDARD", manifest)
        rows, _schema, _enc, doc = batch_writer.decode(data, fmt=batch_writer.format_of(manifest.key))
        found += [h for h in where if rows_match(h, obj, rows, doc)]
    return found


class UploadHolds:
    """The archiver's upload path on a bucket with Object Lock (s3.object_lock): an object written
    into the scope of a hold in force gets S3's legal hold at once, before its manifest makes it
    count. The table's holds are read once per run (one listing), when its first object is stored:
    `hold` takes the table's advisory lock, so no hold is placed while a run archives the table.
    Without Object Lock there is no flag to set: the hold records hold it (holding)."""

    def __init__(self, store: S3Storage, prefix: str) -> None:
        self.store, self.prefix = store, prefix
        self._holds: dict[tuple[str, str, str], list[Hold]] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_store(cls, store: object, prefix: str) -> UploadHolds | None:
        return cls(store, prefix) if isinstance(store, S3Storage) and store.object_lock is not None else None

    def after_put(self, manifest: Manifest, data: bytes) -> None:
        parsed = layout.parse_key(self.prefix, manifest.key)
        holds = self._table(manifest.database, manifest.schema, manifest.table)
        if parsed is None or not holds:
            return
        held = holding_batch(holds, manifest, data, parsed.day)
        if held:
            set_on(self.store, manifest.key)
            log.info("%s is written into the scope of legal hold %s: S3 legal hold ON", manifest.key,
                     ", ".join(h.hold_id for h in held))

    def _table(self, database: str, schema: str, table: str) -> list[Hold]:
        with self._lock:
            key = (database, schema, table)
            if key not in self._holds:
                self._holds[key] = active(self.store, self.prefix, database, schema, table)
            return self._holds[key]
