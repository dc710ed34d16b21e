"""A silent network never hangs a tool (issue 31): a TCP proxy (tests/tcp_proxy.py) in front of
PostgreSQL and in front of S3 (moto over HTTP) stops forwarding but keeps its connections open, as
behind a failed-over primary or a dropped route: no reset, just silence. Every tool gives up within
its configured limits (small here, so the tests are quick), with exit 3 and one line saying what
went silent; the archiver loses and duplicates nothing, and the next run completes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from archive_checks import archived_ids, assert_invariant, table_ids
from common.archive import layout
from common.config import DatabaseTimeouts
from common.pg.db import connect
from common.errors import DatabaseSilent
from common.pg.watchdog import WATCHDOG, ServerSilent, remember, with_libpq_limits
from common.archive.storage import LocalStorage, S3Storage
from conftest import free_port, http_get, make_config, seed_audit, throwaway_database
from tcp_proxy import TcpProxy

ROOT = Path(__file__).resolve().parent.parent
#: Small limits: silence noticed after 1.5 s, the probe's answer awaited 2 s (libpq's least); S3
#: answers awaited 1 s, twice. A tool that gives up at all gives up within BOUND seconds.
LIMITS = {"silence_seconds": 1.5, "probe_seconds": 2, "connect_seconds": 2, "tcp_user_timeout_seconds": 5,
          "keepalives_idle_seconds": 2, "keepalives_interval_seconds": 1, "keepalives_count": 2}
S3_LIMITS = {"connect_timeout": 1, "read_timeout": 1, "max_attempts": 2, "probe_interval_seconds": 3600}
BOUND = 20.0
#: The one-line messages of a silent database and a silent S3 (common/pg/watchdog.py, common/errors.py).
PG_SILENT = ("stopped answering", "answer was lost", "timeout expired")
S3_SILENT = ("S3 stopped answering", "S3 connection lost", "Read timeout")


@pytest.fixture()
def pg_proxy() -> Iterator[TcpProxy]:
    p = TcpProxy(int(conninfo_to_dict(os.environ.get("ARCHIVER_TEST_DSN", "port=5432")).get("port") or 5432))
    yield p
    p.close()  # the server's end of every stalled session gets its EOF: the backend ends, its locks go


@pytest.fixture()
def s3_proxy(moto_server: str) -> Iterator[TcpProxy]:
    p = TcpProxy(int(urlparse(moto_server).port or 0))
    yield p
    p.close()


def new_bucket(endpoint: str) -> tuple[Any, str]:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    name = f"timeouts-{os.urandom(5).hex()}"
    client.create_bucket(Bucket=name)
    return client, name


def write_config(tmp_path: Path, dsn: str, bucket: str, pg_proxy: TcpProxy, s3_proxy: TcpProxy, **extra: Any) -> Path:
    extra.setdefault("defaults", {"batch_size": 5})
    return make_config(tmp_path, dsn=pg_proxy.dsn(dsn), bucket=bucket, endpoint=s3_proxy.url,
                       s3=S3_LIMITS, database_timeouts=LIMITS, **extra)


_started: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_tool_left_running() -> Iterator[None]:
    """A test that fails while a tool runs kills that tool (by its own pid)."""
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def tool(name: str, config: Path, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", f"{name}.main", "--config", str(config), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _started.append(proc)
    return proc


def finish(proc: subprocess.Popen[str], since: float) -> tuple[int, str, float]:
    """Wait for the tool (never longer than twice the bound): exit code, stderr, seconds since `since`."""
    try:
        _out, err = proc.communicate(timeout=2 * BOUND)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        pytest.fail(f"still waiting {2 * BOUND:g}s after the stall: {err[-2000:]}")
    return proc.returncode, err, time.monotonic() - since


def error_line(stderr: str, tool_name: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith(f"{tool_name}: error: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def wait_until(condition: Callable[[], bool], what: str, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    """Poll what the child shows to the outside (rows gone from the table, /health): there is no
    event to wait on."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the tool exited ({proc.returncode}) before {what}: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout}s"
        time.sleep(0.05)


# -- the archiver ------------------------------------------------------------------------------
@pytest.fixture()
def seeded(pg: psycopg.Connection[Any]) -> set[int]:
    seed_audit(pg, rows=400, days=100)  # ~40 expired rows over 10 days: ~20 objects of up to 2 rows
    return table_ids(pg)


def archiver_config(tmp_path: Path, dsn: str, bucket: str, pg_proxy: TcpProxy, s3_proxy: TcpProxy) -> Path:
    # a pause between batches, so the silence begins mid-run with rows left to move
    return write_config(tmp_path, dsn, bucket, pg_proxy, s3_proxy, defaults={"batch_size": 2, "sleep_seconds": 0.2})


