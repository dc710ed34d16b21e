"""Steps 2-3: which tables, and for each its timestamp column, primary key and retention, with
the rows that retention makes eligible now. Tables the archiver cannot take are refused here."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import click
import psycopg

from common.errors import UsageError
from wizard.introspect import (Eligibility, TableDetails, TableInfo, create_index_hint, eligibility,
                               eligible_bytes, inspect, list_tables, resolve_table)
from wizard.model import DEFAULT_RETENTION_DAYS, Flags, PerTable, TableAnswer, non_negative_int
from wizard.prompts import Prompter, human_bytes

LIST_LIMIT = 40
SUGGEST_SCAN = 20


@dataclass(frozen=True)
class TableFlags:
    timestamp: PerTable[str]
    primary_key: PerTable[str]
    retention: PerTable[int]

    @classmethod
    def of(cls, flags: Flags) -> TableFlags:
        return cls(PerTable(flags.timestamp_columns, flag="--timestamp-column", convert=str),
                   PerTable(flags.primary_keys, flag="--primary-key", convert=str),
                   PerTable(flags.retention_days, flag="--retention-days", convert=non_negative_int))

    def check_used(self, chosen: list[TableInfo]) -> None:
        self.timestamp.check_used(chosen)
        self.primary_key.check_used(chosen)
        self.retention.check_used(chosen)


def show_tables(p: Prompter, tables: list[TableInfo]) -> None:
    p.info("Tables (largest first; row counts are the planner's estimates):")
    for i, t in enumerate(tables[:LIST_LIMIT], 1):
        rows = f"~{t.est_rows:,} rows" if t.est_rows is not None else "not analyzed"
        p.info(f"  {i:>3}  {t.qualified:<40} {rows:>16} {human_bytes(t.size_bytes):>10}")
    if len(tables) > LIST_LIMIT:
        p.info(f"  ... and {len(tables) - LIST_LIMIT} smaller tables (type their names)")


def parse_choice(text: str, tables: list[TableInfo]) -> list[TableInfo]:
    picks: list[TableInfo] = []
    for part in (x for x in re.split(r"[,\s]+", text.strip()) if x):
        if part.isdigit():
            index = int(part)
            if not 1 <= index <= min(len(tables), LIST_LIMIT):
                raise UsageError(f"{part}: no table with that number in the list")
            pick = tables[index - 1]
        else:
            pick = resolve_table(tables, part)
        if pick not in picks:
            picks.append(pick)
    if not picks:
        raise UsageError("pick at least one table")
    return picks


def _suggestion(conn: psycopg.Connection[Any], tables: list[TableInfo]) -> str | None:
    """The largest table the archiver can take, as the default answer."""
    for t in tables[:SUGGEST_SCAN]:
        if inspect(conn, t).refusal() is None:
            return t.qualified
    return None


def choose_tables(p: Prompter, conn: psycopg.Connection[Any], flags: Flags) -> list[TableDetails]:
    tables = list_tables(conn)
    if not tables:
        raise UsageError("the database has no tables to archive")
    given: str | None = ",".join(flags.tables) or None
    listed = False
    while True:
        if given is None and p.interactive and not listed:
            show_tables(p, tables)
            listed = True
        text = p.ask("Tables to archive (numbers or names, comma-separated)", flag="--table", given=given,
                     default=_suggestion(conn, tables) if p.interactive and given is None else None)
        given = None
        try:
            details = [inspect(conn, t) for t in parse_choice(text, tables)]
        except UsageError as exc:
            if not p.interactive:
                raise
            p.error(str(exc))
            continue
        accepted = _accept(p, details)
        if len(accepted) == len(details):
            return accepted
        if accepted and p.confirm(f"Continue with {', '.join(d.info.qualified for d in accepted)} only?", default=True):
            return accepted


def _accept(p: Prompter, details: list[TableDetails]) -> list[TableDetails]:
    accepted = []
    for d in details:
        why = d.refusal()
        if why is None:
            accepted.append(d)
        elif not p.interactive:
            raise UsageError(f"refused: {why}")
        else:
            p.error(f"refused: {why}")
    return accepted


def configure_table(p: Prompter, conn: psycopg.Connection[Any], d: TableDetails, tf: TableFlags, *,
                    now: datetime) -> TableAnswer:
    q = d.info.qualified
    listed = ", ".join(f"{c.name} ({c.typname}{', indexed' if c.indexed else ''})" for c in d.candidates)
    p.info(f"\n{q}: timestamp columns: {listed}; {'primary key' if d.primary_key else 'unique key'}: {', '.join(d.key)}")
    ts = p.ask(f"{q}: archive by which timestamp column", flag="--timestamp-column", given=tf.timestamp.get(d.info),
               default=d.candidates[0].name,
               check=lambda v: None if d.candidate(v) else f"not a timestamp, timestamptz or date column of {q} (candidates: {listed})")
    chosen = d.candidate(ts)
    assert chosen is not None
    if not chosen.indexed:
        p.warn(f"{q}.{ts} has no index: every archiving batch will scan the table;"
               f" consider: {create_index_hint(conn, d.info.schema, d.info.name, ts)}")
    if not chosen.not_null:
        p.info(f"  note: rows where {ts} is NULL are never archived")
    pk = key_columns(p.ask(f"{q}: primary key", flag="--primary-key", given=tf.primary_key.get(d.info),
                           default=",".join(d.key), check=lambda v: d.key_problem(key_columns(v))))
    if not d.can_select_delete:
        p.warn(f"the connected user lacks SELECT or DELETE on {q}; the archiver needs both")
    days, elig = _retention(p, conn, d, ts, tf.retention.get(d.info), now=now)
    return TableAnswer(info=d.info, timestamp_column=ts, primary_key=pk, retention_days=days,
                       eligibility=elig, eligible_bytes=eligible_bytes(d, elig))


def key_columns(text: str) -> tuple[str, ...]:
    """`--primary-key` / the answer: a column, or a composite key's columns comma-separated."""
    return tuple(c.strip() for c in text.split(",") if c.strip())


def _retention(p: Prompter, conn: psycopg.Connection[Any], d: TableDetails, ts: str, given: int | None, *,
               now: datetime) -> tuple[int, Eligibility]:
    q = d.info.qualified
    default = DEFAULT_RETENTION_DAYS
    while True:
        days = p.ask(f"{q}: keep rows in the table for how many days", flag="--retention-days", given=given,
                     default=default, type=click.IntRange(min=0))
        elig = eligibility(conn, d, timestamp_column=ts, retention_days=days, now=now)
        p.info("  " + describe_eligibility(elig, days))
        if given is not None or p.confirm(f"{q}: keep {days} days?", default=True):
            return days, elig
        default = days


def describe_eligibility(e: Eligibility, days: int) -> str:
    when = f"older than {days} days (before {e.cutoff:%Y-%m-%d %H:%M} UTC)"
    if e.eligible is None:
        return f"eligible now: not counted (the count ran into the wizard's statement timeout); rows {when}"
    share = e.share
    if e.total is None or share is None:
        return f"eligible now: {e.eligible:,} rows {when}"
    about = "~" if e.total_is_estimate else ""
    return f"eligible now: {e.eligible:,} of {about}{e.total:,} rows ({share:.1%}) are {when}"
