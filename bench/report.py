"""Results of each part, the printed table and the JSON file."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RSS_TARGET_MB = 300.0


@dataclass
class PartResult:
    name: str
    target_ratio: float | None  # None: the issue sets none (printed as `-`, no verdict)
    status: str = "ok"  # ok | failed | skipped
    note: str = ""
    rows: int = 0
    baseline_seconds: float | None = None
    tool_seconds: float | None = None
    peak_rss_mb: float | None = None
    baseline_stages: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline_seconds and self.tool_seconds is not None:
            return self.tool_seconds / self.baseline_seconds
        return None

    @property
    def rows_per_second(self) -> float | None:
        return self.rows / self.tool_seconds if self.tool_seconds else None

    @property
    def ratio_ok(self) -> bool | None:
        if self.ratio is None or self.target_ratio is None:
            return None
        return self.ratio <= self.target_ratio

    def fail(self, problem: str) -> None:
        self.status = "failed"
        self.problems.append(problem)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.update(ratio=self.ratio, rows_per_second=self.rows_per_second, ratio_ok=self.ratio_ok,
                   rss_ok=None if self.peak_rss_mb is None else self.peak_rss_mb < RSS_TARGET_MB)
        return doc


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else (" ok" if ok else " MISS")


def table(parts: list[PartResult]) -> str:
    head = f"{'part':<22} {'baseline s':>10} {'tool s':>8} {'ratio':>12} {'target':>7} {'peak RSS MB':>15} {'rows/s':>9}  status"
    lines = [head, "-" * len(head)]
    for p in parts:
        if p.status == "skipped":
            lines.append(f"{p.name:<22} skipped: {p.note}")
            continue
        ratio = _num(p.ratio, ".2f") + "x" + _verdict(p.ratio_ok)
        target = "-" if p.target_ratio is None else f"{p.target_ratio:.2f}x"
        rss = _num(p.peak_rss_mb, ".0f") + _verdict(None if p.peak_rss_mb is None else p.peak_rss_mb < RSS_TARGET_MB)
        status = p.status + (f" ({'; '.join(p.problems)})" if p.problems else "")
        lines.append(f"{p.name:<22} {_num(p.baseline_seconds, '.1f'):>10} {_num(p.tool_seconds, '.1f'):>8} "
                     f"{ratio:>12} {target:>7} {rss:>15} {_num(p.rows_per_second, ',.0f'):>9}  {status}")
    return "\n".join(lines)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


#: Rows of the server-cost table: (part name, side in its extra["server"], label).
SERVER_SIDES = (("archive", "baseline", "baseline: copy|zstd, range deletes"),
                ("archive", "archiver", "archiver, plain table (row deletes)"),
                ("archive (drop leaves)", "archiver_drop", "archiver, partitioned (drop)"))


def server_table(parts: list[PartResult]) -> str:
    """WAL, dead tuples and server CPU of each archive phase (bench/pgstats.py says what is counted)."""
    by_name = {p.name: p for p in parts}
    head = f"{'phase':<37} {'WAL MB':>8} {'WAL B/row':>10} {'dead/row':>9} {'server CPU s':>13} {'CPU us/row':>11}"
    lines = [head, "-" * len(head)]
    for name, side, label in SERVER_SIDES:
        cost = by_name[name].extra.get("server", {}).get(side) if name in by_name else None
        if cost is None:
            continue
        lines.append(f"{label:<37} {cost['wal_bytes'] / 1e6:>8.1f} {cost['wal_bytes_per_row']:>10.1f} "
                     f"{cost['dead_tuples_per_row']:>9.3f} {_num(cost['cpu_seconds'], '.2f'):>13} "
                     f"{_num(cost['server_cpu_us_per_row'], '.1f'):>11}")
    return "\n".join(lines) if len(lines) > 2 else ""
