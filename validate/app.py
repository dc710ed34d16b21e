"""The validate tool's work behind the CLI: load config, set up logging, run the checks, print the
report (text lines or one JSON document on stdout; everything else goes to stderr)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO

from common.cli import Environment
from common.config import load_config
from common.exit_codes import ExitCode
from common.logging_setup import setup_logging
from common.units import human_bytes
from validate.checks import DEFAULT_PARALLEL, validate
from validate.metrics import write_textfile
from validate.objects import Checked
from validate.report import Report

log = logging.getLogger("validate")


@dataclass(frozen=True, kw_only=True)
class ValidateOptions:
    config_path: Path
    database: str | None = None
    table: str | None = None
    output_format: str = "text"
    verbose: bool = False
    quick: bool = False
    since: datetime | None = None
    parallel: int = DEFAULT_PARALLEL
    textfile: Path | None = None


def run(opts: ValidateOptions, *, env: Environment | None = None) -> int:
    env = env or Environment()
    out = env.stdout
    cfg = load_config(opts.config_path)
    setup_logging(cfg.logging, verbose=opts.verbose)
    progress = Progress(env.stderr) if env.stderr_isatty else None
    listed = ObjectLister(out if opts.output_format == "text" else None) if opts.verbose else None

    def on_object(c: Checked) -> None:
        if listed is not None:
            listed(c)
        if progress is not None:
            progress(c)

    report = validate(cfg, database=opts.database, table=opts.table, quick=opts.quick, since=opts.since,
                      parallel=opts.parallel, on_object=on_object)
    if progress is not None:
        progress.done()
    emit(report, output_format=opts.output_format, out=out)
    log.info("validate finished: %s", report.summary_line())
    if opts.textfile is not None:
        try:
            write_textfile(opts.textfile, report, quick=opts.quick)
        except OSError as exc:  # the report is out; a monitoring file must not change the verdict
            log.error("cannot write the metrics textfile %s: %s", opts.textfile, exc.strerror or exc)
    return int(ExitCode.OK if report.ok else ExitCode.FAILURE)


def emit(report: Report, *, output_format: str, out: TextIO) -> None:
    if output_format == "json":
        out.write(report.to_json())
    else:
        out.write("\n".join(report.text_lines()) + "\n")
    out.flush()


class ObjectLister:
    """--verbose: one line per object checked; on stdout in text mode, in the log (stderr) with JSON
    so stdout stays a single document."""

    def __init__(self, out: TextIO | None) -> None:
        self.out = out

    def __call__(self, c: Checked) -> None:
        status = "ok" if not c.problems else ", ".join(sorted({p.type for p in c.problems}))
        line = f"checked {c.key}: {c.rows} rows, {human_bytes(c.bytes)}, {status}"
        if self.out is not None:
            self.out.write(line + "\n")
        else:
            log.info("%s", line)


class Progress:
    """A single self-rewriting status line on a terminal, at most a few times a second."""

    def __init__(self, stream: TextIO, *, every: float = 0.25) -> None:
        self.stream = stream
        self.every = every
        self.objects = self.bytes = 0
        self.last = 0.0

    def __call__(self, c: Checked) -> None:
        self.objects += 1
        self.bytes += c.bytes
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.stream.write(f"\rvalidate: {self.objects} objects, {human_bytes(self.bytes)} checked")
            self.stream.flush()

    def done(self) -> None:
        if self.objects:
            self.stream.write("\r\033[K")
            self.stream.flush()
