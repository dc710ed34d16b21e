"""The soak's TCP proxy in front of S3 (scripts/soak.py): cut (connections reset, new ones refused)
and stall (connections stay open, nothing is forwarded: a dropped route or a hung load balancer),
then restore. tests/tcp_proxy.py cuts only; this one also stalls, and lives here so the soak does
not import the test suite."""
from __future__ import annotations

import socket
import threading
import time

#: SO_LINGER on, timeout 0: close() sends a reset, as a dead endpoint does.
_RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"


class FaultyProxy:
    def __init__(self, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, 0))
        self.port = int(self.listener.getsockname()[1])
        self.listener.listen(128)
        self.state = "up"  # up | cut | stalled
        self.lock = threading.Lock()
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="soak-proxy").start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """S3 goes down: open connections are reset, new ones too."""
        with self.lock:
            self.state = "cut"
            conns, self.connections = self.connections, []
        for c in conns:
            _reset(c)

    def stall(self) -> None:
        """S3 goes silent: connections stay open (new ones are accepted) and carry nothing."""
        with self.lock:
            self.state = "stalled"

    def restore(self) -> None:
        with self.lock:
            self.state = "up"

    def close(self) -> None:
        self.cut()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                refused = self.state == "cut"
            if refused:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                _reset(client)
                continue
            with self.lock:
                self.connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while self.state == "stalled":  # hold the bytes: the peer sees silence, not an error
                    time.sleep(0.05)
                if self.state == "cut":
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            # Each socket is read by one thread, which closes it: a soak opens thousands.
            with self.lock:
                if src in self.connections:
                    self.connections.remove(src)
            src.close()


def _reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        sock.close()
    except OSError:
        pass
