"""`make demo`: seed ~1M audit rows in the local PostgreSQL, archive the expired ones, print a true
summary, then run the next steps and print them as commands to copy.

The archive goes to `demo-data/archive/` (`storage: local`): no server, so it and
`demo-data/config.yaml` outlive the demo and every printed command keeps working. `--s3`
(`make demo S3=1`) archives to an in-memory S3 endpoint (moto) instead, stopped with the demo.
Honours ARCHIVER_DEMO_DSN (an admin DSN of the server to use), ARCHIVER_DEMO_ROWS (rows to seed)
and ARCHIVER_DEMO_DATABASE (the database it drops and creates, default archiver_demo)."""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from demo_steps import Examples, choose_examples, next_steps, shown
from demo_summary import print_summary

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "demo-data"
CONFIG = WORK / "config.yaml"
BUCKET = "audit-archives"
RETENTION_DAYS = 90

SEED = """
CREATE TABLE audit_logs (
    id bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL,
    user_id bigint NOT NULL,
    actor_email text NOT NULL,
    target_email text,
    request_id uuid NOT NULL,
    client_ip inet,
    user_agent text,
    payload jsonb,
    success boolean NOT NULL,
    amount numeric(12,2)
);
INSERT INTO audit_logs (created_at, user_id, actor_email, target_email, request_id, client_ip, user_agent, payload, success, amount)
SELECT now() - (g::float8 / %(rows)s) * interval '400 days',
       g %% 5000, 'user' || (g %% 5000) || '@example.com', 'target' || (g %% 977) || '@example.org',
       md5(g::text)::uuid, ('10.' || (g %% 250) || '.' || (g %% 200) || '.' || (g %% 250))::inet,
       'Mozilla/5.0 (X11; Linux x86_64) demo/' || (g %% 17),
       jsonb_build_object('action', (ARRAY['login','logout','update','delete'])[1 + g %% 4], 'n', g, 'note', md5(g::text)),
       g %% 10 <> 0, (g %% 100000) / 100.0
FROM generate_series(1, %(rows)s) g;
CREATE INDEX audit_logs_created_at ON audit_logs (created_at);
ANALYZE audit_logs;
"""


def admin_dsn() -> str:
    return os.environ.get("ARCHIVER_DEMO_DSN", "host=127.0.0.1 port=5432 user=root dbname=postgres")


def connect_or_explain(dsn: str) -> psycopg.Connection:
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        d = conninfo_to_dict(dsn)
        where = f"{d.get('host', 'localhost')}:{d.get('port', 5432)} as user {d.get('user', '?')}"
        from common.pg.db import libpq_reason

        reason = libpq_reason(exc)
        sys.exit(f"demo: cannot reach PostgreSQL at {where}: {reason}\n"
                 "demo: start PostgreSQL there, or set ARCHIVER_DEMO_DSN to an admin DSN of a server that allows CREATE DATABASE.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/demo.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--s3", action="store_true",
                        help="archive to an in-memory S3 endpoint (stopped with the demo) instead of demo-data/archive/")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows = int(os.environ.get("ARCHIVER_DEMO_ROWS", "1000000"))
    demo_dsn = fresh_database(admin_dsn(), os.environ.get("ARCHIVER_DEMO_DATABASE", "archiver_demo"))
    examples = seed(demo_dsn, rows)
    if WORK.exists():  # an earlier run's archive and checkpoints belong to the database just dropped
        shutil.rmtree(WORK)
        print(f"demo: removed {shown(WORK, ROOT)}/ of an earlier run (its database was just recreated)", flush=True)
    with storage(s3=args.s3) as store_config:
        CONFIG.parent.mkdir(parents=True, exist_ok=True)
        CONFIG.write_text(yaml.safe_dump(config_document(demo_dsn, store_config), sort_keys=False))
        archive(demo_dsn, rows)
        steps = next_steps(shown(CONFIG, ROOT), examples, python=shown(Path(sys.executable), ROOT))
        for step in steps:
            print(f"\ndemo: {step.why}", flush=True)
            run(step.argv)
    print(f"\n=== explore the archive: run these from {ROOT} ===")
    if args.s3:
        print("# (they ran above; the in-memory S3 endpoint stopped with the demo, so now they would fail:\n"
              "#  run `make demo` without S3=1 for an archive in demo-data/archive/ that stays)")
    for step in steps:
        print(f"# {step.why}\n{step.command}")


