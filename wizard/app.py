"""The wizard's work behind the CLI: check the output path, walk the steps, write the file, load it
back exactly as the archiver does, and print the next commands. Nothing is written before the end."""
from __future__ import annotations

import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import click

from common.cli import Environment
from common.config import load_config
from common.errors import ArchiverError, Interrupted, UsageError
from wizard.database import database_step
from wizard.extras import extras_step, fallback_dir
from wizard.local import local_dir_step, move_to_s3
from wizard.model import Answers, Flags
from wizard.prompts import Prompter, human_bytes
from wizard.render import render_yaml, write_config
from wizard.storage import Prober, default_prober, storage_step
from wizard.tables import TableFlags, choose_tables, configure_table


def check_output(p: Prompter, flags: Flags) -> bool:
    """Whether overwriting is allowed; asked first so nobody answers everything to be refused."""
    out = flags.output
    if out.is_dir():
        raise UsageError(f"--output {out} is a directory")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"--output {out}: directory {parent} does not exist")
    if not out.exists() or flags.force:
        return True
    if not p.interactive:
        raise UsageError(f"{out} exists; pass --force to overwrite it")
    if p.confirm(f"{out} exists. Overwrite it?", default=False):
        return True
    raise UsageError(f"{out} exists and was kept; choose another --output or pass --force")


def gather(p: Prompter, flags: Flags, *, now: datetime, prober: Prober) -> Answers:
    tf = TableFlags.of(flags)
    conn, db = database_step(p, flags)
    with conn:
        details = choose_tables(p, conn, flags)
        tf.check_used([d.info for d in details])
        tables = tuple(configure_table(p, conn, d, tf, now=now) for d in details)
    p.info("")
    s3 = None if flags.local_dir else storage_step(p, flags, eligible_bytes=sum(t.eligible_bytes for t in tables),
                                                   prober=prober)
    if s3 is None:
        beside = flags.output.absolute().parent
        local_dir = local_dir_step(p, flags, beside=beside)
        return Answers(database=db, tables=tables, s3=None, local_dir=local_dir,
                       extras=extras_step(p, flags, beside=beside))
    s3 = s3.model_copy(update={"local_fallback_dir": fallback_dir(p, flags)})
    return Answers(database=db, tables=tables, s3=s3, extras=extras_step(p, flags))


def run(flags: Flags, *, now: datetime | None = None, prober: Prober = default_prober,
        env: Environment | None = None) -> int:
    now = now or datetime.now(timezone.utc)
    p = Prompter(interactive=not flags.non_interactive, env=env)
    try:
        overwrite = check_output(p, flags)
        answers = gather(p, flags, now=now, prober=prober)
    except click.Abort:
        raise Interrupted("interrupted; nothing was written") from None
    write_config(flags.output, render_yaml(answers, now=now), overwrite=overwrite)
    try:
        cfg = load_config(flags.output)  # exactly as the archiver loads it
        for t in answers.tables:
            cfg.table(answers.database.name, t.info.name, t.info.schema)
    except ArchiverError as exc:
        raise ArchiverError(f"the written file does not load as a config (a wizard bug): {exc}") from None
    p.info("")
    p.info(f"Wrote {flags.output} (mode 0600); it loads as the archiver loads it.")
    for line in next_steps(answers, flags.output):
        p.info(line)
    return 0


def next_steps(a: Answers, output: Path) -> list[str]:
    cfg = shlex.quote(str(output))
    eligible = sum(t.eligibility.eligible or 0 for t in a.tables)
    size = human_bytes(sum(t.eligible_bytes for t in a.tables))
    lines = ["", "Next:",
             f"  export {a.database.password_env}='...'   # the database password; it is not in the file"]
    lines += [f"  export {env}='...'" for env in a.extras.secret_envs]
    lines += [f"  python -m archiver.main --config {cfg} --dry-run   # checks everything, changes nothing",
              f"  python -m archiver.main --config {cfg}             # archives ~{eligible:,} rows ({size} of table data)",
              "  then run it on a timer, e.g. cron:",
              f"    0 * * * *  cd {shlex.quote(str(Path.cwd()))} && {shlex.quote(sys.executable)} -m archiver.main"
              f" --config {shlex.quote(str(output.resolve()))}",
              "  or a systemd timer (OnCalendar=hourly) running the same command."]
    if a.local_dir:
        lines += move_to_s3(a.local_dir, output)
    return lines
