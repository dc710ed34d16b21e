"""Throwaway databases on the test server, for the tests (tests/conftest.py) and the soak
(scripts/soak_env.py), which both put this folder on the path."""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

ADMIN_DSN = os.environ.get("ARCHIVER_TEST_DSN", "host=127.0.0.1 port=5432 user=root dbname=postgres")


@contextmanager
def throwaway_database(prefix: str = "archiver_test", *, admin_dsn: str = ADMIN_DSN) -> Iterator[str]:
    """Create a database on the test server, yield its DSN, drop it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(admin_dsn, dbname=name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
