"""Notifications (issue 6) against real local servers: aiosmtpd for email (plain, STARTTLS, SSL),
pytest-httpserver for Slack and PagerDuty. Failure paths (server down, HTTP 500, a server that never
answers) are logged and never raised."""
from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from conftest import free_port
from pytest_httpserver import HTTPServer

from common.config import parse_config
from common.errors import ConfigError
from archiver.ops.events import TableResult
from archiver.ops.notify import Notifications

SECRET_PASSWORD = "smtp-Pa55-w0rd"
SLACK_PATH = "/services/T000/B000/sEcReTtOkEn"


# -- servers ------------------------------------------------------------------------------------
class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd hook
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content.decode()))
        return "250 OK"


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"archiver" and auth_data.password == SECRET_PASSWORD.encode()
    return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with `cryptography` (a moto dependency)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    d = tmp_path_factory.mktemp("tls")
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return d / "cert.pem", d / "key.pem"


def _server_context(tls_files: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*map(str, tls_files))
    return ctx


@pytest.fixture()
def smtp_server(request: pytest.FixtureRequest, tls_files: tuple[Path, Path],
                monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, Inbox]]:
    """An SMTP server in the mode given by indirect parametrization: none, starttls or ssl."""
    mode = getattr(request, "param", "none")
    inbox, port = Inbox(), free_port()
    kwargs: dict[str, Any] = {}
    if mode == "starttls":
        kwargs = dict(tls_context=_server_context(tls_files), require_starttls=True, authenticator=_authenticator)
    elif mode == "ssl":
        # Implicit TLS: aiosmtpd only knows about STARTTLS, so tell it the transport is already secure.
        kwargs = dict(ssl_context=_server_context(tls_files), authenticator=_authenticator, auth_require_tls=False)
    if mode != "none":
        monkeypatch.setenv("SSL_CERT_FILE", str(tls_files[0]))  # the client trusts our test CA
    controller = Controller(inbox, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    yield port, inbox
    controller.stop()


def _closed_port() -> int:
    return free_port()


@pytest.fixture()
def silent_port() -> Iterator[int]:
    """Accepts TCP connections (via the backlog) but never answers: a hung webhook."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


# -- helpers ------------------------------------------------------------------------------------
def notifications(tmp_path: Path, **channels: Any) -> Notifications:
    on = channels.pop("on", ["failure"])
    cfg = parse_config({"checkpoint_dir": str(tmp_path / "checkpoints"), "s3": {"bucket": "audit-archives"},
                        "logging": {"file": "/var/log/archiver.log"},
                        "notifications": {"on": on, **channels}})
    return Notifications.from_config(cfg, config_path="/etc/archiver/config.yaml")


def failed(table: str = "audit_logs", *, error: str = "S3 unreachable: connection refused",
           kind: str = "s3_unreachable") -> TableResult:
    return TableResult("production_db", "public", table, status="failed", error=error, error_kind=kind)


def completed(table: str = "audit_logs", *, fallback: int = 0) -> TableResult:
    return TableResult("production_db", "public", table, status="completed", rows=1900, objects=4, fallback_objects=fallback)


def slack_cfg(httpserver: HTTPServer, *, timeout: float = 5) -> dict[str, Any]:
    return {"webhook_url": httpserver.url_for(SLACK_PATH), "timeout": timeout}


def pagerduty_cfg(httpserver: HTTPServer) -> dict[str, Any]:
    return {"routing_key": "R0UTINGKEY", "events_url": httpserver.url_for("/v2/enqueue"), "severity": "critical"}


def archiver_log(caplog: pytest.LogCaptureFixture) -> str:
    """What the archiver itself logged (the test servers log the secret URLs they serve)."""
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("archiver"))


def posted(httpserver: HTTPServer) -> list[dict[str, Any]]:
    return [json.loads(req.get_data()) for req, _resp in httpserver.log]


# -- email --------------------------------------------------------------------------------------
@pytest.mark.parametrize("smtp_server", ["none", "starttls", "ssl"], indirect=True)
def test_failure_email_is_delivered(smtp_server: tuple[int, Inbox], tmp_path: Path, request: pytest.FixtureRequest,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    port, inbox = smtp_server
    mode = request.node.callspec.params["smtp_server"]
    monkeypatch.setenv("SMTP_PASSWORD", SECRET_PASSWORD)
    email: dict[str, Any] = {"smtp_host": "127.0.0.1", "smtp_port": port, "security": mode, "from": "archiver@example.com",
                             "to": ["dba@example.com", "oncall@example.com"], "timeout": 5}
    if mode != "none":
        email.update(user="archiver", password_env="SMTP_PASSWORD")
    n = notifications(tmp_path, email=email)
    n.run_finished([failed()], 3)
    assert n.last_errors == {}
    (sender, rcpts, content), = inbox.messages
    assert sender == "archiver@example.com" and rcpts == ["dba@example.com", "oncall@example.com"]
    assert "Subject: [pg-archiver] failure production_db/public.audit_logs on" in content
    assert "S3 unreachable: connection refused" in content
    assert 'runbook "S3 Outage"' in content and "aws s3 ls s3://audit-archives/" in content


@pytest.mark.parametrize("smtp_server", ["starttls"], indirect=True)
def test_wrong_smtp_password_is_logged_without_the_password(smtp_server: tuple[int, Inbox], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    port, inbox = smtp_server
    monkeypatch.setenv("SMTP_PASSWORD", "not-" + SECRET_PASSWORD)
    n = notifications(tmp_path, email={"smtp_host": "127.0.0.1", "smtp_port": port, "user": "archiver",
                                       "password_env": "SMTP_PASSWORD", "from": "a@example.com", "to": ["b@example.com"]})
    with caplog.at_level(logging.INFO):
        n.run_finished([failed()], 3)
    assert inbox.messages == []
    assert n.last_errors["email"].startswith("SMTP 535")
    assert "notification via email failed: SMTP 535" in caplog.text
    assert SECRET_PASSWORD not in archiver_log(caplog)


def test_unreachable_smtp_server_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = notifications(tmp_path, email={"smtp_host": "127.0.0.1", "smtp_port": _closed_port(), "security": "none",
                                       "from": "a@example.com", "to": ["b@example.com"], "timeout": 2})
    n.run_finished([failed()], 3)
    assert "ConnectionRefusedError" in n.last_errors["email"]
    assert "notification via email failed" in caplog.text


# -- Slack --------------------------------------------------------------------------------------
def test_slack_message_says_what_where_error_and_next_step(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request(SLACK_PATH, method="POST").respond_with_data("ok")
    n = notifications(tmp_path, slack=slack_cfg(httpserver))
    n.run_finished([failed(error="cannot connect to database db1:5432/prod: Connection refused",
                           kind="database_unreachable"), completed("sessions")], 3)
    (doc,) = posted(httpserver)
    text = doc["text"]
    assert "FAILURE production_db/public.audit_logs" in text
    assert "cannot connect to database db1:5432/prod: Connection refused" in text
    assert 'runbook "Database Connection Issues"' in text and "--config /etc/archiver/config.yaml" in text
    assert "sessions" not in text  # successes are not reported unless `on` asks for them


def test_slack_webhook_from_environment(httpserver: HTTPServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    httpserver.expect_request(SLACK_PATH, method="POST").respond_with_data("ok")
    monkeypatch.setenv("SLACK_WEBHOOK", httpserver.url_for(SLACK_PATH))
    notifications(tmp_path, slack={"webhook_url_env": "SLACK_WEBHOOK"}).run_finished([failed()], 3)
    assert len(httpserver.log) == 1


@pytest.mark.parametrize("channel,key", [("slack", "notifications.slack.webhook_url_env"),
                                         ("pagerduty", "notifications.pagerduty.routing_key_env")])
def test_missing_secret_variable_is_a_config_error(channel: str, key: str, tmp_path: Path) -> None:
    field = key.rsplit(".", 1)[-1]
    with pytest.raises(ConfigError, match=f"{key}: environment variable ARCHIVER_TEST_UNSET is not set"):
        notifications(tmp_path, **{channel: {field: "ARCHIVER_TEST_UNSET"}})


@pytest.mark.parametrize("status", [500, 404])
def test_webhook_error_status_is_logged_without_the_secret_url(status: int, httpserver: HTTPServer, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    httpserver.expect_request(SLACK_PATH, method="POST").respond_with_data("boom", status=status)
    n = notifications(tmp_path, slack=slack_cfg(httpserver))
    n.run_finished([failed()], 3)
    assert n.last_errors["slack"].startswith(f"HTTP {status}")
    assert f"notification via slack failed: HTTP {status}" in caplog.text
    assert "sEcReTtOkEn" not in archiver_log(caplog)


def test_slack_server_down_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = notifications(tmp_path, slack={"webhook_url": f"http://127.0.0.1:{_closed_port()}{SLACK_PATH}", "timeout": 2})
    n.run_finished([failed()], 3)
    assert "refused" in n.last_errors["slack"].lower()
    assert "sEcReTtOkEn" not in archiver_log(caplog)


def test_a_webhook_that_never_answers_is_abandoned_after_its_timeout(silent_port: int, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    n = notifications(tmp_path, slack={"webhook_url": f"http://127.0.0.1:{silent_port}/hook", "timeout": 0.5},
                      pagerduty={"routing_key": "k", "events_url": f"http://127.0.0.1:{silent_port}/v2/enqueue",
                                 "timeout": 0.5})
    n.run_finished([failed()], 3)
    assert n.last_errors == {"slack": "timed out", "pagerduty": "timed out"}
    assert "notification via slack failed" in caplog.text


# -- PagerDuty ----------------------------------------------------------------------------------
def test_pagerduty_triggers_once_per_table_and_resolves_when_it_succeeds(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/v2/enqueue", method="POST").respond_with_json({"status": "success"}, status=202)
    n = notifications(tmp_path, pagerduty=pagerduty_cfg(httpserver))
    n.run_finished([failed(), completed("sessions")], 3)
    n.run_finished([failed()], 3)  # the same failure again folds into the same incident
    n.run_finished([completed()], 0)
    n.run_finished([completed()], 0)  # nothing open any more: nothing sent
    events = posted(httpserver)
    assert [(e["event_action"], e["dedup_key"]) for e in events] == [
        ("trigger", "pg-archiver/production_db/public.audit_logs"),
        ("trigger", "pg-archiver/production_db/public.audit_logs"),
        ("resolve", "pg-archiver/production_db/public.audit_logs"),
    ]
    trigger = events[0]
    assert trigger["routing_key"] == "R0UTINGKEY"
    assert trigger["payload"]["severity"] == "critical" and trigger["payload"]["component"] == "production_db"
    assert trigger["payload"]["custom_details"]["runbook"] == "S3 Outage"
    assert "S3 unreachable" in trigger["payload"]["summary"]


def test_pagerduty_resolve_works_across_one_shot_runs(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request("/v2/enqueue", method="POST").respond_with_json({"status": "success"}, status=202)
    notifications(tmp_path, pagerduty=pagerduty_cfg(httpserver)).run_finished([failed()], 1)
    # A new process (cron's next run) knows the incident is open from <checkpoint_dir>/notifications.json.
    notifications(tmp_path, pagerduty=pagerduty_cfg(httpserver)).run_finished([completed()], 0)
    assert [e["event_action"] for e in posted(httpserver)] == ["trigger", "resolve"]


def test_pagerduty_500_is_logged_and_the_incident_still_resolves_later(httpserver: HTTPServer, tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    httpserver.expect_oneshot_request("/v2/enqueue").respond_with_data("down", status=500)
    httpserver.expect_request("/v2/enqueue").respond_with_json({"status": "success"}, status=202)
    n = notifications(tmp_path, pagerduty=pagerduty_cfg(httpserver))
    n.run_finished([failed()], 3)
    assert n.last_errors["pagerduty"].startswith("HTTP 500")
    assert "notification via pagerduty failed: HTTP 500" in caplog.text
    n.run_finished([completed()], 0)
    assert [e["event_action"] for e in posted(httpserver)] == ["trigger", "resolve"]


# -- what is sent when --------------------------------------------------------------------------
@pytest.mark.parametrize("on,expected", [
    (["failure"], []),
    (["success"], ["SUCCESS production_db/public.audit_logs: 1900 rows archived in 4 objects"]),
    (["fallback"], ["FALLBACK production_db/public.audit_logs: S3 unreachable; 4 batches held"]),
])
def test_success_and_fallback_are_sent_only_when_configured(on: list[str], expected: list[str], httpserver: HTTPServer,
                                                            tmp_path: Path) -> None:
    httpserver.expect_request(SLACK_PATH, method="POST").respond_with_data("ok")
    notifications(tmp_path, slack=slack_cfg(httpserver), on=on).run_finished([completed(fallback=4)], 0)
    texts = [d["text"] for d in posted(httpserver)]
    assert len(texts) == len(expected)
    for text, want in zip(texts, expected):
        assert want in text


def test_fallback_notice_names_the_directory_and_next_step(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request(SLACK_PATH, method="POST").respond_with_data("ok")
    cfg = parse_config({"checkpoint_dir": str(tmp_path), "s3": {"local_fallback_dir": "/var/archiver/fallback"},
                        "notifications": {"on": ["fallback"], "slack": slack_cfg(httpserver)}})
    Notifications.from_config(cfg, config_path="c.yaml").run_finished([completed(fallback=2)], 0)
    (doc,) = posted(httpserver)
    assert "du -sh /var/archiver/fallback" in doc["text"] and 'runbook "S3 Outage"' in doc["text"]


@pytest.mark.parametrize("kind,section", [
    ("database_unreachable", "Database Connection Issues"), ("s3", "S3 Outage"), ("fallback", "S3 Outage"),
    ("integrity", "Data Loss Suspected"), ("config", "Recover from Configuration Error"), ("other", "Archival Failure"),
])
def test_every_kind_of_failure_points_to_its_runbook_section(kind: str, section: str, httpserver: HTTPServer,
                                                            tmp_path: Path) -> None:
    httpserver.expect_request(SLACK_PATH, method="POST").respond_with_data("ok")
    notifications(tmp_path, slack=slack_cfg(httpserver)).run_finished([failed(kind=kind, error="boom")], 1)
    (doc,) = posted(httpserver)
    assert f'runbook "{section}"' in doc["text"] and "Error: boom" in doc["text"]


def test_a_failed_run_without_a_failed_table_is_still_reported(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request(SLACK_PATH, method="POST").respond_with_data("ok")
    notifications(tmp_path, slack=slack_cfg(httpserver)).run_finished([completed()], 1)
    (doc,) = posted(httpserver)
    assert "FAILURE the whole run" in doc["text"] and "exit code 1" in doc["text"]


def test_a_run_that_crashed_is_reported(httpserver: HTTPServer, tmp_path: Path) -> None:
    httpserver.expect_request(SLACK_PATH, method="POST").respond_with_data("ok")
    notifications(tmp_path, slack=slack_cfg(httpserver)).run_crashed("logging.file: cannot open /x: Permission denied", "config")
    (doc,) = posted(httpserver)
    assert "Permission denied" in doc["text"] and "--dry-run" in doc["text"]
