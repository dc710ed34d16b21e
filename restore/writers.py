"""What would change the restored rows on their way into the target: BEFORE row triggers (on the
table or the partitions the rows are routed to) and rules. Restore puts back what was archived,
evidence included, so it refuses such a target before writing anything.

Tried as production has it: a trigger stamping `created_at := now()` (forgery protection)
restored every row with a new timestamp, exit 0; one returning NULL kept every row out and the
report called them "skipped" (already present). Disabling the trigger on a live table would
disable it for the application too, hence the first remedy: a new table (--target-table)."""
from __future__ import annotations

from typing import Any

import psycopg

from common.errors import ArchiverError, ErrorKind
from restore.target import LiveTable

#: pg_trigger.tgtype bits (PostgreSQL's trigger.h).
ROW, BEFORE, INSERT, UPDATE, INSTEAD = 1, 2, 4, 16, 64

# BEFORE row triggers on the events (tgtype bits) a restore's statements fire. tgenabled 'O' and
# 'A' fire in a normal session ('R' only under session_replication_role = replica, 'D' never); a
# trigger a partition inherits (tgparentid) is named once, on its table.
TRIGGERS_SQL = """
SELECT 'trigger ' || quote_ident(t.tgname) || ' on ' || t.tgrelid::regclass::text
FROM pg_trigger t
WHERE NOT t.tgisinternal AND t.tgparentid = 0 AND t.tgenabled IN ('O', 'A')
  AND (t.tgrelid = %(oid)s OR t.tgrelid IN (SELECT relid FROM pg_partition_tree(%(oid)s)))
  AND t.tgtype & %(row_before)s = %(row_before)s AND t.tgtype & %(instead)s = 0 AND t.tgtype & %(events)s <> 0
ORDER BY 1
"""
# Any rule on INSERT, and on UPDATE too for skip and overwrite, DO ALSO too: their INSERT ... ON
# CONFLICT is refused outright on a table with either, and a DO INSTEAD rule would keep the rows out. A rule applies to
# the table named in the statement only.
RULES_SQL = """
SELECT 'rule ' || quote_ident(r.rulename) FROM pg_rewrite r
WHERE r.ev_class = %(oid)s AND (r.ev_type = '3' OR (r.ev_type = '2' AND %(updates)s)) ORDER BY 1
"""


class TargetRewrites(ArchiverError):
    """The target would change or drop restored rows: nothing is restored (exit 1)."""

    kind = ErrorKind.CONFIG


def check_writers(conn: psycopg.Connection[Any], live: LiveTable, *, strategy: str) -> None:
    """Raise TargetRewrites when a BEFORE row trigger or a rule on INSERT (and, for overwrite, on
    UPDATE) would see the restored rows."""
    events = INSERT | (UPDATE if strategy == "overwrite" else 0)
    params = {"oid": live.oid, "row_before": ROW | BEFORE, "instead": INSTEAD, "events": events,
              "updates": strategy in ("skip", "overwrite")}
    found = [r[0] for r in conn.execute(TRIGGERS_SQL, params).fetchall()]
    found += [r[0] for r in conn.execute(RULES_SQL, params).fetchall()]
    if found:
        raise TargetRewrites(
            f"{live.name}: {', '.join(found)} would see every restored row before it is stored and may change or drop"
            " it, so the table would not hold what was archived. Restore into a new table (--target-table), or"
            " disable it for the restore (ALTER TABLE ... DISABLE TRIGGER; it then stops firing for the application"
            " too)")
