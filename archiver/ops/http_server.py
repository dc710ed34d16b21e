"""The small HTTP thread behind the health and metrics endpoints (issue 6): a threading HTTP server
per port, serving fixed routes, started and stopped as a context manager. A port that cannot be
bound is a one-line ConfigError naming the config key, the address and the port (exit 2)."""
from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from common.errors import ConfigError

log = logging.getLogger("archiver.http")

#: A route answers (HTTP status, content type, body).
Route = Callable[[], tuple[int, str, bytes]]


class PortInUse(ConfigError):
    """The port is already bound (EADDRINUSE): by whom, the caller may ask (archiver/ops/identity.py)."""

    def __init__(self, message: str, *, key: str, bind: str, port: int) -> None:
        super().__init__(message)
        self.key, self.bind, self.port = key, bind, port


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a slow scraper must never keep the process alive


class _Server6(_Server):
    address_family = socket.AF_INET6


def _handler(routes: Mapping[str, Route]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "pg-archiver"
        sys_version = ""

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                status, ctype, body = 404, "text/plain; charset=utf-8", f"not found; try {', '.join(routes)}\n".encode()
            else:
                try:
                    status, ctype, body = route()
                except Exception as exc:  # noqa: BLE001 - an endpoint bug must not kill the thread
                    log.warning("%s handler failed: %s", self.path, exc)
                    status, ctype, body = 500, "text/plain; charset=utf-8", b"internal error\n"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
            # Scrapes every 15 s would drown the log the runbook greps.
            log.debug("%s " + format, self.address_string(), *args)

    return Handler


class EndpointServer:
    """One listening port with its routes, served from a daemon thread while the context is open."""

    def __init__(self, *, bind: str, port: int, routes: Mapping[str, Route], key: str = "monitoring") -> None:
        self.bind, self.requested_port, self.routes, self.key = bind, port, dict(routes), key
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return int(self._server.server_address[1])

    def start(self) -> EndpointServer:
        try:
            server_class = _Server6 if ":" in self.bind else _Server
            self._server = server_class((self.bind, self.requested_port), _handler(self.routes))
        except OSError as exc:
            message = _bind_error(self.key, self.bind, self.requested_port, exc)
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(message, key=self.key, bind=self.bind, port=self.requested_port) from None
            raise ConfigError(message) from None
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"http-{self.requested_port}", daemon=True)
        self._thread.start()
        log.info("serving %s on http://%s:%d", ", ".join(self.routes), self.bind, self.port)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> EndpointServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _bind_error(key: str, bind: str, port: int, exc: OSError) -> str:
    where = f"{key}: cannot listen on {bind}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (f"{where}: port {port} is already in use (another archiver or exporter running?); "
                f"stop it, choose another port, or set {key} to null to disable it")
    if exc.errno == errno.EACCES:
        return f"{where}: permission denied (ports below 1024 need privileges); choose a port above 1024"
    if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        return f"{where}: address {bind} is not available on this host; check monitoring.bind"
    return f"{where}: {exc.strerror or exc}"


@contextmanager
def serve_endpoints(*, bind: str, endpoints: Sequence[tuple[str, int | None, str, Route]]) -> Iterator[list[EndpointServer]]:
    """Serve each (config key, port, path, route); endpoints sharing a port share one server, and a
    port of None or 0 is disabled. Yields the started servers; all stop when the block ends."""
    by_port: dict[int, tuple[str, dict[str, Route]]] = {}
    for key, port, path, route in endpoints:
        if not port:
            continue
        by_port.setdefault(port, (key, {}))[1][path] = route
    with ExitStack() as stack:
        servers = [stack.enter_context(EndpointServer(bind=bind, port=port, routes=routes, key=key))
                   for port, (key, routes) in by_port.items()]
        yield servers
