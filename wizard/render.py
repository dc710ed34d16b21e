"""The answers as a commented YAML config (a short comment above each section), written atomically
with mode 0600. The keys are exactly those of common/config.py; there is no password key to fill."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from common.config import Defaults, MonitoringConfig, ScheduleConfig
from common.errors import UsageError
from common.files import atomic_write
from wizard.model import Answers, DatabaseAnswer, TableAnswer

_DEFAULT_KEYS = ("batch_size", "format", "compression_level", "delete_after_archive", "sleep_seconds",
                 "statement_timeout", "lock_timeout", "connection_pool_size")


def config_document(a: Answers) -> dict[str, Any]:
    """The config as plain data, in the order it is written."""
    base = Defaults()
    defaults: dict[str, Any] = {"retention_days": a.tables[0].retention_days}
    defaults.update({k: getattr(base, k) for k in _DEFAULT_KEYS})
    logging: dict[str, Any] = {"file": a.extras.log_file} if a.extras.log_file else {}
    logging.update(level="INFO", format="text")
    where: dict[str, Any] = ({"s3": a.s3.model_dump(exclude_none=True, exclude=_s3_tuning()), "storage": "s3"}
                             if a.s3 is not None else {"storage": "local", "local_dir": a.local_dir})
    doc: dict[str, Any] = {
        **where,
        "defaults": defaults,
        "databases": [_database(a.database, a.tables)],
        "logging": logging,
        "checkpoint_dir": a.extras.checkpoint_dir,
        "monitoring": {"bind": MonitoringConfig().bind, "health_port": a.extras.health_port,
                       "metrics_port": a.extras.metrics_port},
        "schedule": {"interval": ScheduleConfig().interval},
    }
    if a.extras.notifications:
        doc["notifications"] = a.extras.notifications
    return doc


def _s3_tuning() -> set[str]:
    # Retry and timeout knobs keep their built-in defaults; writing them would only add noise.
    return {"max_attempts", "connect_timeout", "read_timeout", "probe_interval_seconds"}


def _database(db: DatabaseAnswer, tables: tuple[TableAnswer, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": db.name}
    if db.dsn:
        out["dsn"] = db.dsn
    else:
        out.update(host=db.host, port=db.port, dbname=db.dbname, user=db.user)
    out["password_env"] = db.password_env
    out["tables"] = [{"name": t.info.name, "schema": t.info.schema, "timestamp_column": t.timestamp_column,
                      "primary_key": t.primary_key[0] if len(t.primary_key) == 1 else list(t.primary_key),
                      "retention_days": t.retention_days} for t in tables]
    return out


def _comments(a: Answers) -> dict[str, str]:
    return {
        "s3": "Where archives go: s3://<bucket>/<prefix>/<database>/<schema>.<table>/year=/month=/day=/.\n"
              "AWS credentials come from the environment, a profile or an instance role, never from this file.\n"
              "local_fallback_dir keeps archives while S3 is unreachable; they are uploaded later.",
        "storage": "s3, or local (archives in local_dir instead of S3)." if a.local_dir is None else
                   "local: the archives stay in local_dir, in the same key layout as on S3. To move them to S3 later:\n"
                   f"aws s3 sync {a.local_dir} s3://<bucket>/, then set storage: s3 and s3: {{bucket: <bucket>}}.",
        "local_dir": "Where the archives are (storage: local); absolute, so any working directory finds them.",
        "defaults": "Settings every table inherits unless the table sets its own.",
        "databases": f"Databases and tables to archive. The password is read from ${a.database.password_env}\n"
                     "(password_env); it is never written here.",
        "logging": "Log destination (stderr as well), level and format (text or json).",
        "checkpoint_dir": "Resume points of interrupted runs; a STOP file here ends a run after its current batch.",
        "monitoring": "Health (/health) and Prometheus (/metrics) endpoints.",
        "schedule": "How often `--daemon` runs.",
        "notifications": "Who hears about failures; secrets come from the named environment variables.",
    }


def render_yaml(a: Answers, *, now: datetime, command: str = "python -m wizard.main") -> str:
    head = (f"# pg-archiver configuration, written by `{command}` on {now:%Y-%m-%d %H:%M} UTC.\n"
            f"# Check it with: python -m archiver.main --config <this file> --dry-run\n")
    comments = _comments(a)
    parts = [head]
    for key, value in config_document(a).items():
        comment = "".join(f"# {line}\n" for line in comments[key].splitlines())
        body = yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=False, allow_unicode=True)
        parts.append(f"\n{comment}{body}")
    return "".join(parts)


def write_config(path: Path, text: str, *, overwrite: bool) -> None:
    """Atomic write with mode 0600 (the file names secrets' env vars and hosts); never clobbers an
    existing file unless told to."""
    if path.exists() and not overwrite:
        raise UsageError(f"{path} exists; pass --force to overwrite it")
    if path.is_dir():
        raise UsageError(f"{path} is a directory")
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise UsageError(f"{path}: directory {directory} does not exist")
    atomic_write(path, text.encode("utf-8"), mode=0o600)
