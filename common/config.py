"""Configuration: the YAML contract of issue 2 (names fixed; keys may be added), loaded into
pydantic models that reject unknown keys. Every error is one line naming the key and the file."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from common.errors import ConfigError

Format = Literal["parquet", "jsonl"]
ExpiredPartitions = Literal["keep", "detach", "drop"]
TimestampUnit = Literal["s", "ms", "us"]
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ObjectLockConfig(_Strict):
    """S3 Object Lock (WORM, issue 17): every object and manifest is stored with this mode and a
    retain-until date of upload time + retain_days (common/lock.py)."""

    mode: Literal["GOVERNANCE", "COMPLIANCE"]
    retain_days: int = Field(ge=1)
    legal_hold: bool = False


class S3Config(_Strict):
    bucket: str = "audit-archives"
    prefix: str = ""
    region: str = "us-east-1"
    endpoint_url: str | None = None
    storage_class: str = "STANDARD"
    sse: Literal["AES256", "aws:kms"] | None = None
    kms_key_id: str | None = None
    local_fallback_dir: str | None = None
    #: botocore "standard" retry mode attempts before an upload counts as failed.
    max_attempts: int = Field(default=3, ge=1)
    #: Seconds to open a connection, and to wait for any answer (or to send the next chunk) on
    #: one; botocore retries both up to max_attempts, so a silent S3 is given up on within about
    #: max_attempts * (read_timeout + backoff): ~50 s by default (issue 31, docs/runbooks.md: Timeouts).
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=15.0, gt=0)
    #: Uploads in flight per table: S3 latency, not bandwidth, bounds small objects.
    max_concurrency: int = Field(default=4, ge=1, le=16)
    #: Seconds the circuit breaker waits before probing S3 again after an outage (issue 3).
    probe_interval_seconds: float = Field(default=60.0, ge=0)
    #: Object Lock for everything the tools store (issue 17); the bucket must have it enabled.
    object_lock: ObjectLockConfig | None = None
    #: Name of the environment variable holding the secret that signs the run digests (HMAC-SHA256).
    digest_key_env: str | None = None

    @model_validator(mode="after")
    def _kms_needs_key(self) -> S3Config:
        if self.sse == "aws:kms" and not self.kms_key_id:
            raise ValueError("sse: aws:kms needs s3.kms_key_id")
        return self


class TableOptions(_Strict):
    """Keys of `defaults:`; each may be overridden per table."""

    retention_days: int | None = Field(default=None, ge=0)
    batch_size: int | None = Field(default=None, gt=0)
    connection_pool_size: int | None = Field(default=None, gt=0)
    format: Format | None = None
    compression_level: int | None = Field(default=None, ge=1, le=22)
    delete_after_archive: bool | None = None
    sleep_seconds: float | None = Field(default=None, ge=0)
    statement_timeout: str | None = None
    lock_timeout: str | None = None
    max_runtime_minutes: float | None = Field(default=None, gt=0)
    max_replica_lag_seconds: float | None = Field(default=None, gt=0)
    #: What happens to a leaf partition whose whole range lies before the cutoff (issue 15):
    #: keep = its rows are deleted row by row like any other; detach / drop = archived in full,
    #: then detached (and dropped) instead of deleted (archiver/partitions.py).
    expired_partitions: ExpiredPartitions | None = None
    #: Days an archived object is kept after its newest row's time; then `expire` deletes it (unless
    #: a legal hold or its Object Lock retention keeps it). Unset: kept forever (issue 29).
    archive_retention_days: int | None = Field(default=None, ge=1)


class Defaults(TableOptions):
    retention_days: int | None = Field(default=90, ge=0)
    batch_size: int | None = Field(default=50000, gt=0)
    connection_pool_size: int | None = Field(default=5, gt=0)  # sessions a tool may hold per database (archiver: 2)
    format: Format | None = "parquet"
    compression_level: int | None = Field(default=3, ge=1, le=22)
    delete_after_archive: bool | None = True
    sleep_seconds: float | None = Field(default=0, ge=0)
    statement_timeout: str | None = "5min"
    lock_timeout: str | None = "5s"
    expired_partitions: ExpiredPartitions | None = "keep"
    application_name: str = "pg-archiver"
    #: Tables of different databases run in parallel up to this many (issue 3; 1 = predictable).
    max_workers: int = Field(default=1, gt=0)


class TableConfig(TableOptions):
    name: str
    schema_: str = Field(default="public", alias="schema")
    timestamp_column: str = "created_at"
    #: Required when timestamp_column is an integer column holding Unix time (common/epoch.py):
    #: seconds, milliseconds or microseconds; refused on a timestamp or date column.
    timestamp_unit: TimestampUnit | None = None
    #: A column or a list of columns; omitted: the table's own primary key, whatever its width.
    #: A table without one may name the columns of a unique index whose columns are all NOT NULL.
    primary_key: str | list[str] | None = None
    where: str | None = None
    #: Tables that reference this one through a foreign key (issue 28): `refuse` (the default)
    #: refuses a reference that ON DELETE would change; `archive` moves the referencing rows, at
    #: any depth, with the rows they reference (archiver/family/job.py).
    children: Literal["refuse", "archive"] = "refuse"

    @model_validator(mode="after")
    def _key_columns_distinct(self) -> TableConfig:
        if isinstance(self.primary_key, list) and (not self.primary_key or len(set(self.primary_key)) != len(self.primary_key)):
            raise ValueError("primary_key: a list of distinct column names, at least one")
        return self

    @property
    def key_columns(self) -> tuple[str, ...] | None:
        """The configured key columns, None when omitted (the table's primary key then)."""
        if self.primary_key is None:
            return None
        return (self.primary_key,) if isinstance(self.primary_key, str) else tuple(self.primary_key)


class DatabaseTimeouts(_Strict):
    """How long a tool waits on a silent PostgreSQL (issue 31; common/pg/watchdog.py). libpq's
    own limits end a connection whose peer stopped acknowledging (tcp_user_timeout, keepalives);
    the watchdog ends one that is acknowledged but unanswered (a proxy or a failed-over primary that
    keeps the connection open): after silence_seconds without a byte it asks the server over a new
    connection whether the session is still working, and gives up when that gets no answer within
    probe_seconds, so a long statement of a healthy server is never cut short."""

    connect_seconds: int = Field(default=10, ge=2)  # libpq rounds anything smaller up to 2
    silence_seconds: float = Field(default=30.0, gt=0)
    probe_seconds: int = Field(default=15, ge=2)
    tcp_user_timeout_seconds: float = Field(default=30.0, gt=0)
    keepalives_idle_seconds: int = Field(default=10, ge=1)
    keepalives_interval_seconds: int = Field(default=5, ge=1)
    keepalives_count: int = Field(default=4, ge=1)


class DatabaseConfig(_Strict):
    name: str
    dsn: str | None = None
    host: str | None = "localhost"
    port: int = 5432
    dbname: str | None = None
    user: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    replica_dsns: list[str] = Field(default_factory=list)
    tables: list[TableConfig] = Field(default_factory=list)
    #: The config's database_timeouts (set by Config), so conninfo(db) can carry them.
    _timeouts: DatabaseTimeouts = PrivateAttr(default_factory=lambda: DatabaseTimeouts())

    @property
    def timeouts(self) -> DatabaseTimeouts:
        return self._timeouts

    @field_validator("name")
    @classmethod
    def _not_the_control_folder(cls, value: str) -> str:
        # The database's folder would be the archive's control folder (common/archive/layout.py).
        if value == "_control":
            raise ValueError("'_control' is the name of the archive's control folder: choose another name")
        return value


class LoggingConfig(_Strict):
    file: str | None = None
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    format: Literal["text", "json"] = "text"


class MonitoringConfig(_Strict):
    bind: str = "127.0.0.1"
    health_port: int | None = Field(default=8001, ge=0, le=65535)
    metrics_port: int | None = Field(default=8000, ge=0, le=65535)
    enabled: bool = True
    textfile_path: str | None = None
    pushgateway_url: str | None = None
    #: count(*) the expired rows left after a run that stopped early (archiver_backlog_rows);
    #: false takes the planner's estimate, so a huge table is never scanned for a gauge.
    backlog_exact_count: bool = False


class ScheduleConfig(_Strict):
    interval: str = "1h"


class EmailConfig(_Strict):
    smtp_host: str
    smtp_port: int = 587
    security: Literal["starttls", "ssl", "none"] = "starttls"
    user: str | None = None
    password_env: str | None = None
    from_addr: str = Field(alias="from")
    to: list[str]
    timeout: float = 10.0


class SlackConfig(_Strict):
    webhook_url: str | None = None
    webhook_url_env: str | None = None
    timeout: float = 10.0


class PagerDutyConfig(_Strict):
    routing_key: str | None = None
    routing_key_env: str | None = None
    events_url: str = "https://events.pagerduty.com/v2/enqueue"
    severity: Literal["critical", "error", "warning", "info"] = "error"
    timeout: float = 10.0


NotifyOn = Literal["failure", "success", "fallback"]


def _default_on() -> list[NotifyOn]:
    return ["failure"]


class NotificationsConfig(_Strict):
    on: list[NotifyOn] = Field(default_factory=_default_on)
    email: EmailConfig | None = None
    slack: SlackConfig | None = None
    pagerduty: PagerDutyConfig | None = None


class IcebergConfig(_Strict):
    """The optional Iceberg table over each archived table's objects (issue 27; common/iceberg)."""

    #: Passed to pyiceberg's load_catalog as given (`name` is the catalog's name, default "archive").
    catalog: dict[str, Any]
    #: The Iceberg namespace of a database's tables; default: the configured database's name.
    namespace: str | None = None


class Config(_Strict):
    s3: S3Config = Field(default_factory=S3Config)
    storage: Literal["s3", "local"] = "s3"
    local_dir: str | None = None
    defaults: Defaults = Field(default_factory=Defaults)
    databases: list[DatabaseConfig] = Field(default_factory=list)
    database_timeouts: DatabaseTimeouts = Field(default_factory=DatabaseTimeouts)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    checkpoint_dir: str = "/var/lib/archiver/checkpoints"
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    notifications: NotificationsConfig = Field(default_factory=NotificationsConfig)
    iceberg: IcebergConfig | None = None
    #: Where the file was loaded from, for messages; not a YAML key.
    source: str = Field(default="<memory>", exclude=True)

    @model_validator(mode="after")
    def _local_needs_dir(self) -> Config:
        if self.storage == "local" and not self.local_dir:
            raise ValueError("storage: local needs local_dir")
        names = [d.name for d in self.databases]
        if len(names) != len(set(names)):
            raise ValueError("databases: names must be unique")
        for db in self.databases:
            db._timeouts = self.database_timeouts
        return self

    def database(self, name: str) -> DatabaseConfig:
        for db in self.databases:
            if db.name == name:
                return db
        known = ", ".join(d.name for d in self.databases) or "none"
        raise ConfigError(f"{self.source}: no database named {name!r} (configured: {known})")

    def table(self, database: str, table: str, schema: str | None = None) -> TableConfig:
        db = self.database(database)
        for t in db.tables:
            if t.name == table and (schema is None or t.schema_ == schema):
                return t
        known = ", ".join(f"{t.schema_}.{t.name}" for t in db.tables) or "none"
        raise ConfigError(f"{self.source}: database {database!r} has no table {table!r} (configured: {known})")

    def options(self, table: TableConfig) -> ResolvedOptions:
        """The table's effective options: its own overrides on top of `defaults`."""
        merged = self.defaults.model_dump()
        merged.update({k: v for k, v in table.model_dump(by_alias=False).items() if k in TableOptions.model_fields and v is not None})
        return ResolvedOptions(**{k: merged[k] for k in ResolvedOptions.model_fields})


class ResolvedOptions(BaseModel):
    retention_days: int
    batch_size: int
    connection_pool_size: int
    format: Format
    compression_level: int
    delete_after_archive: bool
    sleep_seconds: float
    statement_timeout: str | None
    lock_timeout: str | None
    max_runtime_minutes: float | None
    max_replica_lag_seconds: float | None
    expired_partitions: ExpiredPartitions
    application_name: str
    archive_retention_days: int | None = None


def _expand(value: Any, path: str, source: str) -> Any:
    """Expand ${VAR} in every string value; a missing variable is a config error."""
    if isinstance(value, str):
        def repl(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in os.environ:
                raise ConfigError(f"{source}: {path}: environment variable {name} is not set")
            return os.environ[name]
        return _ENV_RE.sub(repl, value)
    if isinstance(value, dict):
        return {k: _expand(v, f"{path}.{k}" if path else str(k), source) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{path}[{i}]", source) for i, v in enumerate(value)]
    return value


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse_config(data: Any, *, source: str = "<memory>") -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    notifications = data.get("notifications")
    if isinstance(notifications, dict) and True in notifications:
        # YAML 1.1 reads a bare `on:` key as the boolean true; issue 6 spells the key `on`.
        notifications = dict(notifications)
        notifications["on"] = notifications.pop(True)
        data = dict(data, notifications=notifications)
    data = _expand(data, "", source)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        what = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        what = what.removeprefix("Value error, ")
        raise ConfigError(f"{source}: {_loc(tuple(err['loc']))}: {what}") from None
    cfg.source = source
    return cfg


def load_config(path: str | os.PathLike[str]) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse_config(data, source=str(p))
