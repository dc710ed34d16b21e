"""Prometheus metrics for the archiver (issue 6): an Observer that counts what the run does into its
own registry, served at /metrics, written atomically as a node_exporter textfile, or pushed to a
Pushgateway for one-shot runs that end before Prometheus scrapes them."""
from __future__ import annotations

import logging
import os
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import prometheus_client
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from archiver.ops.events import STOP_REASONS, TableResult, run_stop_reason
from common.files import atomic_write
from common.archive.s3client import s3_requests

log = logging.getLogger("archiver.metrics")

# `*_created` series double every counter for no use to the runbook's `grep archiver`.
prometheus_client.disable_created_metrics()

LABELS = ("database", "table")
LAST_SUCCESS = "archiver_last_success_timestamp_seconds"
PUSH_JOB = "pg_archiver"
#: How a run ended, by exit code (common/exit_codes.py), for labels and the health JSON.
RESULTS = {0: "success", 1: "failed", 2: "config_error", 3: "unavailable", 130: "interrupted"}


def result_name(exit_code: int) -> str:
    return RESULTS.get(exit_code, f"exit_{exit_code}")


class _FallbackCollector:
    """Pending fallback files/bytes, measured at scrape time so they are right between runs too."""

    def __init__(self, pending: Callable[[], tuple[int, int]]) -> None:
        self.pending = pending

    def collect(self) -> Iterator[Metric]:
        try:
            files, nbytes = self.pending()
        except Exception as exc:  # noqa: BLE001 - an unreadable directory must not break /metrics
            log.warning("cannot measure the fallback directory: %s", exc)
            return
        yield GaugeMetricFamily("archiver_fallback_pending_files",
                                "Batches held in s3.local_fallback_dir waiting for upload to S3", value=files)
        yield GaugeMetricFamily("archiver_fallback_pending_bytes",
                                "Bytes held in s3.local_fallback_dir waiting for upload to S3", value=nbytes)


class _S3RequestsCollector:
    """archiver_s3_requests_total{operation}: what S3 bills per request, counted as they are sent."""

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("archiver_s3_requests", "S3 requests sent (each attempt, retries included), "
                                     "by S3 operation", labels=["operation"])
        for operation, n in sorted(s3_requests().items()):
            family.add_metric([operation], n)
        yield family


