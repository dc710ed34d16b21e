"""`validate --textfile PATH` (issue 18): the run's problem counts as a node_exporter textfile, so
Prometheus can alert on what validate finds (deploy/prometheus/alerts.yml). Written atomically
(node_exporter never reads half a file) and only when validate completed: a run that could not
check (exit 2/3) leaves the last file, whose timestamp then grows old (ValidateNotCompleting)."""
from __future__ import annotations

import os
import time

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from common.files import atomic_write
from validate.report import PROBLEM_TYPES, Report

PROBLEMS = "archiver_validate_problems"


def render(report: Report, *, quick: bool, now: float | None = None) -> bytes:
    r = CollectorRegistry()
    problems = Gauge(PROBLEMS, "Problems the last completed validate run found, by type (0: none)", ("type",), registry=r)
    counts = report.counts()
    for kind in PROBLEM_TYPES:  # every type, 0 included: an alert must see a count fall back to 0
        problems.labels(kind).set(counts.get(kind, 0))
    Gauge("archiver_validate_objects_checked", "Archive objects the last completed validate run checked",
          registry=r).set(report.summary.objects)
    Gauge("archiver_validate_quick", "1 if the last completed validate run was --quick (no downloads, no database check)",
          registry=r).set(1 if quick else 0)
    Gauge("archiver_validate_last_run_timestamp_seconds", "Unix time the last validate run completed",
          registry=r).set(time.time() if now is None else now)
    return generate_latest(r)


def write_textfile(path: str | os.PathLike[str], report: Report, *, quick: bool) -> None:
    atomic_write(path, render(report, quick=quick), mode=0o644)  # readable by node_exporter's user
