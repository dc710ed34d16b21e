"""The wizard driven through its prompts: click's CliRunner input for the flows, and one run in a
real pseudo-terminal, where the password prompt must not echo (issue 8)."""
from __future__ import annotations

import os
import pty
import re
import select
import signal
import stat
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result
from psycopg.conninfo import conninfo_to_dict

from common.config import load_config
from conftest import free_port
from test_wizard_scripted import REPO, shop_dsn  # noqa: F401 - the module's read-only database fixture
from wizard.main import cli

SECRET = "hunter2-Zq9"


@pytest.fixture(autouse=True)
def _no_password_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARCHIVER_DB_PASSWORD", raising=False)


def answer(argv: list[str], *lines: str) -> Result:
    return CliRunner().invoke(cli, argv, input="".join(f"{x}\n" for x in lines), catch_exceptions=False)


def storage_flags(tmp_path: Path, moto_server: str, bucket: str) -> list[str]:
    """Everything after the tables, for tests about the earlier steps."""
    return ["--bucket", bucket, "--endpoint-url", moto_server, "--prefix", "", "--region", "us-east-1",
            "--storage-class", "STANDARD", "--sse", "none", "--fallback-dir", str(tmp_path / "fb"),
            "--checkpoint-dir", str(tmp_path / "cp"), "--log-file", "none", "--health-port", "8001",
            "--metrics-port", "8000"]


def test_full_interactive_flow(shop_dsn: str, moto_server: str, bucket: str, tmp_path: Path) -> None:
    out = tmp_path / "config.yaml"
    result = answer(["--output", str(out)],
                    shop_dsn, "", SECRET, "production_db",  # connection; the password is typed hidden
                    "", "", "", "30", "n", "120", "",        # table (suggested), column, key, retention 30 -> 120
                    bucket, "archive/prod", "", moto_server, "standard_ia", "",  # storage
                    str(tmp_path / "fb"), str(tmp_path / "cp"), "none", "", "9100",
                    "y", "", "SLACK_HOOK", "", "")            # notifications: Slack only
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output and SECRET not in out.read_text()
    assert re.search(r"public\.audit_logs +~3,000 rows", result.output)  # the listing, with estimates
    assert re.search(r"eligible now: [\d,]+ of 3,000 rows \(\d+\.\d%\) are older than 30 days", result.output)
    assert f"s3://{bucket}/archive/prod is writable" in result.output
    cfg = load_config(out)
    t = cfg.table("production_db", "audit_logs", "public")
    assert (t.timestamp_column, t.primary_key, t.retention_days) == ("created_at", "id", 120)
    assert (cfg.s3.bucket, cfg.s3.prefix, cfg.s3.storage_class, cfg.s3.endpoint_url) == \
        (bucket, "archive/prod", "STANDARD_IA", moto_server)
    assert cfg.logging.file is None and cfg.monitoring.metrics_port == 9100
    assert cfg.notifications.slack is not None and cfg.notifications.slack.webhook_url_env == "SLACK_HOOK"
    assert cfg.database("production_db").password_env == "ARCHIVER_DB_PASSWORD"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_a_table_without_primary_key_is_refused_and_asked_again(shop_dsn: str, moto_server: str, bucket: str,
                                                                tmp_path: Path) -> None:
    argv = ["--output", str(tmp_path / "c.yaml"), "--dsn", shop_dsn, "--password-env", "PGX",
            "--database-name", "db"] + storage_flags(tmp_path, moto_server, bucket)
    result = answer(argv, "", "heap_only", "heap_only,events", "n", "events", "", "", "", "", "n")
    assert result.exit_code == 0, result.output
    assert result.output.count("refused: public.heap_only has no primary key; archiving needs one") == 2
    assert "Continue with public.events only?" in result.output
    assert [t.name for t in load_config(tmp_path / "c.yaml").database("db").tables] == ["events"]


def test_wrong_answers_are_asked_again(shop_dsn: str, moto_server: str, bucket: str, tmp_path: Path) -> None:
    argv = ["--output", str(tmp_path / "c.yaml"), "--dsn", shop_dsn, "--password-env", "PGX",
            "--database-name", "db", "--table", "events"] + storage_flags(tmp_path, moto_server, bucket)
    result = answer(argv, "", "kind", "logged_at", "kind", "event_id", "-3", "45", "", "n")
    assert result.exit_code == 0, result.output
    assert "not a timestamp, timestamptz or date column of public.events" in result.output
    assert "the primary key of public.events is event_id" in result.output
    t = load_config(tmp_path / "c.yaml").table("db", "events")
    assert (t.timestamp_column, t.retention_days) == ("logged_at", 45)