class ArchiverMetrics:
    """Observer (archiver/ops/events.py) that turns run events into Prometheus metrics."""

    def __init__(self, *, pending_fallback: Callable[[], tuple[int, int]] | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.rows = Counter("archiver_rows_archived_total", "Rows archived and deleted", LABELS, registry=r)
        self.batches = Counter("archiver_batches_total",
                               "Batches by outcome: success, fallback (held locally), failed, rolled_back",
                               (*LABELS, "status"), registry=r)
        self.uploaded = Counter("archiver_bytes_uploaded_total", "Archive bytes stored in S3 (or local_dir)", LABELS, registry=r)
        self.fallback_bytes = Counter("archiver_bytes_fallback_total", "Archive bytes written to the fallback directory",
                                      LABELS, registry=r)
        self.duration = Histogram("archiver_batch_duration_seconds", "Seconds to store, verify and delete one batch",
                                  buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600), registry=r)
        self.last_success = Gauge(LAST_SUCCESS, "Unix time the table last completed a run without error", LABELS, registry=r)
        self.kept = Gauge("archiver_rows_kept_referenced",
                          "Expired rows the last run left in the table because a foreign key still references them",
                          LABELS, registry=r)
        self.backlog_rows = Gauge("archiver_backlog_rows",
                                  "Expired rows still in the table after the last run (kept referenced rows included; "
                                  "an estimate after a run that stopped early unless monitoring.backlog_exact_count)",
                                  LABELS, registry=r)
        self.backlog_oldest = Gauge("archiver_backlog_oldest_age_seconds",
                                    "Age of the oldest expired row still in the table after the last run (0: none)",
                                    LABELS, registry=r)
        self.partitions_pending = Gauge("archiver_partitions_pending_retirement",
                                        "Partitions past retention still attached, waiting to be retired", LABELS, registry=r)
        self.clock_skew = Gauge("archiver_clock_skew_seconds",
                                "This host's clock minus the database's at the last table start (cutoffs follow the database's)",
                                ("database",), registry=r)
        self.stop_reason = Gauge("archiver_last_run_stop_reason",
                                 "1 for why the last run stopped before its end (none: it ran to the end), 0 for the others",
                                 ("reason",), registry=r)
        self.s3_up = Gauge("archiver_s3_up", "1 when the last batch went to S3 (or local_dir), 0 when S3 could not "
                           "take it (held in the fallback directory, or the upload failed); 1 until a batch fails", registry=r)
        self.s3_up.set(1)
        self.errors = Counter("archiver_errors_total", "Failed tables (or runs) by kind of error", (*LABELS, "kind"), registry=r)
        self.in_progress = Gauge("archiver_run_in_progress", "1 while an archival run is going on", registry=r)
        self.last_run = Gauge("archiver_last_run_timestamp_seconds", "Unix time the last run finished", registry=r)
        self.last_code = Gauge("archiver_last_run_exit_code", "Exit code of the last run (0 ok, 1 failed, 3 unreachable)", registry=r)
        self.last_duration = Gauge("archiver_last_run_duration_seconds", "Seconds the last run took", registry=r)
        self.runs = Counter("archiver_runs_total", "Finished runs by result", ("result",), registry=r)
        self._started = 0.0
        r.register(_S3RequestsCollector())  # type: ignore[arg-type]
        if pending_fallback is not None:
            r.register(_FallbackCollector(pending_fallback))  # type: ignore[arg-type]

    # -- Observer ----------------------------------------------------------------------------
    def run_started(self) -> None:
        self._started = time.monotonic()
        self.in_progress.set(1)

    def batch_done(self, result: TableResult, *, rows: int, nbytes: int, seconds: float, location: str) -> None:
        labels = (result.database, result.name)
        self.rows.labels(*labels).inc(rows)
        self.duration.observe(seconds)
        self.s3_up.set(0 if location == "fallback" else 1)
        if location == "fallback":
            self.batches.labels(*labels, "fallback").inc()
            self.fallback_bytes.labels(*labels).inc(nbytes)
        else:
            self.batches.labels(*labels, "success").inc()
            self.uploaded.labels(*labels).inc(nbytes)

    def batch_failed(self, result: TableResult, *, kind: str) -> None:
        status = "rolled_back" if kind == "conflict" else "failed"
        if kind == "s3":
            self.s3_up.set(0)
        self.batches.labels(result.database, result.name, status).inc()

    def table_done(self, result: TableResult) -> None:
        if result.status == "completed":
            self.last_success.labels(result.database, result.name).set(time.time())
            # counted by every completed run (0 without references), so it falls once they are gone
            self.kept.labels(result.database, result.name).set(result.kept_referenced)
            self.partitions_pending.labels(result.database, result.name).set(result.partitions_pending)
        if result.status in ("completed", "stopped"):
            self.clock_skew.labels(result.database).set(result.clock_skew_seconds)
            if result.backlog_rows is not None and result.backlog_oldest_seconds is not None:
                self.backlog_rows.labels(result.database, result.name).set(result.backlog_rows)
                self.backlog_oldest.labels(result.database, result.name).set(result.backlog_oldest_seconds)
        elif result.status == "failed":
            self.errors.labels(result.database, result.name, result.error_kind or "other").inc()
            if result.error_kind in ("s3", "s3_unreachable"):
                self.s3_up.set(0)

    def run_finished(self, results: list[TableResult], exit_code: int) -> None:
        self.in_progress.set(0)
        self.last_run.set(time.time())
        self.last_code.set(exit_code)
        self.last_duration.set(time.monotonic() - self._started if self._started else 0)
        self.runs.labels(result_name(exit_code)).inc()
        reason = run_stop_reason(results)
        for name in STOP_REASONS:
            self.stop_reason.labels(name).set(1 if name == reason else 0)

    def run_crashed(self, kind: str, exit_code: int) -> None:
        """The run ended with an exception before run_finished (not a table's failure)."""
        self.errors.labels("", "", kind).inc()
        self.run_finished([], exit_code)

    # -- output ------------------------------------------------------------------------------
    def render(self) -> bytes:
        return generate_latest(self.registry)

    def route(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, self.render()

    def write_textfile(self, path: str | os.PathLike[str]) -> None:
        """Atomically replace `path`: node_exporter never reads half a file (it reads only *.prom,
        so it never takes the temp file for one either)."""
        atomic_write(path, self.render(), mode=0o644)  # mkstemp's 0600 would hide it from node_exporter's user

    def seed_from_textfile(self, path: str | os.PathLike[str]) -> int:
        """Carry last-success times over from the previous run's textfile, so a table that fails
        now still shows when it last succeeded; a time older than the one held is ignored (so it
        may be read again just before writing, after an overlapping run wrote it). Returns how
        many were read."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError:
            return 0
        return self._seed(text, source=f"metrics textfile {path}")

    def seed_from_pushgateway(self, url: str, *, timeout: float = 5.0) -> int:
        """The same from what this host pushed last: a push replaces the whole group (job and
        instance), so without this a table that failed this run would vanish from the Pushgateway,
        and an alert on `time() - archiver_last_success_timestamp_seconds` would never fire for it.
        Raises OSError (urllib's URLError) when the Pushgateway cannot be read."""
        with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=timeout) as resp:  # noqa: S310 - the configured URL
            text = resp.read().decode("utf-8")
        return self._seed(text, source=f"Pushgateway {url}", group={"job": PUSH_JOB, "instance": socket.gethostname()})

    def _seed(self, text: str, *, source: str, group: dict[str, str] | None = None) -> int:
        seeded = 0
        try:
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name != LAST_SUCCESS or not set(LABELS) <= set(sample.labels):
                        continue
                    if group and any(sample.labels.get(k) != v for k, v in group.items()):
                        continue  # another host's or job's group on the same Pushgateway
                    labels = {k: sample.labels[k] for k in LABELS}
                    if sample.value > (self.registry.get_sample_value(LAST_SUCCESS, labels) or 0):  # the newest wins
                        self.last_success.labels(**labels).set(sample.value)
                    seeded += 1
        except ValueError as exc:
            log.warning("ignoring unreadable %s: %s", source, exc)
        return seeded

    def push(self, url: str, *, timeout: float = 5.0) -> None:
        prometheus_client.push_to_gateway(url, job=PUSH_JOB, registry=self.registry, timeout=timeout,
                                          grouping_key={"instance": socket.gethostname()})