def test_archiver_gives_up_on_a_silent_database_with_exit_3_and_the_next_run_completes(
        tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], seeded: set[int], moto_server: str,
        pg_proxy: TcpProxy, s3_proxy: TcpProxy) -> None:
    # A second table of the same database, archived after the first: it fails at once, not after a wait of its own.
    pg.execute("CREATE TABLE audit_logs_b (LIKE audit_logs INCLUDING ALL)")
    pg.execute("INSERT INTO audit_logs_b SELECT * FROM audit_logs WHERE id % 4 = 0")
    seeded_b = table_ids(pg, "audit_logs_b")
    client, bucket = new_bucket(moto_server)
    tables = [{"name": name, "timestamp_column": "created_at", "primary_key": "id"} for name in ("audit_logs", "audit_logs_b")]
    config = write_config(tmp_path, pg_dsn, bucket, pg_proxy, s3_proxy, tables=tables,
                          defaults={"batch_size": 2, "sleep_seconds": 0.2})
    s3 = S3Storage(client, bucket)
    run = tool("archiver", config)
    wait_until(lambda: len(table_ids(pg)) <= len(seeded) - 4, "rows archived", run)
    pg_proxy.stall()
    code, err, took = finish(run, time.monotonic())
    log = (tmp_path / "archiver.log").read_text()
    assert code == 3, err[-3000:]
    assert took < BOUND
    summaries = [ln for ln in log.splitlines() if "summary production_db.public.audit_logs" in ln]
    assert len(summaries) == 2 and all("failed" in ln and "kind database" in ln for ln in summaries), log[-3000:]
    assert all(any(m in ln for m in PG_SILENT) for ln in summaries), summaries

    pg_proxy.cut()  # the stalled sessions end on the server, as a failed-over primary's would
    pg_proxy.restore()
    rerun = tool("archiver", config)
    code, err, _ = finish(rerun, time.monotonic())
    assert code == 0, err[-3000:]
    fallback = LocalStorage(tmp_path / "fallback")
    for name, original in (("audit_logs", seeded), ("audit_logs_b", seeded_b)):
        assert_invariant(original, table_ids(pg, name), archived_ids(s3, fallback, prefix=f"production_db/public.{name}/"))


def test_archiver_sends_batches_to_the_fallback_directory_while_s3_is_silent(
        tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], seeded: set[int], moto_server: str,
        pg_proxy: TcpProxy, s3_proxy: TcpProxy) -> None:
    client, bucket = new_bucket(moto_server)
    config = archiver_config(tmp_path, pg_dsn, bucket, pg_proxy, s3_proxy)
    s3, fallback = S3Storage(client, bucket), LocalStorage(tmp_path / "fallback")
    run = tool("archiver", config)
    wait_until(lambda: len(table_ids(pg)) <= len(seeded) - 4, "rows archived", run)
    s3_proxy.stall()
    code, err, took = finish(run, time.monotonic())
    assert code == 0, err[-3000:]
    assert took < BOUND
    log = (tmp_path / "archiver.log").read_text()
    assert "S3 marked down, batches go to the fallback directory" in log
    held = [o.key for o in fallback.list("") if not layout.is_manifest(o.key) and not layout.is_control_key(o.key)]
    assert held
    # (the manifests of batches stored in S3 just before the silence wait in the fallback
    # directory for the drain to take them to S3: the invariant holds once it has)
    s3_proxy.cut()
    s3_proxy.restore()
    code, err, _ = finish(tool("archiver", config), time.monotonic())
    assert code == 0, err[-3000:]
    assert "Drained" in (tmp_path / "archiver.log").read_text()
    assert_invariant(seeded, table_ids(pg), archived_ids(s3, fallback))
    assert [o for o in fallback.list("") if not layout.is_control_key(o.key)] == []


