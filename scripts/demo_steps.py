"""The demo's next steps: what to look at in the archive it just made (a month, a user, a day, all
taken from the seeded rows so each command has something to show), and the commands, exactly as
they are run and printed."""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import psycopg

DATABASE = "demo_db"
TABLE = "audit_logs"
RESTORED_TABLE = "audit_logs_restored"
QUERY_COLUMNS = "id,created_at,actor_email,client_ip,payload,success"


@dataclass(frozen=True)
class Examples:
    first_day: date  # of the last whole calendar month the archiver moves (UTC)
    last_day: date
    user_id: int  # the busiest user of that month (the README's 42 on a tie)
    day: date  # that user's first day in the month


@dataclass(frozen=True)
class Step:
    why: str
    argv: tuple[str, ...]

    @property
    def command(self) -> str:
        return " ".join(_quote(word) for word in self.argv)


def _quote(word: str) -> str:
    """As a person would type it: SQL with 'literals' inside double quotes (where nothing of it
    is special to the shell), anything else as shlex quotes it."""
    if "'" in word and not set(word) & set('"$`\\!'):
        return f'"{word}"'
    return shlex.quote(word)


#: With the database's clock, as the archiver's cutoff: the month before the cutoff's month is
#: archived whole. The busiest user of that month (the one nearest 42 on a tie, as in the README)
#: and their first day in it.
_EXAMPLES = """
WITH month AS (
    SELECT date_trunc('month', (now() - make_interval(days => %(retention)s)) AT TIME ZONE 'UTC') - interval '1 month' AS first
), busiest AS (
    SELECT user_id, min(created_at AT TIME ZONE 'UTC') AS first_seen
    FROM audit_logs, month
    WHERE created_at >= month.first AT TIME ZONE 'UTC' AND created_at < (month.first + interval '1 month') AT TIME ZONE 'UTC'
    GROUP BY user_id ORDER BY count(*) DESC, abs(user_id - 42), user_id LIMIT 1
)
SELECT month.first::date, (month.first + interval '1 month - 1 day')::date, busiest.user_id, busiest.first_seen::date
FROM month LEFT JOIN busiest ON true
"""


def choose_examples(conn: psycopg.Connection[Any], *, retention_days: int) -> Examples:
    """Before the archiver runs (the rows are still in the table)."""
    row = conn.execute(_EXAMPLES, {"retention": retention_days}).fetchone()
    assert row is not None
    first, last, user_id, day = row
    if user_id is None:
        raise SystemExit(f"demo: no rows between {first} and {last}: seed more rows (ARCHIVER_DEMO_ROWS)")
    return Examples(first_day=first, last_day=last, user_id=int(user_id), day=day)


def next_steps(config: str, ex: Examples, *, python: str) -> list[Step]:
    def tool(name: str, *args: str) -> tuple[str, ...]:
        return (python, "-m", f"{name}.main", "--config", config, *args)

    table = ("--database", DATABASE, "--table", TABLE)
    month = ("--start-date", ex.first_day.isoformat(), "--end-date", ex.last_day.isoformat())
    user = ("--where", f"user_id = {ex.user_id}")
    query = (*table, *month, *user, "--columns", QUERY_COLUMNS)
    # erase takes no dates: the month goes into its condition (all of a user's rows would list
    # nearly every object of the archive), with the UTC offset spelled out
    in_month = (f"user_id = {ex.user_id} AND created_at >= '{ex.first_day} 00:00:00+00'"
                f" AND created_at < '{ex.last_day + timedelta(days=1)} 00:00:00+00'")
    day = ex.day.isoformat()
    return [
        Step("check every archived object against its manifest, the run digest and the database", tool("validate")),
        Step(f"user {ex.user_id}'s actions in {ex.first_day:%B %Y}, read from the archive in place", tool("query", *query)),
        Step("the same as CSV, for an auditor", tool("query", *query, "--output-format", "csv")),
        Step(f"restore {day} into a new table, {RESTORED_TABLE} (skip: a rerun restores nothing twice)",
             tool("restore", *table, "--restore-all", "--start-date", day, "--end-date", day,
                  "--target-table", RESTORED_TABLE, "--conflict-strategy", "skip")),
        Step(f"what erasing user {ex.user_id}'s rows of {ex.first_day:%B %Y} would rewrite (--dry-run changes nothing)",
             tool("erase", *table, "--where", in_month, "--dry-run")),
        Step("what this archive would cost on S3, measured from the archive itself", tool("cost")),
    ]


def shown(path: Path, root: Path) -> str:
    """A path as the commands show it: relative to the repository root when it is under it."""
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