def fresh_database(dsn: str, name: str) -> str:
    with connect_or_explain(dsn) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(dsn, dbname=name)


def seed(dsn: str, rows: int) -> Examples:
    """Seed the table; return what the next steps will look at."""
    print(f"demo: seeding {rows:,} audit rows spanning 400 days ...", flush=True)
    t0 = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in SEED.split(";\n"):
            if statement.strip():
                conn.execute(statement, {"rows": rows} if "%(rows)s" in statement else None)
        (eligible,) = conn.execute("SELECT count(*) FROM audit_logs WHERE created_at < now() - make_interval(days => %s)",
                                   (RETENTION_DAYS,)).fetchall()[0]
        examples = choose_examples(conn, retention_days=RETENTION_DAYS)
    print(f"demo: seeded in {time.monotonic() - t0:.1f}s; {eligible:,} rows are older than {RETENTION_DAYS} days", flush=True)
    return examples


@contextmanager
def storage(*, s3: bool) -> Iterator[dict[str, Any]]:
    """The config keys of where the archive goes, for as long as it is there."""
    if not s3:
        yield {"storage": "local", "local_dir": str(WORK / "archive")}
        return
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log would drown the demo
    os.environ.update(AWS_ACCESS_KEY_ID="demo", AWS_SECRET_ACCESS_KEY="demo", AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # port 0: it binds a free one
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield {"s3": {"bucket": BUCKET, "endpoint_url": endpoint, "local_fallback_dir": str(WORK / "fallback")},
               "storage": "s3"}
    finally:
        server.stop()


def config_document(dsn: str, store: dict[str, Any]) -> dict[str, Any]:
    return {
        **store,
        "defaults": {"retention_days": RETENTION_DAYS, "batch_size": 50000},
        "databases": [{"name": "demo_db", "dsn": dsn, "tables": [{"name": "audit_logs"}]}],
        "logging": {"file": str(WORK / "archiver.log")},
        "checkpoint_dir": str(WORK / "checkpoints"),
        "monitoring": {"enabled": False},
    }


def archive(dsn: str, seeded: int) -> None:
    from common.config import load_config
    from common.archive.s3client import primary_storage

    cfg = load_config(CONFIG)
    python, config = shown(Path(sys.executable), ROOT), shown(CONFIG, ROOT)
    run([python, "-m", "archiver.main", "--config", config, "--dry-run"])
    with psycopg.connect(dsn) as conn:
        # The run's cutoff is at least this old: every row older must be gone. Rows keep ageing
        # past 90 days meanwhile (one every ~35 s at 1M rows): counted from now(), 1 left looks lost.
        (started,) = conn.execute("SELECT now()").fetchall()[0]
    t0 = time.monotonic()
    run([python, "-m", "archiver.main", "--config", config])
    elapsed = time.monotonic() - t0
    with psycopg.connect(dsn) as conn:
        left, old = conn.execute("SELECT count(*), count(*) FILTER (WHERE created_at < %s - make_interval(days => %s))"
                                 " FROM audit_logs", (started, RETENTION_DAYS)).fetchall()[0]
    where = shown(Path(cfg.local_dir), ROOT) + "/" if cfg.local_dir else f"s3://{cfg.s3.bucket}/ at {cfg.s3.endpoint_url}"
    print_summary(primary_storage(cfg), prefix=cfg.s3.prefix, where=where, retention_days=RETENTION_DAYS,
                  seeded=seeded, left=left, expired_left=old, elapsed=elapsed,
                  work=shown(WORK, ROOT) + "/")


def run(cmd: Sequence[str]) -> None:
    """Run a tool from the repository root, as the printed commands are run; stop the demo if it fails."""
    print(f"demo: $ {shlex.join(cmd)}", flush=True)
    code = subprocess.run(cmd, cwd=ROOT).returncode
    if code != 0:
        sys.exit(f"demo: command failed with exit code {code}")


if __name__ == "__main__":
    main()
