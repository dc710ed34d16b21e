"""`make demo`: seed ~1M audit rows in the local PostgreSQL, archive the expired ones to a local S3
endpoint (moto), and print a summary. Honours ARCHIVER_DEMO_DSN (an admin DSN of the server to use)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import yaml
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "demo-data"
ROWS = int(os.environ.get("ARCHIVER_DEMO_ROWS", "1000000"))
DB = "archiver_demo"

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
       g %% 50000, 'user' || (g %% 50000) || '@example.com', 'target' || (g %% 977) || '@example.org',
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
        from common.db import libpq_reason

        reason = libpq_reason(exc)
        sys.exit(f"demo: cannot reach PostgreSQL at {where}: {reason}\n"
                 "demo: start PostgreSQL there, or set ARCHIVER_DEMO_DSN to an admin DSN of a server that allows CREATE DATABASE.")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    dsn = admin_dsn()
    with connect_or_explain(dsn) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
    demo_dsn = make_conninfo(dsn, dbname=DB)
    print(f"demo: seeding {ROWS:,} audit rows spanning 400 days ...", flush=True)
    t0 = time.monotonic()
    with psycopg.connect(demo_dsn, autocommit=True) as conn:
        for statement in SEED.split(";\n"):
            if statement.strip():
                conn.execute(statement, {"rows": ROWS} if "%(rows)s" in statement else None)
        (eligible,) = conn.execute("SELECT count(*) FROM audit_logs WHERE created_at < now() - interval '90 days'").fetchall()[0]
    print(f"demo: seeded in {time.monotonic() - t0:.1f}s; {eligible:,} rows are older than 90 days", flush=True)

    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log would drown the demo

    os.environ.update(AWS_ACCESS_KEY_ID="demo", AWS_SECRET_ACCESS_KEY="demo", AWS_DEFAULT_REGION="us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="audit-archives")
        config = write_config(demo_dsn, endpoint)
        run([sys.executable, "-m", "archiver.main", "--config", str(config), "--dry-run"])
        t1 = time.monotonic()
        code = run([sys.executable, "-m", "archiver.main", "--config", str(config)])
        elapsed = time.monotonic() - t1
        summarize(demo_dsn, endpoint, eligible, elapsed, code)
        run([sys.executable, "-m", "validate.main", "--config", str(config)], check=False)
    finally:
        server.stop()


def write_config(dsn: str, endpoint: str) -> Path:
    WORK.mkdir(exist_ok=True)
    cfg = {
        "s3": {"bucket": "audit-archives", "endpoint_url": endpoint, "local_fallback_dir": str(WORK / "fallback")},
        "defaults": {"retention_days": 90, "batch_size": 50000},
        "databases": [{"name": "demo_db", "dsn": dsn, "tables": [{"name": "audit_logs"}]}],
        "logging": {"file": str(WORK / "archiver.log")},
        "checkpoint_dir": str(WORK / "checkpoints"),
        "monitoring": {"enabled": False},
    }
    path = WORK / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run(cmd: list[str], *, check: bool = True) -> int:
    print("demo: $ " + " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd)), flush=True)
    code = subprocess.run(cmd, cwd=ROOT).returncode
    if check and code != 0:
        sys.exit(f"demo: command failed with exit code {code}")
    return code


def summarize(dsn: str, endpoint: str, eligible: int, elapsed: float, code: int) -> None:
    import boto3

    with psycopg.connect(dsn) as conn:
        left, old = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE created_at < now() - interval '90 days') FROM audit_logs").fetchall()[0]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    objects = [o for p in s3.get_paginator("list_objects_v2").paginate(Bucket="audit-archives") for o in p.get("Contents", [])]
    data = [o for o in objects if not o["Key"].endswith(".manifest.json")]
    size = sum(o["Size"] for o in data)
    print("\n=== demo summary ===")
    print(f"rows eligible (older than 90 days): {eligible:,}")
    print(f"rows archived and deleted:          {eligible - old:,} in {elapsed:.1f}s ({(eligible - old) / max(elapsed, 1e-9):,.0f} rows/s)")
    print(f"rows left in the table:             {left:,} (expired rows left: {old:,})")
    print(f"archive objects:                    {len(data):,} Parquet files + {len(objects) - len(data):,} manifests, {size / 1e6:.1f} MB")
    print(f"archiver exit code:                 {code}")
    print(f"config and logs:                    {WORK}")


if __name__ == "__main__":
    main()
