"""What a validation run found: problems (type, key, where, a message that suggests the repair) and a
summary, rendered as greppable text lines or one JSON document (issue 5)."""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from common.jsonout import render_json
from common.units import human_bytes

#: The problem types of issue 5, in the order a reader cares about them; the value is the repair
#: every message of that type ends with.
PROBLEM_TYPES: dict[str, str] = {
    "checksum_mismatch": "the stored object is corrupt: restore it from a bucket version or backup if one exists; "
                         "its rows are otherwise lost",
    "size_mismatch": "the stored object is truncated or replaced: restore it from a bucket version or backup",
    "missing_object": "the data object is gone: restore it from a bucket version or backup; until then its rows "
                      "cannot be restored",
    "unreadable_archive": "the object matches its manifest but is not a valid archive: keep it and report an "
                          "archiver bug; restore cannot read it",
    "row_count_mismatch": "the manifest and the object disagree: check the object with restore --dry-run before "
                          "trusting either",
    "partition_mismatch": "queries by year=/month=/day= will miss these rows: move the object to its true partition "
                          "(with its manifest)",
    "overlapping_archives": "a restore would bring these rows back twice: keep one copy and remove the other object "
                            "with its manifest after comparing them",
    "unfinished_erasure": "run erase again on this table (the same --where will do; its --dry-run says how many "
                          "interrupted erasures it would finish): it records the erasure and removes the replaced "
                          "object; do not remove either object by hand",
    "rows_still_in_database": "rerun the archiver to finish the move (if the rows were restored on purpose, "
                              "nothing is wrong)",
    "orphaned_file": "a file without a manifest is not an archive: if it is an interrupted upload, rerun the "
                     "archiver (it resumes from its checkpoint), otherwise remove the file",
    "pending_fallback": "run the archiver with S3 reachable: it uploads pending fallback batches first",
    "object_lock_missing": "the object can be deleted or overwritten before its retention ends: set its retention "
                           "(aws s3api put-object-retention) to the configured mode and date",
    "digest_mismatch": "the object and its manifest were rewritten after the digest recorded them: treat the "
                       "object as tampered evidence; restore the recorded version from a bucket version or backup",
    "digest_chain_broken": "an object or digest the chain records is gone or altered: treat the archive as "
                           "tampered; find the missing version (bucket versions, backups) before trusting it",
    "mixed_schema": "restore, query and erase read it as it is; `archiver --migrate-layout` rewrites it in the "
                    "table's one schema, so that engines reading the table's folder (Spark, Polars) read it too",
    "legacy_layout": "run python -m archiver.main --config <config> --migrate-layout (it moves them to the "
                     "table's control folder, verified; --dry-run shows what it would move)",
    "orphaned_child": "restore the parent rows first (restore --with-children on the parent table, or restore "
                      "the parent's objects), or erase these rows too if the parent was erased on purpose",
    "incomplete_upload": "abort it (aws s3api abort-multipart-upload) or add a lifecycle rule that aborts "
                         "incomplete multipart uploads",
    "iceberg_missing_file": "run the archiver (its every run brings the table's Iceberg table in line with the "
                            "archive); engines reading the Iceberg table miss these rows until then",
    "iceberg_extra_file": "run the archiver (it removes what does not count from the Iceberg table); never compact "
                          "or rewrite that table with an engine: it registers the archive's own objects",
    "iceberg_unreadable": "check the iceberg: catalog settings and that the catalog is reachable; the archive "
                          "itself is not affected",
}


@dataclass(frozen=True)
class Problem:
    type: str
    key: str
    database: str | None
    table: str | None
    message: str

    def __post_init__(self) -> None:
        if self.type not in PROBLEM_TYPES:
            raise ValueError(f"unknown problem type {self.type!r}")


def problem(kind: str, key: str, what: str, *, database: str | None = None, table: str | None = None,
            repair: bool = True) -> Problem:
    """A problem whose message is `what` followed by the type's repair suggestion."""
    message = f"{what}: {PROBLEM_TYPES[kind]}" if repair else what
    return Problem(kind, key, database, table, message)


@dataclass
class Summary:
    objects: int = 0
    rows: int = 0
    bytes: int = 0
    seconds: float = 0.0


@dataclass
class Report:
    summary: Summary = field(default_factory=Summary)
    problems: list[Problem] = field(default_factory=list)
    #: Things the run could not check, said once each (e.g. the database check skipped by --quick);
    #: logged to stderr, never part of the report document on stdout.
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, p: Problem) -> None:
        self.problems.append(p)

    def sort(self) -> None:
        order = {k: i for i, k in enumerate(PROBLEM_TYPES)}
        self.problems.sort(key=lambda p: (order[p.type], p.key))

    def counts(self) -> Counter[str]:
        return Counter(p.type for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        s = self.summary
        return {
            "ok": self.ok,
            "summary": {"objects": s.objects, "rows": s.rows, "bytes": s.bytes, "seconds": round(s.seconds, 3)},
            "problems": [asdict(p) for p in self.problems],
        }

    def to_json(self) -> str:
        return render_json(self.to_dict())

    def text_lines(self) -> list[str]:
        """One line per problem, starting with its type so `grep -i orphaned` finds it, then the summary."""
        lines = [f"{p.type}: {p.key}{_where(p)}: {p.message}" for p in self.problems]
        lines.append(self.summary_line())
        return lines

    def summary_line(self) -> str:
        s = self.summary
        head = f"summary: {s.objects} objects, {s.rows} rows, {human_bytes(s.bytes)} checked in {s.seconds:.1f}s"
        # No problem type words here: `grep -i orphaned` must match problem lines only.
        return f"{head}: OK, no problems found" if self.ok else f"{head}: {len(self.problems)} problems found"


def _where(p: Problem) -> str:
    if p.database and p.table:
        return f" [{p.database} {p.table}]"
    return f" [{p.database}]" if p.database else ""
