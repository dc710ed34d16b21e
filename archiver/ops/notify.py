"""Notifications (issue 6): email (SMTP with STARTTLS or SSL), a Slack webhook and PagerDuty Events
v2, sent when a run ends. Every message says what happened, where (database/table), the error and
the next step from the runbook. A channel that fails is logged and never fails the run or holds it
longer than its timeout: channels are sent in parallel from daemon threads with one deadline.

PagerDuty gets one `trigger` per failed table with a stable `dedup_key`, and a `resolve` when that
table next succeeds; the open failures are remembered in `<checkpoint_dir>/notifications.json` so
the resolve also works across one-shot runs from cron."""
from __future__ import annotations

import json
import logging
import os
import smtplib
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from common.config import Config, EmailConfig, NotificationsConfig, PagerDutyConfig, SlackConfig
from common.errors import ConfigError
from common.files import atomic_write
from common.jsonout import render_json
from archiver.ops.events import NullObserver, TableResult

log = logging.getLogger("archiver.notify")
RUN_TABLE = "*"  # the "table" of a notice about the whole run

#: error_kind -> (runbook section, next step); {config}, {bucket}, {fallback}, {log}, {health} are filled in.
NEXT_STEPS: dict[str, tuple[str, str]] = {
    "database_unreachable": ("Database Connection Issues", "check the database answers (psql ... -c 'SELECT 1;', "
                             "pg_stat_activity), then rerun: python -m archiver.main --config {config}"),
    "database": ("Database Connection Issues", "check the database answers and its load (pg_stat_activity), "
                 "then rerun: python -m archiver.main --config {config}"),
    "s3_unreachable": ("S3 Outage", "check S3 (aws s3 ls s3://{bucket}/); set s3.local_fallback_dir so batches are "
                       "held locally during an outage; no rows were deleted for the failed batch"),
    "s3": ("S3 Outage", "check S3 (aws s3 ls s3://{bucket}/) and the credentials; no rows were deleted for the failed batch"),
    "fallback": ("S3 Outage", "the fallback directory is full or unwritable: free space (du -sh {fallback}) and "
                 "restore S3 access; no rows were deleted for the failed batch"),
    "state": ("Archival Failure", "a checkpoint or digest journal could not be written durably: check the disk "
              "under checkpoint_dir (dmesg, df -h), then rerun: python -m archiver.main --config {config}"),
    "integrity": ("Data Loss Suspected", "stop archival and validate: python -m validate.main --config {config} --verbose"),
    "config": ("Recover from Configuration Error", "check the config: python -m archiver.main --config {config} --dry-run"),
    "other": ("Archival Failure", "read the log (tail -n 200 {log}) and the health endpoint (curl {health}), "
              "fix the cause, then rerun: python -m archiver.main --config {config}"),
    "fallback_held": ("S3 Outage", "S3 is unreachable; the batches wait in {fallback} and upload automatically "
                      "once S3 is back; watch the space (du -sh {fallback})"),
}


@dataclass(frozen=True, kw_only=True)
class Notice:
    kind: str  # failure | fallback | success | recovered
    database: str
    table: str
    summary: str
    error: str | None = None
    section: str | None = None
    next_step: str | None = None
    #: PagerDuty dedup_key: stable per database/table (and per kind of alert), so repeats fold
    #: into one incident and a later success resolves it.
    key: str = ""

    @property
    def where(self) -> str:
        return "the whole run" if self.table == RUN_TABLE else f"{self.database}/{self.table}"

    def text(self, host: str) -> str:
        lines = [f"pg-archiver on {host}: {self.kind.upper()} {self.where}: {self.summary}"]
        if self.error:
            lines.append(f"Error: {self.error}")
        if self.next_step:
            lines.append(f"Next step (runbook \"{self.section}\"): {self.next_step}")
        return "\n".join(lines)


# -- channels ---------------------------------------------------------------------------------
class EmailChannel:
    name = "email"

    def __init__(self, cfg: EmailConfig) -> None:
        self.cfg = cfg
        self.password = _env(cfg.password_env, "notifications.email.password") if cfg.password_env else None
        self.timeout = cfg.timeout

    def send(self, notices: list[Notice], host: str) -> None:
        c = self.cfg
        msg = EmailMessage()
        msg["Subject"] = f"[pg-archiver] {_headline(notices)} on {host}"
        msg["From"], msg["To"] = c.from_addr, ", ".join(c.to)
        msg.set_content("\n\n".join(n.text(host) for n in notices) + "\n")
        context = ssl.create_default_context()  # honours SSL_CERT_FILE for a private CA
        smtp: smtplib.SMTP
        if c.security == "ssl":
            smtp = smtplib.SMTP_SSL(c.smtp_host, c.smtp_port, timeout=c.timeout, context=context)
        else:
            smtp = smtplib.SMTP(c.smtp_host, c.smtp_port, timeout=c.timeout)
        with smtp:
            if c.security == "starttls":
                smtp.starttls(context=context)
            if c.user:
                smtp.login(c.user, self.password or "")
            smtp.send_message(msg)


