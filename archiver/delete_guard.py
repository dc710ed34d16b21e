"""What keeps the archiver's deletes from removing the rows it archived, other than a foreign key
(archiver/references.py): checked in the catalog before anything is exported, and told apart from
rows that changed when a delete fails or removes fewer rows than it should.

An object whose rows stay in the table is the one thing a move must never leave behind, and
append-only audit tables are common: a role without DELETE, a trigger that raises on DELETE, one
that returns NULL (or keeps rows under a legal hold), a DO INSTEAD rule, a row-level security
policy. Before, the first two failed the table as an unexpected error with the run's stored
batches still in the archive, and the others rolled every batch back as "changed since export",
exit 0, run after run."""
from __future__ import annotations

from typing import Any

import psycopg

from common.errors import ArchiverError, ErrorKind

#: Whether the session can write at all (a standby, or default_transaction_read_only: not
#: transaction_read_only, since the dry run reads in read-only transactions of its own); the
#: archiver's own rights on the table; the rules that rewrite a DELETE on it. A rule on the table
#: named in the statement is the only one that applies, and PostgreSQL checks privileges on it
#: alone too, not on the partitions a DELETE through it reaches.
GUARD_SQL = """
SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only') = 'on',
       current_user, has_table_privilege(c.oid, 'SELECT'), has_table_privilege(c.oid, 'DELETE'),
       pg_has_role(c.relowner, 'MEMBER'), pg_get_userbyid(c.relowner), c.relkind = 'p',
       array(SELECT r.rulename FROM pg_rewrite r WHERE r.ev_class = c.oid AND r.ev_type = '4' AND r.is_instead
             ORDER BY r.rulename)
FROM pg_class c WHERE c.oid = %(oid)s
"""

#: SQLSTATE classes of a failed DELETE that say nothing about the statement: the session or the
#: server (08 connection, 57 operator intervention, 53 resources, 58 system, XX internal) or a
#: conflict that a retry may not meet again (40 deadlock / serialization). Those keep their
#: meaning (archiver/table_job.py); any other error will come back on every try.
TRANSIENT_CLASSES = frozenset({"08", "40", "53", "57", "58", "XX"})


class DeletesRefused(ArchiverError):
    """The database will not delete the archived rows of this table: the table is not archived
    (exit 1 for the run, the other tables still run), and no object of it keeps rows that stay in
    the table. Kind config: the grants, the schema or the table's `where` must change."""

    kind = ErrorKind.CONFIG


def check_deletes(conn: psycopg.Connection[Any], oid: int, table: str, *, retire: bool) -> None:
    """Raise DeletesRefused when the run could not delete what it archives: a standby or a
    read-only session, no SELECT or DELETE right, a DO INSTEAD rule on DELETE, or (retiring whole
    partitions) not the table's owner, whom PostgreSQL asks for to detach and drop a partition."""
    row = conn.execute(GUARD_SQL, {"oid": oid}).fetchone()
    conn.commit()
    if row is None:
        return
    standby, read_only, user, can_select, can_delete, owner, owner_name, partitioned, rules = row
    if standby or read_only:
        why = "a standby in recovery" if standby else "read-only (default_transaction_read_only)"
        raise DeletesRefused(f"{table} refused: the database session is {why}, so no archived row could be deleted;"
                             " point the database's dsn at the primary; nothing was exported or deleted")
    missing = [right for right, ok in (("SELECT", can_select), ("DELETE", can_delete)) if not ok]
    if missing:
        rights = " and ".join(missing)
        raise DeletesRefused(f"{table} refused: role {user} has no {rights} right on it (GRANT {', '.join(missing)} ON"
                             f" {table} TO {user}); nothing was exported or deleted")
    if rules:
        raise DeletesRefused(f"{table} refused: rule {', '.join(rules)} rewrites DELETE on it (DO INSTEAD), so the"
                             " archiver's deletes would not remove the rows it archives; drop the rule or archive"
                             " another table; nothing was exported or deleted")
    if retire and partitioned and not owner:
        raise DeletesRefused(f"{table} refused: expired_partitions detaches partitions, which PostgreSQL allows the"
                             f" table's owner ({owner_name}) only, and role {user} is not a member of it; grant"
                             f" {owner_name} to {user} or set expired_partitions: keep; nothing was exported or deleted")


def refused_by_database(exc: psycopg.Error, table: str, key: str) -> DeletesRefused | None:
    """The DELETE of a batch failed for a reason that will not go away (a trigger that raises,
    a missing right, a check): DeletesRefused saying so, or None for a transient failure."""
    state = exc.sqlstate or ""
    if not state or state[:2] in TRANSIENT_CLASSES:
        return None
    diag = exc.diag
    where = f" ({diag.context.splitlines()[0]})" if diag.context else ""
    return DeletesRefused(f"{table}: the database refused to delete the archived rows of {key}: {diag.message_primary}"
                          f"{where}; the batches stored and not yet deleted were taken back, their rows stay in the table")


def suppressed(table: str, key: str, *, rows: int, deleted: int) -> DeletesRefused:
    """A delete removed fewer rows than the batch holds although none of them changed since the
    export: something keeps them (a BEFORE DELETE trigger returning NULL, a row-level security
    policy), and every run would archive and take the batch back again."""
    return DeletesRefused(f"{table}: deleting the {rows} rows of {key} removed {deleted}, though none of them changed"
                          " since the export: a BEFORE DELETE trigger that returns NULL or a row-level security policy"
                          " keeps them (leave such rows out with the table's `where`); the batches stored and not yet"
                          " deleted were taken back, their rows stay in the table")


#: User triggers on DELETE (row or statement, BEFORE or AFTER) of each relation: FK triggers are
#: internal. A partition inherits its parent's trigger as a clone of its own, so the leaves alone
#: are asked.
DELETE_TRIGGERS_SQL = """
SELECT t.tgrelid, string_agg(DISTINCT quote_ident(t.tgname), ', ')
FROM pg_trigger t
WHERE t.tgrelid = ANY(%(oids)s) AND NOT t.tgisinternal AND t.tgenabled IN ('O', 'A') AND t.tgtype & 8 <> 0
GROUP BY t.tgrelid
"""


def delete_triggers(conn: psycopg.Connection[Any], oids: list[int]) -> dict[int, str]:
    """The DELETE triggers of these relations (leaf partitions), by oid: a leaf dropped whole
    would never fire them. Tried: a history table filled AFTER DELETE got 11 of 379 archived rows
    with expired_partitions: drop; a legal hold BEFORE DELETE would be passed over the same way."""
    if not oids:
        return {}
    rows = conn.execute(DELETE_TRIGGERS_SQL, {"oids": oids}).fetchall()
    return {int(oid): str(names) for oid, names in rows}
