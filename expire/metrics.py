"""`expire --textfile PATH` (issue 29): what the last expiry deleted and kept, by table and reason,
and the legal holds in force with the age of the oldest, as a node_exporter textfile (Prometheus
alerts on a hold older than the runbook's review period: deploy/prometheus/alerts.yml)."""
from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from common.files import atomic_write
from common.lifecycle.holds import age_days
from expire.outcome import TableOutcome

KEPT_REASONS = ("legal_hold", "s3_legal_hold", "object_lock")


def render(outcomes: Sequence[TableOutcome], *, now: float | None = None) -> bytes:
    r = CollectorRegistry()
    labels = ("database", "table")
    expired = Gauge("archiver_expire_objects_expired", "Objects the last expire run deleted", labels, registry=r)
    rows = Gauge("archiver_expire_rows_expired", "Archived rows the last expire run deleted", labels, registry=r)
    kept = Gauge("archiver_expire_objects_kept", "Objects past their archive retention the last expire run kept, by why",
                 (*labels, "reason"), registry=r)
    holds = Gauge("archiver_legal_holds_active", "Legal holds in force on the table", labels, registry=r)
    oldest = Gauge("archiver_legal_hold_oldest_age_days", "Age in days of the oldest legal hold in force (0: none)",
                   labels, registry=r)
    at = datetime.now(timezone.utc)
    for o in outcomes:
        key = (o.ref.database, o.ref.name)
        holds.labels(*key).set(len(o.holds))
        oldest.labels(*key).set(max((age_days(h, at) for h in o.holds), default=0))
        if o.plan is None:
            continue
        expired.labels(*key).set(len(o.plan.due))
        rows.labels(*key).set(o.plan.rows)
        reasons = Counter(k.reason for k in o.plan.kept)
        for reason in KEPT_REASONS:  # every reason, 0 included: an alert must see a count fall back to 0
            kept.labels(*key, reason).set(reasons.get(reason, 0))
    Gauge("archiver_expire_last_run_timestamp_seconds", "Unix time the last expire run completed",
          registry=r).set(time.time() if now is None else now)
    return generate_latest(r)


def write_textfile(path: str | os.PathLike[str], outcomes: Sequence[TableOutcome]) -> None:
    atomic_write(path, render(outcomes), mode=0o644)