def test_a_failed_connection_is_explained_and_asked_again(shop_dsn: str, moto_server: str, bucket: str,
                                                          tmp_path: Path) -> None:
    dead = f"host=127.0.0.1 port={free_port()} user=root dbname=x"
    argv = ["--output", str(tmp_path / "c.yaml"), "--table", "audit_logs", "--retention-days", "90",
            "--timestamp-column", "created_at", "--primary-key", "id"] + storage_flags(tmp_path, moto_server, bucket)
    result = answer(argv, "host=db port", dead, "MY_PW", "", shop_dsn, "", "shop", "n")
    assert result.exit_code == 0, result.output
    assert "error: not a valid PostgreSQL DSN" in result.output
    assert re.search(r"error: cannot connect to database 127\.0\.0\.1:\d+/x: .*; try again", result.output)
    assert result.output.count("Environment variable the archiver reads the password from") == 1
    db = load_config(tmp_path / "c.yaml").database("shop")
    assert db.password_env == "MY_PW" and conninfo_to_dict(db.dsn or "")["dbname"] == conninfo_to_dict(shop_dsn)["dbname"]


def test_flags_skip_their_prompts(shop_dsn: str, moto_server: str, bucket: str, tmp_path: Path) -> None:
    argv = ["--output", str(tmp_path / "c.yaml"), "--dsn", shop_dsn, "--password-env", "PGX", "--database-name", "db",
            "--table", "audit_logs", "--timestamp-column", "created_at", "--primary-key", "id",
            "--retention-days", "90", "--slack-webhook-env", "HOOK"] + storage_flags(tmp_path, moto_server, bucket)
    result = answer(argv, "", "", "", "")  # the hidden password (no flag on purpose) and the flagless extras
    assert result.exit_code == 0, result.output
    asked = re.findall(r"^([A-Z][^\n:]*?)(?: \[[^\]]*\])?: ", result.output, re.M)
    assert asked == ["Password (hidden; used to connect now, never written to the file; Enter for none)",
                     "Notify on (failure, success, fallback; comma-separated)",
                     "Env var holding the PagerDuty routing key (optional)",
                     "SMTP host for email notifications (optional)"], result.output


def test_an_unwritable_bucket_offers_to_continue_or_ask_again(shop_dsn: str, moto_server: str, bucket: str,
                                                              tmp_path: Path) -> None:
    argv = ["--output", str(tmp_path / "c.yaml"), "--dsn", shop_dsn, "--password-env", "PGX", "--database-name", "db",
            "--table", "audit_logs", "--retention-days", "90", "--fallback-dir", "none",
            "--checkpoint-dir", str(tmp_path / "cp"), "--log-file", "none", "--health-port", "1",
            "--metrics-port", "2"]
    storage = ["missing-bucket", "", "", moto_server, "", ""]
    result = answer(argv, "", "", "", *storage, "n", bucket, "", "", "", "", "", "n")
    assert result.exit_code == 0, result.output
    assert "error: cannot write s3://missing-bucket/" in result.output
    assert f"S3 endpoint URL (optional; Enter for AWS itself) [{moto_server}]" in result.output  # previous answer kept
    assert load_config(tmp_path / "c.yaml").s3.bucket == bucket

    kept = answer(argv + ["--force"], "", "", "", *storage, "y", "n")
    assert kept.exit_code == 0, kept.output
    assert load_config(tmp_path / "c.yaml").s3.bucket == "missing-bucket"


def test_enter_for_no_bucket_keeps_the_archives_in_a_directory_beside_the_config(shop_dsn: str, tmp_path: Path) -> None:
    argv = ["--output", str(tmp_path / "c.yaml"), "--dsn", shop_dsn, "--password-env", "PGX", "--database-name", "db",
            "--table", "audit_logs", "--retention-days", "90"]
    result = answer(argv, "", "", "", "",  # password, column, key; no bucket
                    "", "", "", "", "", "n")  # the directory, checkpoints, log, ports: the defaults; no notifications
    assert result.exit_code == 0, result.output
    assert f"Directory for the archives (storage: local) [{tmp_path / 'archive'}]" in result.output
    assert "Storage class" not in result.output and "fallback" not in result.output  # S3's questions are not asked
    cfg = load_config(tmp_path / "c.yaml")
    assert (cfg.storage, cfg.local_dir, cfg.checkpoint_dir) == ("local", str(tmp_path / "archive"), str(tmp_path / "checkpoints"))
    assert f"aws s3 sync {tmp_path / 'archive'} s3://BUCKET/" in result.output


@pytest.mark.parametrize("reply, code", [("n", 2), ("y", 0)])
def test_overwriting_needs_a_confirmation(shop_dsn: str, moto_server: str, bucket: str, tmp_path: Path,
                                          reply: str, code: int) -> None:
    out = tmp_path / "c.yaml"
    out.write_text("# keep me\n")
    argv = ["--output", str(out), "--dsn", shop_dsn, "--password-env", "PGX", "--database-name", "db",
            "--table", "audit_logs", "--retention-days", "90"] + storage_flags(tmp_path, moto_server, bucket)
    result = answer(argv, reply, "", "", "", "n")
    assert result.exit_code == code, result.output
    assert (out.read_text() == "# keep me\n") is (code == 2)


