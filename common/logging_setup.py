"""Logging for all tools: human-readable lines to stderr and `logging.file`, or JSON lines with
`logging.format: json` (issue 6). Context (database, table, batch) travels in `extra`."""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

from common.config import LoggingConfig
from common.errors import ConfigError

CONTEXT_FIELDS = ("database", "table", "batch")


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        ctx = " ".join(f"{k}={getattr(record, k)}" for k in CONTEXT_FIELDS if getattr(record, k, None) is not None)
        line = f"{ts} {record.levelname} {record.getMessage()}" + (f" [{ctx}]" if ctx else "")
        if record.exc_info and record.levelno <= logging.DEBUG:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "timestamp": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for k in CONTEXT_FIELDS:
            v = getattr(record, k, None)
            if v is not None:
                doc[k] = v
        return json.dumps(doc, default=str)


class ReopenableFileHandler(logging.FileHandler):
    """Reopened on SIGHUP so logrotate can move the file away (issue 6)."""

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream:
                self.stream.close()
            self.stream = self._open()
        finally:
            self.release()


def setup_logging(cfg: LoggingConfig | None, *, verbose: bool = False, quiet: bool = False) -> list[logging.Handler]:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    level = logging.DEBUG if verbose else getattr(logging, cfg.level if cfg else "INFO")
    formatter: logging.Formatter = JsonFormatter() if cfg and cfg.format == "json" else TextFormatter()
    handlers: list[logging.Handler] = []
    if not quiet:
        handlers.append(logging.StreamHandler(sys.stderr))
    if cfg and cfg.file:
        path = Path(cfg.file)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(ReopenableFileHandler(path, encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"logging.file: cannot open {path}: {exc.strerror}") from None
    for h in handlers:
        h.setFormatter(formatter)
        root.addHandler(h)
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "psycopg.pool"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handlers


def reopen_log_files() -> None:
    for h in logging.getLogger().handlers:
        if isinstance(h, ReopenableFileHandler):
            h.reopen()