class SlackChannel:
    name = "slack"

    def __init__(self, cfg: SlackConfig) -> None:
        self.url = cfg.webhook_url or _env(cfg.webhook_url_env, "notifications.slack.webhook_url")
        self.timeout = cfg.timeout

    def send(self, notices: list[Notice], host: str) -> None:
        text = f"*pg-archiver: {_headline(notices)} on {host}*\n" + "\n\n".join(n.text(host) for n in notices)
        _post_json(self.url, {"text": text}, timeout=self.timeout)


class PagerDutyChannel:
    name = "pagerduty"

    def __init__(self, cfg: PagerDutyConfig) -> None:
        self.cfg = cfg
        self.key = cfg.routing_key or _env(cfg.routing_key_env, "notifications.pagerduty.routing_key")
        self.timeout = cfg.timeout

    def send(self, notices: list[Notice], host: str) -> None:
        for n in notices:
            event: dict[str, Any] = {"routing_key": self.key, "dedup_key": n.key}
            if n.kind == "recovered":
                event["event_action"] = "resolve"
            else:
                event["event_action"] = "trigger"
                event["payload"] = {
                    "summary": f"pg-archiver {n.kind} {n.where} on {host}: {n.error or n.summary}"[:1024],
                    "source": host, "severity": self.cfg.severity if n.kind == "failure" else "warning",
                    "component": n.database or "pg-archiver", "group": n.table, "class": n.kind,
                    "custom_details": {"error": n.error, "runbook": n.section, "next_step": n.next_step},
                }
            _post_json(self.cfg.events_url, event, timeout=self.timeout)

    @staticmethod
    def wants(notice: Notice) -> bool:
        # Paging is for failures, their resolution and the fallback warning; not for successes.
        return notice.kind != "success"


Channel = EmailChannel | SlackChannel | PagerDutyChannel


def _env(name: str | None, key: str) -> str:
    """A secret from the environment; `key` is the config key without `_env`."""
    if not name:
        raise ConfigError(f"{key}: not set (give {key.rsplit('.', 1)[-1]} or {key.rsplit('.', 1)[-1]}_env)")
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"{key}_env: environment variable {name} is not set")
    return value


def _headline(notices: list[Notice]) -> str:
    kinds = [n.kind for n in notices]
    if len(notices) == 1:
        return f"{notices[0].kind} {notices[0].where}"
    return ", ".join(f"{kinds.count(k)} {k}" for k in dict.fromkeys(kinds))


