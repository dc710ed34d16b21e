"""The soak's concurrent writer (scripts/soak.py): live inserts, updates and deletes on the soak
table while archivers run, and the independent accounting of what the table must hold: every id it
inserted or seeded, minus the ones its own DELETE removed, each with the last `v` its UPDATE set.

Only what PostgreSQL confirms counts: each statement runs in autocommit and returns the rows it
touched (RETURNING), so a row the archiver moved first is simply not touched. Updates and deletes
aim mostly just above the oldest row left, where the archiver is working, to race with it."""
from __future__ import annotations

import random
import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from soak_env import TABLE


class Writer:
    def __init__(self, dsn: str, *, seed: int, seeded_rows: int, rate: float) -> None:
        self.dsn, self.rate = dsn, rate
        self.rng = random.Random(seed)
        #: id -> the v it must have (0 until an update): the rows that must be in table ∪ archive.
        self.expected: dict[int, int] = dict.fromkeys(range(1, seeded_rows + 1), 0)
        self.max_id = seeded_rows
        self.counts = {"insert": 0, "update": 0, "delete": 0, "missed": 0}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True, name="soak-writer")
        self._thread.start()

    def stop(self) -> None:
        """Returns once the last statement has committed: `expected` is final until start()."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.error is not None:
            raise RuntimeError(f"the soak's writer failed: {self.error}") from self.error

    def _run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute("SET lock_timeout = '10s'")
                frontier = self._frontier(conn)
                n = 0
                while not self._stop.is_set():
                    started = time.monotonic()
                    self._one(conn, frontier)
                    n += 1
                    if n % 50 == 0:
                        frontier = self._frontier(conn)
                    self._stop.wait(max(0.0, 1 / self.rate - (time.monotonic() - started)))
        except BaseException as exc:  # noqa: BLE001 - raised again by stop()
            self.error = exc

    def _one(self, conn: psycopg.Connection[Any], frontier: int) -> None:
        op = self.rng.choices(("insert", "update", "delete"), weights=(4, 4, 2))[0]
        if op == "insert":
            self._insert(conn)
            return
        if self.rng.random() < 0.7:  # where the archiver is deleting
            target = min(self.max_id, frontier + self.rng.randrange(5000))
        else:
            target = self.rng.randint(1, self.max_id)
        try:
            if op == "update":
                row = conn.execute(sql.SQL("UPDATE {} SET v = v + 1 WHERE id = %s RETURNING v").format(
                    sql.Identifier(TABLE)), (target,)).fetchone()
            else:
                row = conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s RETURNING id").format(
                    sql.Identifier(TABLE)), (target,)).fetchone()
        except psycopg.errors.LockNotAvailable:  # an archiver's delete holds the row: try another
            self.counts["missed"] += 1
            return
        if row is None:  # archived (or deleted) already
            self.counts["missed"] += 1
            return
        self.counts[op] += 1
        if op == "update":
            self.expected[target] = int(row[0])
        else:
            del self.expected[target]

    def _insert(self, conn: psycopg.Connection[Any]) -> None:
        """Rows of any age up to 400 days: many late-arriving ones already expired (into days
        archived before), the others expiring as the soak goes."""
        days = self.rng.uniform(0, 400)
        row = conn.execute(sql.SQL("INSERT INTO {} (created_at, payload) VALUES (now() - %s * interval '1 day', %s) "
                                   "RETURNING id").format(sql.Identifier(TABLE)),
                           (days, f"w{self.rng.getrandbits(64):016x}")).fetchone()
        assert row is not None
        new = int(row[0])
        self.expected[new] = 0
        self.max_id = max(self.max_id, new)
        self.counts["insert"] += 1

    @staticmethod
    def _frontier(conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(sql.SQL("SELECT min(id) FROM {}").format(sql.Identifier(TABLE))).fetchone()
        return int(row[0]) if row and row[0] is not None else 1
