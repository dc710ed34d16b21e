"""Who holds a monitoring port (issue 18): every endpoint port of a running archiver answers
GET /identity with the process's pid, config file, host and mode, so an overlapping one-shot run
(cron firing while the previous run still works) can tell "another archiver of this config" (run
on without endpoints; the advisory locks keep the two apart) from "something else" (exit 2)."""
from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from datetime import datetime, timezone
from typing import Any

from common.jsonout import render_json

PATH = "/identity"
SERVICE = "pg-archiver"
JSON = "application/json"


def identity(*, config_path: str, mode: str) -> dict[str, Any]:
    return {"service": SERVICE, "pid": os.getpid(), "config": os.path.realpath(config_path),
            "host": socket.gethostname(), "mode": mode,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def route(ident: dict[str, Any]) -> Any:
    body = render_json(ident).encode()
    return lambda: (200, JSON, body)


def probe_holder(bind: str, port: int, *, timeout: float = 2.0) -> dict[str, Any] | None:
    """The identity of the archiver listening on (bind, port), or None when what listens there is
    not one (no answer, not HTTP, no /identity, not our JSON)."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(bind, bind)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}{PATH}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - a local http URL we built
            doc = json.loads(r.read(65536))
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return doc if isinstance(doc, dict) and doc.get("service") == SERVICE else None


def same_config(holder: dict[str, Any], config_path: str) -> bool:
    return holder.get("host") == socket.gethostname() and holder.get("config") == os.path.realpath(config_path)


def describe(holder: dict[str, Any]) -> str:
    return f"pid {holder.get('pid')}, config {holder.get('config')}, {holder.get('mode')} since {holder.get('started')}"
