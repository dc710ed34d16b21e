"""The SQL of a move, on the mover's connection: the deletes that remove exactly the rows of stored
batches (archiver/selection.py), retried when a lock timeout hits, each leaving its transaction
open for the table job to commit once the counts agree; and the count of a resumed batch's keys
still in the table (archiver/ledger.py)."""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import psycopg
import pyarrow as pa

from archiver.delete_guard import refused_by_database
from archiver.encoding import Encoded, key_lists, typed_column
from archiver.selection import Selection
from common.errors import ArchiverError

log = logging.getLogger("archiver")
#: Tries of a delete that hits lock timeouts, waiting 1, 2, 4 s between them (issue 3).
DELETE_ATTEMPTS = 4


class RowMover:
    def __init__(self, conn: psycopg.Connection[Any], sel: Selection, *, log_extra: dict[str, str]) -> None:
        self.conn, self.sel, self.ctx = conn, sel, log_extra
        self.table = f"{sel.table.schema_}.{sel.table.name}"

    def delete_batch(self, enc: Encoded) -> int:
        """Delete the rows of one batch by their keys; how many went."""
        return self._delete(self.sel.delete_query(key_lists(enc.keys), enc.xmins), enc.manifest.key)

    def count_unchanged(self, enc: Encoded) -> int:
        """How many of the batch's rows are still in the table as exported (after a rollback)."""
        query = self.sel.unchanged_query(key_lists(enc.keys), enc.xmins).as_bytes(self.conn)
        row = self.conn.execute(query, prepare=False).fetchone()
        self.conn.commit()
        return int(row[0]) if row else 0

    def delete_group(self, group: Sequence[Encoded]) -> int:
        """Delete the rows of several batches of ONE read window in one statement: by key range
        where that is exact (Selection.range_delete_query), by their keys otherwise."""
        xmins = pa.chunked_array([enc.xmins for enc in group])
        what = group[0].manifest.key + (f" and {len(group) - 1} more batches" if len(group) > 1 else "")
        if self.sel.range_delete_ok:
            return self._delete(self.sel.range_delete_query(group[0].lo, group[-1].hi, xmins), what)
        return self._delete(self.sel.delete_query(key_lists(pa.concat_tables([enc.keys for enc in group])), xmins), what)

    def count_present(self, keys: pa.Table) -> int:
        """How many of these keys (the key columns of an archive object) are in the table."""
        # typed: JSONL keeps keys as text
        lists = [typed_column(keys, k, self.sel).to_pylist() for k in self.sel.keys]
        row = self.conn.execute(self.sel.present_query(lists).as_bytes(self.conn), prepare=False).fetchone()
        self.conn.commit()
        return int(row[0]) if row else 0

    def count_kept(self) -> int:
        """Expired rows left in the table because a foreign key still references them."""
        row = self.conn.execute(self.sel.kept_query().as_bytes(self.conn), prepare=False).fetchone()
        self.conn.commit()
        return int(row[0]) if row else 0

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    def _delete(self, statement: Any, what: str) -> int:
        """Run one DELETE (`what`: the batches it is for); a failure that will recur on every try
        (a trigger that raises, a missing right) is DeletesRefused."""
        query = statement.as_bytes(self.conn)
        for attempt in range(DELETE_ATTEMPTS):
            try:
                if any(ref.deferrable for ref in self.sel.references):
                    # checked at the end of the DELETE, not at COMMIT: a failure lands below
                    self.conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
                # prepare=False: the keys are literals, so no two statements are alike anyway
                return self.conn.execute(query, prepare=False).rowcount
            except psycopg.errors.ForeignKeyViolation as exc:
                # A reference committed while the DELETE ran: the predicate's NOT EXISTS used the
                # statement's snapshot, the constraint's trigger (NO ACTION / RESTRICT) looks again
                # (one committed before the DELETE leaves its row out and the count short instead).
                # Reported as nothing deleted: the caller takes it like rows changed since export.
                self.conn.rollback()
                log.warning("delete refused: %s (%s); a row was referenced after its export, its batch stays in the table",
                            exc.diag.message_primary, exc.diag.message_detail, extra=self.ctx)
                return 0
            except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as exc:
                self.conn.rollback()
                if attempt == DELETE_ATTEMPTS - 1:
                    raise ArchiverError(f"delete kept timing out on locks ({exc.diag.message_primary}); "
                                        "the batch stays archived and its rows will be deleted on the next run") from None
                log.warning("delete hit a lock timeout; retrying in %ds", 2 ** attempt, extra=self.ctx)
                time.sleep(2 ** attempt)
            except psycopg.Error as exc:
                refused = refused_by_database(exc, self.table, what)
                if refused is None:
                    raise
                self.conn.rollback()
                raise refused from exc
        raise AssertionError("unreachable")
