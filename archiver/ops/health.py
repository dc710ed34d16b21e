"""GET /health (issue 6): cheap, time-limited checks (a `SELECT 1` per database, a HeadBucket, the
fallback directory's backlog), cached for a few seconds, plus what the last run did.

Status: `unhealthy` (HTTP 503) when a database cannot be reached, or S3 cannot be reached and no
fallback directory is configured: archiving cannot happen. `degraded` (HTTP 200) when S3 is down
but batches go to the fallback directory, batches wait there, or the last run failed. Otherwise
`healthy`."""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common.config import Config, DatabaseConfig
from common.pg.db import application_name, connect, conninfo, describe_target
from common.errors import first_line
from common.pg.watchdog import WATCHDOG
from common.jsonout import render_json
from archiver.ops.events import TableResult
from archiver.ops.metrics import result_name
from common.archive.s3client import fallback_storage, make_client

log = logging.getLogger("archiver.health")
JSON = "application/json"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunState:
    """Observer remembering the current or last run, for the health JSON."""

    started: str | None = None
    finished: str | None = None
    exit_code: int | None = None
    failed_tables: list[str] = field(default_factory=list)
    fallback_batches: int = 0
    #: Bumped when a run starts or ends, so /health does not serve checks cached from before.
    generation: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def run_started(self) -> None:
        with self._lock:
            self.started, self.finished, self.exit_code = _now(), None, None
            self.failed_tables, self.fallback_batches = [], 0
            self.generation += 1

    def batch_done(self, result: TableResult, *, rows: int, nbytes: int, seconds: float, location: str) -> None:
        if location == "fallback":
            self.fallback_batches += 1

    def batch_failed(self, result: TableResult, *, kind: str) -> None:
        pass

    def table_done(self, result: TableResult) -> None:
        if result.status == "failed":
            with self._lock:
                self.failed_tables.append(f"{result.database}/{result.name}")

    def run_finished(self, results: list[TableResult], exit_code: int) -> None:
        with self._lock:
            self.finished, self.exit_code = _now(), exit_code
            self.generation += 1

    def run_crashed(self, kind: str, exit_code: int) -> None:
        self.run_finished([], exit_code)

    @property
    def result(self) -> str | None:
        if self.started is None:
            return None
        return "running" if self.exit_code is None else result_name(self.exit_code)

    def snapshot(self) -> dict[str, Any] | None:
        with self._lock:
            if self.started is None:
                return None
            return {"started": self.started, "finished": self.finished, "result": self.result,
                    "exit_code": self.exit_code, "failed_tables": list(self.failed_tables),
                    "fallback_batches": self.fallback_batches}


