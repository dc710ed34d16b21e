"""Erasures that stopped half way (issue 17, erase/rewrite.py): the replacement and its manifest,
which names the object it replaces, are stored, and that object is still there. Restore, query and
erase already count the replacement instead of it (common/archive/catalog.py). Validate says the same, once,
as `unfinished_erasure`: before, the pair showed as `overlapping_archives`, whose repair ("remove
the other object") could remove the replacement and bring the erased rows back, the old object
as `orphaned_file` once the erasure's digest no longer recorded it, and its rows counted twice."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.archive.manifest import replaced
from validate.objects import Checked
from validate.report import Report, problem


@dataclass(frozen=True)
class _Seen:
    manifest_sha256: str | None
    replaces: dict[str, Any] | None
    rows: int
    database: str | None
    table: str | None


class Supersessions:
    """Collects, per checked object, the few fields that pair a replacement with the object it names."""

    def __init__(self) -> None:
        self._seen: dict[str, _Seen] = {}

    def add(self, c: Checked) -> None:
        self._seen[c.key] = _Seen(c.manifest_sha256, c.replaces, c.rows, c.database, c.table)

    def finish(self, report: Report) -> set[str]:
        """Report each replaced object still stored; returns their keys, which the overlap and
        digest checks leave out. Its rows are counted once, in the replacement."""
        pairs = replaced((key, s.manifest_sha256, s.replaces) for key, s in self._seen.items())
        for key, new in sorted(pairs.items()):
            seen = self._seen[key]
            report.summary.rows -= seen.rows
            if (self._seen[new].replaces or {}).get("kind") == "migrate":  # common/archive/replace.py, for --migrate-layout
                report.add(problem("unfinished_erasure", key, f"replaced by {new} (the same rows in the table's "
                                   "schema), but archiver --migrate-layout stopped before removing it (restore and "
                                   "query already count the replacement instead): run it again; do not remove "
                                   "either object by hand", database=seen.database, table=seen.table, repair=False))
                continue
            report.add(problem("unfinished_erasure", key, f"replaced by {new}, but an erasure stopped before "
                               "removing it (restore and query already count the replacement instead)",
                               database=seen.database, table=seen.table))
        return set(pairs)
