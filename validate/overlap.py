"""overlapping_archives: the same primary key in two objects of one table. Each object's pk range is
kept (a few dozen bytes per object, never its keys); only objects whose ranges overlap have their
key sets compared, so a healthy archive of sequential keys costs no second download."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from validate.keys import key_label
from validate.objects import Checked
from validate.report import Problem, problem

#: Above this many rows in one group of mutually overlapping objects (random keys such as UUIDs make
#: every range overlap) the key sets are not compared, to keep memory bounded; the run says so.
MAX_GROUP_ROWS = 5_000_000
#: Findings after which an object's manifest or keys are not trusted for the comparison.
_BROKEN = {"checksum_mismatch", "size_mismatch", "missing_object", "unreadable_archive"}


@dataclass(frozen=True)
class Span:
    database: str | None
    table: str | None
    key: str
    lo: Any
    hi: Any
    rows: int
    sha256: str
    pk: tuple[str, ...]  # the key's columns (validate/keys.py)


class OverlapFinder:
    def __init__(self, *, max_group_rows: int = MAX_GROUP_ROWS) -> None:
        self.max_group_rows = max_group_rows
        self.spans: dict[tuple[str | None, str | None], list[Span]] = {}
        self.notes: list[str] = []

    def add(self, c: Checked) -> None:
        """Remember an object that passed its own checks (its manifest is trusted from here on)."""
        m = c.manifest
        if m is None or m.rows == 0 or any(p.type in _BROKEN for p in c.problems):
            return
        lo, hi = c.interval if c.interval is not None else (None, None)
        self.spans.setdefault((c.database, c.table), []).append(
            Span(c.database, c.table, c.key, lo, hi, m.rows, m.sha256, tuple(m.key_columns)))

    def discard(self, keys: set[str]) -> None:
        """Forget these objects (replaced by an erasure: validate/erasures.py), before any comparison."""
        if keys:
            self.spans = {t: [s for s in spans if s.key not in keys] for t, spans in self.spans.items()}

    def identical(self) -> Iterator[Problem]:
        """Byte-identical copies of one object under two keys (needs no download: same sha256)."""
        for spans in self.spans.values():
            first: dict[str, Span] = {}
            for s in sorted(spans, key=lambda s: s.key):
                if s.sha256 in first:
                    yield _overlap(s, first[s.sha256], "is a byte-identical copy of")
                else:
                    first[s.sha256] = s

    def groups(self) -> Iterator[list[Span]]:
        """Groups (of two or more objects) whose pk ranges chain into each other."""
        for (database, table), spans in self.spans.items():
            ranged = [s for s in spans if s.lo is not None]
            try:
                ranged.sort(key=lambda s: (s.lo, s.hi, s.key))
            except TypeError:  # keys of different types in one table: compare them as text
                ranged = [Span(**{**s.__dict__, "lo": str(s.lo), "hi": str(s.hi)}) for s in ranged]
                ranged.sort(key=lambda s: (s.lo, s.hi, s.key))
            group: list[Span] = []
            top: Any = None
            for s in ranged:
                if group and s.lo <= top:
                    group.append(s)
                    top = max(top, s.hi)
                    continue
                yield from self._worth_comparing(group, database, table)
                group, top = [s], s.hi
            yield from self._worth_comparing(group, database, table)

    def _worth_comparing(self, group: list[Span], database: str | None, table: str | None) -> Iterator[list[Span]]:
        if len(group) < 2:
            return
        rows = sum(s.rows for s in group)
        if rows > self.max_group_rows:
            self.notes.append(f"{database} {table}: {len(group)} objects with overlapping key ranges hold {rows} rows, "
                              f"more than {self.max_group_rows}; their keys were not compared")
            return
        yield group


def shared_keys(group: list[Span], keys_of: Callable[[Span], pa.Array | pa.ChunkedArray]) -> list[Problem]:
    """Compare the key sets of one group: one problem per pair of objects that share keys."""
    arrays = [_comparable(keys_of(s)) for s in group]
    if len({a.type for a in arrays}) > 1:
        arrays = [pc.cast(a, pa.string()) for a in arrays]
    owners = pa.chunked_array([pa.repeat(pa.scalar(i, pa.int32()), len(a)) for i, a in enumerate(arrays)])
    table = pa.table({"pk": pa.chunked_array([c for a in arrays for c in a.chunks], arrays[0].type), "obj": owners})
    per_key = table.group_by("pk").aggregate([("obj", "distinct")])
    dup = per_key.filter(pc.greater(pc.list_value_length(per_key.column("obj_distinct")), 1))
    pairs: Counter[tuple[int, int]] = Counter()
    example: dict[tuple[int, int], Any] = {}
    for pk, objs in zip(dup.column("pk").to_pylist(), dup.column("obj_distinct").to_pylist()):
        objs = sorted(objs)
        for pair in zip(objs, objs[1:]):
            pairs[pair] += 1
            example.setdefault(pair, pk)
    return [_overlap(group[j], group[i], f"shares {n} primary keys (e.g. {key_label(group[j].pk)}={example[(i, j)]}) with")
            for (i, j), n in sorted(pairs.items())]


def _comparable(keys: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    chunked = keys if isinstance(keys, pa.ChunkedArray) else pa.chunked_array([keys])
    if pa.types.is_string(chunked.type):
        try:  # integer keys stored as text (the JSONL format) compare as numbers
            return pc.cast(chunked, pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return chunked
    return chunked


def _overlap(s: Span, other: Span, how: str) -> Problem:
    return problem("overlapping_archives", s.key, f"{how} {other.key}", database=s.database, table=s.table)
