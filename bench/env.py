"""What every part of the benchmark needs: a local S3 endpoint, tool configs, and a way to run a
command while measuring its wall time and peak RSS."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import yaml

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BUCKET = "audit-archives"
DB_NAME = "production_db"  # the configured name: part of every archive key
#: moto only; never real credentials.
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Runs in its own interpreter: the server must not share a GIL with the baseline's boto3 loop in
# this process, just as it shares none with the tools' processes.
_MOTO = """
import logging, sys, time
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log line per request
ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False).start()
while True:
    time.sleep(3600)
"""


@contextmanager
def moto_endpoint() -> Iterator[str]:
    """A moto ThreadedMotoServer on a free loopback port, in a child process."""
    port = free_port()
    proc = subprocess.Popen([PYTHON, "-c", _MOTO, str(port)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            env=dict(os.environ, **AWS_ENV))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the moto S3 server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def s3_client(endpoint: str) -> Any:
    return boto3.session.Session(aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
                                 aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
                                 region_name="us-east-1").client("s3", endpoint_url=endpoint)


def write_config(path: Path, *, dsn: str, endpoint: str, bucket: str, batch_size: int,
                 table_options: dict[str, Any] | None = None) -> Path:
    """A config as an operator would write it: retention 90 days, S3 storage at the endpoint.
    table_options replace or add to the table's entry (the partitioned variant's key and
    expired_partitions)."""
    work = path.parent
    table = {"name": "audit_logs", "schema": "public", "timestamp_column": "created_at", "primary_key": "id",
             **(table_options or {})}
    cfg: dict[str, Any] = {
        "s3": {"bucket": bucket, "endpoint_url": endpoint, "region": "us-east-1",
               "local_fallback_dir": str(work / "fallback")},
        "storage": "s3",
        "defaults": {"retention_days": 90, "batch_size": batch_size},
        "databases": [{"name": DB_NAME, "dsn": dsn, "tables": [table]}],
        "logging": {"file": str(work / f"{path.stem}.log"), "level": "INFO"},
        "checkpoint_dir": str(work / "checkpoints"),
        # No endpoints; the textfile is where a run leaves archiver_s3_requests_total (requests per object).
        "monitoring": {"enabled": True, "health_port": None, "metrics_port": None,
                       "textfile_path": str(metrics_textfile(path))},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def metrics_textfile(config: Path) -> Path:
    return config.with_suffix(".prom")


def s3_requests(config: Path) -> dict[str, int]:
    """The S3 requests the archiver run of this config sent, by operation (its metrics textfile's
    archiver_s3_requests_total); empty when the run wrote none."""
    from prometheus_client.parser import text_string_to_metric_families

    path = metrics_textfile(config)
    if not path.exists():
        return {}
    return {s.labels["operation"]: int(s.value) for f in text_string_to_metric_families(path.read_text())
            for s in f.samples if s.name == "archiver_s3_requests_total"}


@dataclass
class Measured:
    seconds: float
    peak_rss_mb: float
    returncode: int
    stdout: str
    stderr: str

    def tail(self, lines: int = 5) -> str:
        return "\n".join((self.stderr or self.stdout).strip().splitlines()[-lines:])


def measure(cmd: Sequence[str], *, log: Path, env: dict[str, str] | None = None,
            stdin: Path | None = None) -> Measured:
    """Run cmd to completion; its peak RSS comes from wait4's rusage of that very child."""
    full_env = dict(os.environ, **AWS_ENV, **(env or {}))
    out_path, err_path = log.with_suffix(".out"), log.with_suffix(".err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err, \
            open(stdin if stdin else os.devnull, "rb") as inp:
        started = time.monotonic()
        proc = subprocess.Popen(list(cmd), stdin=inp, stdout=out, stderr=err, env=full_env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
    return Measured(seconds, usage.ru_maxrss / 1024, proc.returncode,
                    out_path.read_text(errors="replace"), err_path.read_text(errors="replace"))


def implemented(tool: str) -> bool:
    """The stub packages print "not implemented" and exit 1 for any arguments, --help included."""
    done = subprocess.run([PYTHON, "-m", f"{tool}.main", "--help"], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    return done.returncode == 0 and "not implemented" not in (done.stdout + done.stderr).lower()


def list_keys(client: Any, bucket: str, prefix: str = "") -> list[tuple[str, int]]:
    keys: list[tuple[str, int]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend((o["Key"], int(o["Size"])) for o in page.get("Contents", []))
    return keys
