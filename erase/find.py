"""Which archived objects hold rows matching the erasure's --where: the query tool's engine and
pruning (common/archive_sql.py, common/archive_plan.py), judged one object at a time."""
from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from common.archive_plan import plan
from common.archive_sql import Engine, Query, union_schema
from common.archive.catalog import ArchiveObject, Catalog, TableRef
from common.arrow_types import exceptions_of


@dataclass
class Match:
    obj: ArchiveObject
    rows: int
    matching: int


@dataclass
class Found:
    matches: list[Match] = field(default_factory=list)
    unreadable: list[ArchiveObject] = field(default_factory=list)  # GLACIER / DEEP_ARCHIVE, not restored
    #: (replaced, replacement) pairs an interrupted erase left: the replacement counts, the old goes.
    interrupted: list[tuple[ArchiveObject, ArchiveObject]] = field(default_factory=list)
    objects: int = 0

    @property
    def rows(self) -> int:
        return sum(m.matching for m in self.matches)


def engine_for(ref: TableRef, where: str, objects: list[ArchiveObject]) -> Engine:
    first = next((o.manifest for o in objects if o.manifest), None)
    ts = first.timestamp_column if first else (ref.timestamp_column or "")
    keys = tuple(first.key_columns) if first else tuple(ref.primary_key or ())
    return Engine(Query(where=where, columns=(), timestamp_column=ts, key_columns=keys),
                  union_schema([o for o in objects if o.manifest]))


def find(catalog: Catalog, ref: TableRef, where: str) -> tuple[Found, Engine | None]:
    """The matching objects (the engine stays open for the rewrite; the caller closes it)."""
    work = plan(catalog, ref, start=None, end=None)
    found = Found(unreadable=list(work.unreadable), interrupted=list(catalog.superseded))
    objects = [o for g in work.groups for o in g.objects]
    found.objects = len(objects)
    described = objects + [o for o in work.unreadable if o.manifest]
    if not described:
        return found, None
    engine = engine_for(ref, where, described)
    try:
        engine.check()  # a bad --where is a usage error before anything is downloaded
        for obj in objects:
            rows, doc = engine.read(catalog, obj)
            n = count(engine.matching(rows, exceptions_of(doc)))
            if n:
                found.matches.append(Match(obj, obj.rows or 0, n))
    except BaseException:
        engine.__exit__(None, None, None)
        raise
    return found, engine


def count(mask: pa.Array) -> int:
    return int(pc.sum(mask).as_py() or 0)