class HealthChecker:
    def __init__(self, cfg: Config, *, state: RunState, cache_seconds: float = 5.0, timeout: float = 3.0) -> None:
        self.state, self.cache_seconds, self.timeout = state, cache_seconds, timeout
        self._lock = threading.Lock()
        self._cached: tuple[float, int, dict[str, Any]] | None = None
        self._s3: Any = None
        #: Who answers (archiver/ops/identity.py), shown in the JSON so an operator sees it too.
        self.identity: dict[str, Any] | None = None
        self.set_config(cfg)

    def set_config(self, cfg: Config) -> None:
        """Use a (re)loaded config from the next check on."""
        with self._lock:
            self.cfg, self._s3, self._cached = cfg, None, None

    # -- the endpoint ------------------------------------------------------------------------
    def route(self) -> tuple[int, str, bytes]:
        code, doc = self.report()
        return code, JSON, render_json(doc).encode()

    def report(self) -> tuple[int, dict[str, Any]]:
        checks = self.checks()
        last_run = self.state.snapshot()
        status, reasons = self.judge(checks, last_run, fallback_configured=checks["fallback"]["dir"] is not None)
        doc = {"status": status, "reasons": reasons, "checks": checks, "last_run": last_run}
        if self.identity is not None:
            doc["archiver"] = self.identity
        return (503 if status == "unhealthy" else 200), doc

    @staticmethod
    def judge(checks: dict[str, Any], last_run: dict[str, Any] | None, *, fallback_configured: bool) -> tuple[str, list[str]]:
        unhealthy = [f"database {name} unreachable: {c.get('error', c['status'])}"
                     for name, c in checks["database"]["databases"].items() if c["status"] != "ok"]
        # A session of the run waiting on a silent server, or given up on in the last minute
        # (common/pg/watchdog.py): the stall, while it lasts, even if a new connection works.
        unhealthy += [f"database {s['target']} silent for {s['silent_seconds']:g}s on a session of the run"
                      if "silent_seconds" in s else s["error"] for s in checks["database"].get("stalls", [])]
        degraded: list[str] = []
        s3 = checks["s3"]
        if s3["status"] != "ok":
            msg = f"{s3.get('storage', 's3')} unreachable: {s3.get('error', s3['status'])}"
            (degraded if fallback_configured else unhealthy).append(
                msg + ("; batches go to the fallback directory" if fallback_configured else ""))
        if checks["fallback"]["pending_files"]:
            degraded.append(f"{checks['fallback']['pending_files']} batches wait in the fallback directory")
        if last_run and last_run["result"] in ("failed", "unavailable", "config_error"):
            degraded.append(f"last run {last_run['result']}" + (
                f": {', '.join(last_run['failed_tables'])}" if last_run["failed_tables"] else ""))
        status = "unhealthy" if unhealthy else "degraded" if degraded else "healthy"
        return status, unhealthy + degraded

    def checks(self) -> dict[str, Any]:
        """The live checks, computed at most once per cache_seconds and run (concurrent callers wait
        for one computation)."""
        with self._lock:
            generation = self.state.generation
            if self._cached and time.monotonic() < self._cached[0] and self._cached[1] == generation:
                return self._cached[2]
            result = self._run_checks(self.cfg)
            self._cached = (time.monotonic() + self.cache_seconds, generation, result)
            return result

    # -- the checks --------------------------------------------------------------------------
    def _run_checks(self, cfg: Config) -> dict[str, Any]:
        pool = ThreadPoolExecutor(max_workers=len(cfg.databases) + 2, thread_name_prefix="health")
        try:
            dbs = {db.name: pool.submit(self._check_database, db) for db in cfg.databases}
            s3 = pool.submit(self._check_storage, cfg)
            fallback = pool.submit(self._check_fallback, cfg)
            wait([*dbs.values(), s3, fallback], timeout=self.timeout)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # a hung check times out on its own

        def outcome(fut: Any, default: dict[str, Any]) -> dict[str, Any]:
            if not fut.done():
                return dict(default, status="timeout", error=f"no answer within {self.timeout:g}s")
            return dict(fut.result())

        databases = {name: outcome(f, {}) for name, f in dbs.items()}
        stalls = [s for s in WATCHDOG.stalls() if s["target"] in _targets(cfg)]  # this config's databases only
        return {
            "database": {"status": "ok" if all(d["status"] == "ok" for d in databases.values()) and not stalls else "down",
                         "databases": databases, "stalls": stalls},
            "s3": outcome(s3, {"storage": cfg.storage}),
            "fallback": outcome(fallback, {"pending_files": 0, "bytes": 0, "dir": cfg.s3.local_fallback_dir}),
        }

    def _check_database(self, db: DatabaseConfig) -> dict[str, Any]:
        t0 = time.monotonic()
        target = "?"
        try:
            info = conninfo(db)
            target = describe_target(info)
            name = application_name(self.cfg.defaults.application_name, role="health")
            with connect(info, {"application_name": name}, connect_timeout=max(2, int(self.timeout)),
                         autocommit=True) as conn:
                conn.execute("SELECT 1").fetchone()
        except Exception as exc:  # noqa: BLE001 - any failure is "down"; libpq never echoes the password
            return {"status": "down", "target": target, "error": first_line(exc)}
        return {"status": "ok", "target": target, "latency_ms": round((time.monotonic() - t0) * 1000, 1)}

    def _check_storage(self, cfg: Config) -> dict[str, Any]:
        t0 = time.monotonic()
        if cfg.storage == "local":
            path = Path(cfg.local_dir or "")
            ok = _writable(path)
            doc: dict[str, Any] = {"status": "ok" if ok else "down", "storage": "local", "local_dir": str(path)}
            return doc if ok else dict(doc, error="not a writable directory")
        try:
            self._client(cfg).head_bucket(Bucket=cfg.s3.bucket)
        except Exception as exc:  # noqa: BLE001
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            return {"status": "down", "storage": "s3", "bucket": cfg.s3.bucket,
                    "error": f"HeadBucket {code}" if code else first_line(exc)}
        return {"status": "ok", "storage": "s3", "bucket": cfg.s3.bucket,
                "latency_ms": round((time.monotonic() - t0) * 1000, 1)}

    def _client(self, cfg: Config) -> Any:
        if self._s3 is None:
            # One attempt with short timeouts: the health check must answer fast, not retry.
            quick = cfg.s3.model_copy(update={"max_attempts": 1, "connect_timeout": min(cfg.s3.connect_timeout, self.timeout),
                                              "read_timeout": min(cfg.s3.read_timeout, self.timeout)})
            self._s3 = make_client(cfg.model_copy(update={"s3": quick}))
        return self._s3

    @staticmethod
    def _check_fallback(cfg: Config) -> dict[str, Any]:
        store = fallback_storage(cfg)
        files, nbytes = store.pending() if store is not None else (0, 0)
        return {"pending_files": files, "bytes": nbytes, "dir": str(store.root) if store else None}


def _targets(cfg: Config) -> set[str]:
    """host:port/dbname of each configured database, as the watchdog names them."""
    out = set()
    for db in cfg.databases:
        try:
            out.add(describe_target(conninfo(db)))
        except Exception:  # noqa: BLE001 - an unreadable password_file: its check says so
            continue
    return out


def _writable(path: Path) -> bool:
    """The directory, or the nearest existing parent it would be created in, is writable."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)