def _post_json(url: str, doc: dict[str, Any], *, timeout: float) -> None:
    req = urllib.request.Request(url, data=json.dumps(doc).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "User-Agent": "pg-archiver"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - URL from the operator's config
            resp.read()
    except urllib.error.HTTPError as exc:
        # The URL itself may carry a secret (Slack webhooks): never put it in the message.
        raise RuntimeError(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise RuntimeError(f"{exc.reason}") from None


# -- the observer -----------------------------------------------------------------------------
class Notifications(NullObserver):
    """Observer: collects what the run did and sends the wanted notices when it ends."""

    def __init__(self, cfg: NotificationsConfig, *, channels: list[Channel], context: dict[str, str],
                 state_path: Path | None, host: str | None = None) -> None:
        self.cfg, self.channels, self.context, self.state_path = cfg, channels, context, state_path
        self.host = host or socket.gethostname()
        self.last_errors: dict[str, str] = {}  # channel -> error of the last send, for tests and logs

    @classmethod
    def from_config(cls, cfg: Config, *, config_path: str) -> Notifications:
        n = cfg.notifications
        channels: list[Channel] = []
        if n.email:
            channels.append(EmailChannel(n.email))
        if n.slack:
            channels.append(SlackChannel(n.slack))
        if n.pagerduty:
            channels.append(PagerDutyChannel(n.pagerduty))
        port = cfg.monitoring.health_port or 8001
        context = {"config": config_path, "bucket": cfg.s3.bucket, "fallback": cfg.s3.local_fallback_dir or "<unset>",
                   "log": cfg.logging.file or "the archiver's log (journalctl -u archiver)",
                   "health": f"http://localhost:{port}/health"}
        return cls(n, channels=channels, context=context, state_path=Path(cfg.checkpoint_dir) / "notifications.json")

    # The other Observer events are NullObserver's no-ops: the run's results carry everything.
    def run_finished(self, results: list[TableResult], exit_code: int) -> None:
        notices = [n for r in results for n in self._notices_for(r)]
        if exit_code not in (0, 130) and not any(n.kind == "failure" for n in notices):
            notices.append(self._failure("", RUN_TABLE, f"the run ended with exit code {exit_code} but no table failed "
                                         "(a fallback batch may have been quarantined)", "other"))
        self.deliver(notices, run_ok=exit_code == 0)

    def run_crashed(self, message: str, kind: str) -> None:
        self.deliver([self._failure("", RUN_TABLE, message, kind)], run_ok=False)

    def _notices_for(self, r: TableResult) -> list[Notice]:
        out: list[Notice] = []
        key = f"pg-archiver/{r.database}/{r.name}"
        if r.status == "failed":
            out.append(self._failure(r.database, r.name, r.error or "failed", r.error_kind or "other"))
        if r.fallback_objects:
            section, step = NEXT_STEPS["fallback_held"]
            out.append(Notice(kind="fallback", database=r.database, table=r.name, section=section, key=key + "/fallback",
                              summary=f"S3 unreachable; {r.fallback_objects} batches held in the local fallback directory",
                              next_step=step.format(**self.context)))
        if r.status == "completed":
            out.append(Notice(kind="success", database=r.database, table=r.name, key=key,
                              summary=f"{r.rows} rows archived in {r.objects} objects"))
        return out

    def _failure(self, database: str, table: str, error: str, kind: str) -> Notice:
        section, step = NEXT_STEPS.get(kind, NEXT_STEPS["other"])
        return Notice(kind="failure", database=database, table=table, summary="archiving failed", error=error,
                      section=section, next_step=step.format(**self.context),
                      key=f"pg-archiver/{database or RUN_TABLE}/{table}")

    # -- delivery ----------------------------------------------------------------------------
    def deliver(self, notices: list[Notice], *, run_ok: bool) -> None:
        if not self.channels:
            return
        wanted = [n for n in notices if n.kind in self.cfg.on]
        wanted += self._recoveries(notices, wanted, run_ok=run_ok)
        if wanted:
            self._send_all(wanted)

    def _recoveries(self, notices: list[Notice], alerts: list[Notice], *, run_ok: bool) -> list[Notice]:
        """`recovered` notices for open alerts whose table works now; remembers the new alerts."""
        open_alerts = self._load_open()
        raised = {n.key: n for n in alerts if n.kind in ("failure", "fallback")}
        fine = {n.key for n in notices if n.kind == "success"}
        fine |= {k + "/fallback" for k in fine} - {n.key for n in notices if n.kind == "fallback"}
        if run_ok:
            fine.add(f"pg-archiver/{RUN_TABLE}/{RUN_TABLE}")
        out = []
        for key, (database, table, kind) in sorted(open_alerts.items()):
            if key in fine and key not in raised:
                out.append(Notice(kind="recovered", database=database, table=table, key=key,
                                  summary="S3 is back; no batch went to the fallback directory" if kind == "fallback"
                                  else "archiving works again"))
        still_open = {k: v for k, v in open_alerts.items() if k not in {n.key for n in out}}
        still_open.update({k: (n.database, n.table, n.kind) for k, n in raised.items()})
        if still_open != open_alerts:
            self._save_open(still_open)
        return out

    def _send_all(self, notices: list[Notice]) -> None:
        threads: list[tuple[str, threading.Thread]] = []
        for ch in self.channels:
            mine = [n for n in notices if not isinstance(ch, PagerDutyChannel) or ch.wants(n)]
            if mine:
                t = threading.Thread(target=self._send_one, args=(ch, mine), name=f"notify-{ch.name}", daemon=True)
                t.start()
                threads.append((ch.name, t))
        deadline = time.monotonic() + max(ch.timeout for ch in self.channels) + 1
        for name, t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                self.last_errors[name] = "timed out"
                log.warning("notification via %s failed: no answer in time; not waiting for it", name)

    def _send_one(self, channel: Channel, notices: list[Notice]) -> None:
        try:
            channel.send(notices, self.host)
        except Exception as exc:  # noqa: BLE001 - a notifier must never fail the run
            self.last_errors[channel.name] = _describe(exc)
            log.warning("notification via %s failed: %s", channel.name, _describe(exc))
        else:
            self.last_errors.pop(channel.name, None)
            log.info("notification sent via %s: %s", channel.name, _headline(notices))

    # -- open failures, kept across runs -----------------------------------------------------
    def _load_open(self) -> dict[str, tuple[str, str, str]]:
        if self.state_path is None:
            return {}
        try:
            doc = json.loads(self.state_path.read_text(encoding="utf-8"))
            return {k: (v["database"], v["table"], v["kind"]) for k, v in doc["open"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable notification state %s: %s", self.state_path, exc)
            return {}

    def _save_open(self, alerts: dict[str, tuple[str, str, str]]) -> None:
        if self.state_path is None:
            return
        doc = {"open": {k: {"database": d, "table": t, "kind": kind} for k, (d, t, kind) in sorted(alerts.items())}}
        try:
            atomic_write(self.state_path, render_json(doc).encode())
        except OSError as exc:
            log.warning("cannot save notification state %s: %s", self.state_path, exc.strerror)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"SMTP {exc.smtp_code} {exc.smtp_error.decode(errors='replace') if isinstance(exc.smtp_error, bytes) else exc.smtp_error}"
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if isinstance(exc, OSError) else text


