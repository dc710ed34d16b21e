"""What the wizard is told (command-line flags) and what it has gathered (answers). No password
field exists anywhere here on purpose: the password is used to connect and then dropped."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

from common.config import S3Config
from common.errors import UsageError
from wizard.introspect import Eligibility, TableInfo

T = TypeVar("T")

DEFAULT_PASSWORD_ENV = "ARCHIVER_DB_PASSWORD"
# Paths and ports from the operators' runbook.
DEFAULT_FALLBACK_DIR = "/var/archiver/fallback"
DEFAULT_CHECKPOINT_DIR = "/var/lib/archiver/checkpoints"
DEFAULT_LOG_FILE = "/var/log/archiver.log"
DEFAULT_HEALTH_PORT = 8001
DEFAULT_METRICS_PORT = 8000
DEFAULT_RETENTION_DAYS = 90


@dataclass(frozen=True, kw_only=True)
class Flags:
    """Every answer can come from a flag; None means "ask" (or take the default when scripted)."""

    output: Path
    non_interactive: bool = False
    force: bool = False
    verbose: bool = False
    dsn: str | None = None
    host: str | None = None
    port: int | None = None
    dbname: str | None = None
    user: str | None = None
    database_name: str | None = None
    password_env: str | None = None
    tables: tuple[str, ...] = ()
    timestamp_columns: tuple[str, ...] = ()  # COLUMN or TABLE=COLUMN
    primary_keys: tuple[str, ...] = ()
    retention_days: tuple[str, ...] = ()
    bucket: str | None = None
    local_dir: str | None = None
    prefix: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    storage_class: str | None = None
    sse: str | None = None
    kms_key_id: str | None = None
    skip_bucket_check: bool = False
    fallback_dir: str | None = None
    checkpoint_dir: str | None = None
    log_file: str | None = None
    health_port: int | None = None
    metrics_port: int | None = None
    notify_on: str | None = None
    slack_webhook_env: str | None = None
    pagerduty_key_env: str | None = None
    smtp_host: str | None = None
    smtp_port: int | None = None
    email_from: str | None = None
    email_to: tuple[str, ...] = ()
    smtp_user: str | None = None
    smtp_password_env: str | None = None


@dataclass(frozen=True)
class DatabaseAnswer:
    name: str
    password_env: str
    dsn: str | None = None  # never carries a password
    host: str | None = None
    port: int | None = None
    dbname: str | None = None
    user: str | None = None


@dataclass(frozen=True)
class TableAnswer:
    info: TableInfo
    timestamp_column: str
    primary_key: tuple[str, ...]  # one column, or a composite key's in keyset order
    retention_days: int
    eligibility: Eligibility
    eligible_bytes: int


@dataclass(frozen=True)
class Extras:
    checkpoint_dir: str
    log_file: str | None
    health_port: int
    metrics_port: int
    notifications: dict[str, Any] | None = None
    secret_envs: tuple[str, ...] = field(default_factory=tuple)  # env vars the user must export


@dataclass(frozen=True)
class Answers:
    database: DatabaseAnswer
    tables: tuple[TableAnswer, ...]
    s3: S3Config | None  # None: storage: local, in local_dir
    extras: Extras
    local_dir: str | None = None


class PerTable(Generic[T]):
    """`--flag VALUE` applies to every table, `--flag TABLE=VALUE` (TABLE or schema.TABLE) to one."""

    def __init__(self, values: tuple[str, ...], *, flag: str, convert: Callable[[str], T]) -> None:
        self.flag = flag
        self.everywhere: T | None = None
        self.specific: dict[str, T] = {}
        for raw in values:
            key, sep, value = raw.rpartition("=")
            try:
                converted = convert(value.strip())
            except ValueError:
                raise UsageError(f"{flag} {raw}: {value.strip()!r} is not a valid value") from None
            if sep:
                self.specific[key.strip()] = converted
            else:
                self.everywhere = converted

    def get(self, info: TableInfo) -> T | None:
        return self.specific.get(info.qualified, self.specific.get(info.name, self.everywhere))

    def check_used(self, chosen: list[TableInfo]) -> None:
        """A TABLE=VALUE for a table that was not chosen is a typo, not something to ignore."""
        names = {t.qualified for t in chosen} | {t.name for t in chosen}
        for key in self.specific:
            if key not in names:
                raise UsageError(f"{self.flag} {key}=...: {key} is not one of the chosen tables")


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value