def test_running_out_of_answers_is_an_interruption_that_writes_nothing(shop_dsn: str, tmp_path: Path) -> None:
    result = answer(["--output", str(tmp_path / "c.yaml")], shop_dsn, "")
    assert result.exit_code == 130
    assert "wizard: error: interrupted; nothing was written" in result.output
    assert not (tmp_path / "c.yaml").exists()


# -- a real terminal -------------------------------------------------------------------------

class Terminal:
    """The wizard as a child process on a pseudo-terminal, answered like a person would."""

    def __init__(self, argv: list[str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # child: the pty is its controlling terminal (getpass reads /dev/tty)
            os.chdir(REPO)
            os.execv(sys.executable, [sys.executable, "-m", "wizard.main", *argv])
        self.transcript = ""
        self.seen = 0
        self.eof = False

    def expect(self, pattern: str, *, deadline: float = 30.0) -> None:
        regex = re.compile(pattern)
        while not regex.search(self.transcript, self.seen):
            ready, _, _ = select.select([self.fd], [], [], deadline)
            chunk = os.read(self.fd, 4096).decode(errors="replace") if ready else ""
            if not chunk:
                raise AssertionError(f"no {pattern!r} in:\n{self.transcript}")
            self.transcript += chunk
        self.seen = regex.search(self.transcript, self.seen).end()  # type: ignore[union-attr]

    def send(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\r")

    def wait_until_reading(self, *, deadline: float = 30.0) -> None:
        """Block until the child sleeps in its terminal read. A Ctrl-C that lands between the prompt
        and the read() call is lost by CPython (the read then blocks), which no person could hit."""
        end = time.monotonic() + deadline
        while Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "S":
            if time.monotonic() > end:
                raise AssertionError(f"the wizard never waited for input:\n{self.transcript}")
            time.sleep(0.01)

    def exited_within(self, seconds: float) -> bool:
        """True once the child has exited (its terminal reports EOF/EIO), collecting its output."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                return False
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:
                self.eof = True
                return True
            if not chunk:
                self.eof = True
                return True
            self.transcript += chunk.decode(errors="replace")
        return False

    def finish(self, *, deadline: float = 60.0) -> int:
        while not self.eof:
            ready, _, _ = select.select([self.fd], [], [], deadline)
            if not ready:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                raise AssertionError(f"the wizard did not finish:\n{self.transcript}")
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            self.transcript += chunk.decode(errors="replace")
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)


def test_in_a_real_terminal_the_password_is_not_echoed(shop_dsn: str, moto_server: str, bucket: str,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "config.yaml"
    term = Terminal(["--output", str(out)] + storage_flags(tmp_path, moto_server, bucket))
    for prompt, reply in [(r"PostgreSQL DSN .*: ", shop_dsn), (r"password from \[ARCHIVER_DB_PASSWORD\]: ", ""),
                          (r"Password \(hidden.*\): ", SECRET), (r"Name for this database .*: ", "audit"),
                          (r"Tables to archive .*\[public\.audit_logs\]: ", ""),
                          (r"timestamp column \[created_at\]: ", ""), (r"primary key \[id\]: ", ""),
                          (r"how many days \[90\]: ", "200"), (r"keep 200 days\? \[Y/n\]: ", "y"),
                          (r"Set up notifications .*\[y/N\]: ", "")]:
        term.expect(prompt)
        term.send(reply)
    assert term.finish() == 0, term.transcript
    assert SECRET not in term.transcript  # the terminal did not echo it
    assert "Wrote " in term.transcript and "--dry-run" in term.transcript
    doc = yaml.safe_load(out.read_text())
    assert SECRET not in out.read_text()
    assert doc["databases"][0]["tables"][0]["retention_days"] == 200
    assert doc["databases"][0]["password_env"] == "ARCHIVER_DB_PASSWORD"



def test_ctrl_c_in_a_real_terminal_exits_130_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "config.yaml"
    term = Terminal(["--output", str(out)])
    term.expect(r"PostgreSQL DSN .*: ")
    term.wait_until_reading()
    # The terminal turns ^C into SIGINT for the wizard. One that lands between the prompt and the
    # read() call is lost by CPython on a loaded machine; like a person, press it again.
    for _ in range(20):
        os.write(term.fd, b"\x03")
        if term.exited_within(1.0):
            break
    assert term.finish() == 130, term.transcript
    assert "interrupted; nothing was written" in term.transcript
    assert not out.exists()
