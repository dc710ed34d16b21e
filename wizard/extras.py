"""Step 5: fallback directory, checkpoint directory, log file, health/metrics ports and the
optional notifications. Secrets (webhook URLs, routing keys, SMTP passwords) are env-var names."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import click

from wizard.model import (DEFAULT_CHECKPOINT_DIR, DEFAULT_FALLBACK_DIR, DEFAULT_HEALTH_PORT, DEFAULT_LOG_FILE,
                          DEFAULT_METRICS_PORT, Extras, Flags)
from wizard.prompts import Prompter, env_name_check, nonempty_check, path_or_none

NOTIFY_EVENTS = ("failure", "success", "fallback")


def fallback_dir(p: Prompter, flags: Flags) -> str | None:
    value = p.ask("Local fallback directory for archives while S3 is unreachable ('none' to disable)",
                  flag="--fallback-dir", given=flags.fallback_dir, default=DEFAULT_FALLBACK_DIR)
    path = path_or_none(value)
    note_dir(p, path)
    return path


def extras_step(p: Prompter, flags: Flags, *, beside: Path | None = None) -> Extras:
    """`beside` (a first try with storage: local): checkpoints and log default to that directory,
    which this user can write, instead of the server paths of the runbook."""
    checkpoint = p.ask("Checkpoint directory (resume points of interrupted runs)", flag="--checkpoint-dir",
                       given=flags.checkpoint_dir, check=nonempty_check,
                       default=str(beside / "checkpoints") if beside else DEFAULT_CHECKPOINT_DIR)
    note_dir(p, checkpoint)
    log_file = path_or_none(p.ask("Log file ('none' for stderr only)", flag="--log-file", given=flags.log_file,
                                  default=str(beside / "archiver.log") if beside else DEFAULT_LOG_FILE))
    note_dir(p, str(Path(log_file).parent) if log_file else None)
    port = click.IntRange(0, 65535)
    health = p.ask("Health check port (/health)", flag="--health-port", given=flags.health_port,
                   default=DEFAULT_HEALTH_PORT, type=port)
    metrics = p.ask("Prometheus metrics port (/metrics)", flag="--metrics-port", given=flags.metrics_port,
                    default=DEFAULT_METRICS_PORT, type=port)
    notifications, envs = notifications_step(p, flags)
    return Extras(checkpoint_dir=checkpoint, log_file=log_file, health_port=health, metrics_port=metrics,
                  notifications=notifications, secret_envs=envs)


def note_dir(p: Prompter, path: str | None) -> None:
    """The archiver creates missing directories; say so when this user could not."""
    if not path:
        return
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        p.warn(f"{path}: {probe} is not writable by this user; the archiver's user needs to write there")


def _events_check(value: Any) -> str | None:
    events = _split(str(value))
    if events and all(e in NOTIFY_EVENTS for e in events):
        return None
    return f"choose from {', '.join(NOTIFY_EVENTS)}"


def _split(text: str) -> list[str]:
    return [x for x in re.split(r"[,\s]+", text.strip()) if x]


def notifications_step(p: Prompter, flags: Flags) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
    flagged = any((flags.notify_on, flags.slack_webhook_env, flags.pagerduty_key_env, flags.smtp_host))
    if not flagged and not p.confirm("Set up notifications (Slack, PagerDuty, email)?", default=False):
        return None, ()
    on = _split(p.ask("Notify on (failure, success, fallback; comma-separated)", flag="--notify-on",
                      given=flags.notify_on, default="failure", check=_events_check))
    doc: dict[str, Any] = {"on": on}
    envs: list[str] = []
    slack = p.ask("Env var holding the Slack webhook URL (optional)", flag="--slack-webhook-env",
                  given=flags.slack_webhook_env, optional=True, check=env_name_check)
    if slack:
        doc["slack"] = {"webhook_url_env": slack}
        envs.append(slack)
    pd = p.ask("Env var holding the PagerDuty routing key (optional)", flag="--pagerduty-key-env",
               given=flags.pagerduty_key_env, optional=True, check=env_name_check)
    if pd:
        doc["pagerduty"] = {"routing_key_env": pd}
        envs.append(pd)
    email = _email(p, flags)
    if email:
        doc["email"] = email
        if email.get("password_env"):
            envs.append(email["password_env"])
    if not (slack or pd or email):
        p.warn("no notification channel given; the notifications section is left out")
        return None, ()
    return doc, tuple(envs)


def _email(p: Prompter, flags: Flags) -> dict[str, Any] | None:
    host = p.ask("SMTP host for email notifications (optional)", flag="--smtp-host", given=flags.smtp_host,
                 optional=True)
    if not host:
        return None
    port = p.ask("SMTP port", flag="--smtp-port", given=flags.smtp_port, default=587, type=click.IntRange(1, 65535))
    sender = p.ask("From address", flag="--email-from", given=flags.email_from,
                   check=lambda v: None if "@" in str(v) else "an email address")
    to = p.ask("To (comma-separated addresses)", flag="--email-to", given=",".join(flags.email_to) or None,
               check=lambda v: None if _split(str(v)) and all("@" in a for a in _split(str(v))) else "email addresses")
    doc: dict[str, Any] = {"smtp_host": host, "smtp_port": port, "from": sender, "to": _split(to)}
    user = p.ask("SMTP user (optional)", flag="--smtp-user", given=flags.smtp_user, optional=True)
    if user:
        doc["user"] = user
        doc["password_env"] = p.ask("Env var holding the SMTP password", flag="--smtp-password-env",
                                    given=flags.smtp_password_env, default="ARCHIVER_SMTP_PASSWORD",
                                    check=env_name_check)
    return doc