# -- restore, validate, query, erase -----------------------------------------------------------
@pytest.fixture(scope="module")
def archive(moto_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """One archived table for the other tools (none of them changes it: each is cut off)."""
    tmp = tmp_path_factory.mktemp("archive")
    with throwaway_database("timeouts") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            seed_audit(conn, rows=200, days=100)  # ~20 expired rows
        _client, bucket = new_bucket(moto_server)
        config = make_config(tmp, dsn=dsn, bucket=bucket, endpoint=moto_server, defaults={"batch_size": 5})
        done = subprocess.run([sys.executable, "-m", "archiver.main", "--config", str(config)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        yield dsn, bucket, tmp


TARGET = ("--database", "production_db", "--table", "audit_logs")
ERASE_WHERE = "user_id % 7 = 3"


#: (tool, its arguments, the service that goes silent, after how many bytes of answers on each of
#: its connections): the session is made and works a while (PostgreSQL's start-up answer is ~400
#: bytes; the erase tool's whole session a few hundred more), then falls silent mid-answer.
@pytest.mark.parametrize(("name", "args", "service", "after"), [
    ("restore", (*TARGET, "--restore-all"), "database", 2000),
    ("restore", (*TARGET, "--restore-all"), "s3", 3000),
    ("validate", (), "s3", 3000),
    ("query", TARGET, "s3", 3000),
    ("erase", (*TARGET, "--where", ERASE_WHERE), "database", 700),
])
def test_tool_gives_up_on_a_silent_service_with_exit_3(name: str, args: tuple[str, ...], service: str, after: int,
                                                      archive: tuple[str, str, Path], tmp_path: Path,
                                                      pg_proxy: TcpProxy, s3_proxy: TcpProxy) -> None:
    dsn, bucket, _ = archive
    config = write_config(tmp_path, dsn, bucket, pg_proxy, s3_proxy)
    (pg_proxy if service == "database" else s3_proxy).stall_after(after)
    code, err, took = finish(tool(name, config, *args), time.monotonic())
    line = error_line(err, name)
    assert code == 3, err[-3000:]
    assert any(m in line for m in (PG_SILENT if service == "database" else S3_SILENT)), line
    assert took < BOUND + 3  # + the tool's start-up


# -- a healthy server is never cut short ---------------------------------------------------------
def test_a_statement_longer_than_the_silence_limit_on_a_healthy_but_slow_network_completes(
        pg_dsn: str, pg_proxy: TcpProxy) -> None:
    limits = DatabaseTimeouts(**LIMITS)
    info = with_libpq_limits(pg_proxy.dsn(pg_dsn), limits)
    remember(info, limits)
    with connect(info, {"application_name": "pg-archiver timeouts-test"}) as conn:
        pg_proxy.slice(512)  # and its answer trickles in, 512 bytes every 20 ms: slow, not silent
        pg_proxy.delay(0.02)
        t0 = time.monotonic()
        row = conn.execute("SELECT pg_sleep(3.5), repeat('x', 20000)").fetchone()
        assert row is not None and row[1] == "x" * 20000
        assert time.monotonic() - t0 >= 3.5  # past the silence limit, and a probe that found it active


def test_a_reset_is_no_silence_the_session_fails_at_once_with_libpqs_reason(pg_dsn: str, pg_proxy: TcpProxy) -> None:
    limits = DatabaseTimeouts(**LIMITS)
    info = with_libpq_limits(pg_proxy.dsn(pg_dsn), limits)
    remember(info, limits)
    with connect(info, {"application_name": "pg-archiver timeouts-test"}) as conn:
        pg_proxy.reset_after(4096)  # in the middle of the next answer's body
        t0 = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as failed:
            conn.execute("SELECT repeat('x', 100000)").fetchone()
        assert not isinstance(failed.value, ServerSilent) and time.monotonic() - t0 < 1


def test_a_session_gives_up_on_a_silent_server_and_health_reports_it_meanwhile(pg_dsn: str, pg_proxy: TcpProxy) -> None:
    limits = DatabaseTimeouts(**LIMITS)
    info = with_libpq_limits(pg_proxy.dsn(pg_dsn), limits)
    remember(info, limits)
    conn = connect(info, {"application_name": "pg-archiver timeouts-test"})
    failed: list[BaseException] = []

    def query() -> None:
        try:
            conn.execute("SELECT 1").fetchone()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            failed.append(exc)

    pg_proxy.stall()
    t0 = time.monotonic()
    waiter = threading.Thread(target=query)
    waiter.start()
    deadline = time.monotonic() + BOUND
    while not any(s.get("silent_seconds") for s in WATCHDOG.stalls()):  # while it lasts
        assert time.monotonic() < deadline and waiter.is_alive()
        time.sleep(0.1)
    waiter.join(BOUND)
    assert not waiter.is_alive() and time.monotonic() - t0 < 2 + 3 + 2
    assert len(failed) == 1 and isinstance(failed[0], ServerSilent) and "stopped answering" in str(failed[0])
    assert any("stopped answering" in s.get("error", "") for s in WATCHDOG.stalls())  # for a minute after
    conn.close()


# -- the daemon --------------------------------------------------------------------------------
def test_daemon_health_reports_a_silent_database_while_it_lasts_and_the_daemon_lives_on(
        tmp_path: Path, pg_dsn: str, pg: psycopg.Connection[Any], seeded: set[int], moto_server: str,
        pg_proxy: TcpProxy, s3_proxy: TcpProxy) -> None:
    _client, bucket = new_bucket(moto_server)
    health = free_port()
    config = write_config(tmp_path, pg_dsn, bucket, pg_proxy, s3_proxy, defaults={"batch_size": 2, "sleep_seconds": 0.2},
                          monitoring={"enabled": True, "health_port": health, "metrics_port": None},
                          schedule={"interval": "1h"})
    daemon = tool("archiver", config, "--daemon")
    wait_until(lambda: len(table_ids(pg)) <= len(seeded) - 4, "rows archived", daemon)
    pg_proxy.stall()
    silent = time.monotonic()

    def reported() -> bool:
        code, body = http_get(f"http://127.0.0.1:{health}/health")
        return code == 503 and any("silent for" in r or "stopped answering" in r for r in json.loads(body)["reasons"])

    wait_until(reported, "/health reporting the silent database", daemon, timeout=BOUND)
    assert time.monotonic() - silent < BOUND
    # the run gave up (exit 3 in last_run) and the daemon waits for the next one
    wait_until(lambda: (json.loads(http_get(f"http://127.0.0.1:{health}/health")[1])["last_run"] or {}).get("exit_code") == 3,
               "the run to end with exit 3", daemon, timeout=BOUND)
    assert daemon.poll() is None
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=15) == 0


def test_a_session_whose_answer_stops_mid_stream_is_given_up_on_while_the_server_still_answers(
        pg_dsn: str, pg_proxy: TcpProxy) -> None:
    # Each connection through the proxy goes silent after 8 KB of answers: the probe's own new
    # connection works, and shows the session's backend blocked sending to a client that hears nothing.
    limits = DatabaseTimeouts(**LIMITS)
    info = with_libpq_limits(pg_proxy.dsn(pg_dsn), limits)
    remember(info, limits)
    conn = connect(info, {"application_name": "pg-archiver timeouts-test"})
    pg_proxy.stall_after(8192)
    t0 = time.monotonic()
    with pytest.raises(ServerSilent, match="its answer was lost") as failed:
        conn.execute("SELECT repeat('x', 1000) FROM generate_series(1, 20000)").fetchall()
    assert "ClientWrite" in str(failed.value)
    assert time.monotonic() - t0 < 1.5 + 3 + 2
    conn.close()


@pytest.mark.parametrize(("silence", "said"), [("server", "stopped answering"), ("mid-answer", "its answer was lost")])
def test_the_archivers_adbc_reader_gives_up_on_a_silent_server(silence: str, said: str, pg_dsn: str,
                                                                pg_proxy: TcpProxy) -> None:
    # The ADBC driver 1.8 aborts the process when a connection fails under a query: the watchdog
    # parks its socket instead, and the reader's caller gets DatabaseSilent (archiver/arrow_source.py).
    from archiver.arrow_source import ArrowSource

    limits = DatabaseTimeouts(**LIMITS)
    info = with_libpq_limits(pg_proxy.dsn(pg_dsn), limits)
    remember(info, limits)
    with ArrowSource(info, {"application_name": "pg-archiver timeouts-test"}) as source:
        assert source.read("SELECT 1 AS one").column(0)[0].as_py() == 1
        if silence == "server":
            pg_proxy.stall()
        else:  # each connection's answers stop after 8 KB: the server and a new session still answer
            pg_proxy.stall_after(8192)
        t0 = time.monotonic()
        with pytest.raises(DatabaseSilent, match=said):
            source.read("SELECT repeat('x', 1000) AS x FROM generate_series(1, 20000)")
        assert time.monotonic() - t0 < 1.5 + 3 + 2
        with pytest.raises(DatabaseSilent):  # and every later use, at once
            source.read("SELECT 1 AS one")


# -- the config --------------------------------------------------------------------------------
def test_database_timeouts_reach_every_session_of_a_database_and_bad_values_are_refused() -> None:
    from common.config import parse_config
    from common.pg.db import conninfo
    from common.errors import ConfigError
    from common.pg.watchdog import timeouts_for

    cfg = parse_config({"databases": [{"name": "db", "dsn": "host=db.example.com dbname=db keepalives_idle=99"}],
                        "database_timeouts": {"silence_seconds": 7, "tcp_user_timeout_seconds": 12}})
    info = conninfo(cfg.database("db"))
    params = conninfo_to_dict(info)
    assert (params["tcp_user_timeout"], params["keepalives"], params["connect_timeout"]) == ("12000", "1", "10")
    assert params["keepalives_idle"] == "99"  # the DSN's own value wins
    assert timeouts_for(info).silence_seconds == 7
    with pytest.raises(ConfigError, match="database_timeouts.probe_seconds"):
        parse_config({"database_timeouts": {"probe_seconds": 1}})
    with pytest.raises(ConfigError, match="database_timeouts.statement_seconds: unknown key"):
        parse_config({"database_timeouts": {"statement_seconds": 1}})
