"""A small TCP proxy a test can cut and restore, so an S3 outage can start mid-run (issue 3), and
turn silent, slow or unreliable (issue 31: `tc netem` and toxiproxy are not available here):

- stall(): every connection, open or new, stays open and nothing more is forwarded, as behind a
  failed-over primary or a dropped route with a proxy in between: no reset, just silence (the
  kernel still acknowledges what the client sends, so TCP alone never notices);
- slice(n): forward at most n bytes at a time; delay(s): wait s seconds before each piece;
- stall_after(n): each connection, open or new, goes silent once n bytes went from the server to
  the client (a session that works for a while, then hangs in the middle of an answer);
- reset_after(n): reset a connection once n bytes went from the server to the client (a reset
  in the middle of an answer's body)."""
from __future__ import annotations

import socket
import threading
import time

#: SO_LINGER on, 0 s: close() sends a reset instead of a FIN.
_RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"


class TcpProxy:
    def __init__(self, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, 0))
        self.port = int(self.listener.getsockname()[1])
        self.listener.listen(64)
        self.connections: list[socket.socket] = []
        self.up = True
        self.accepted = 0
        self.lock = threading.Lock()
        self.flowing = threading.Condition(self.lock)
        self.stalled = False
        self.chunk = 65536
        self.pause = 0.0
        self.reset_at: int | None = None
        self.stall_at: int | None = None
        #: Pieces held back by a stall (a test waits on it to know the silence has begun).
        self.held = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def dsn(self, dsn: str) -> str:
        """A libpq DSN going through this proxy instead of to the server itself."""
        from psycopg.conninfo import make_conninfo
        return make_conninfo(dsn, host="127.0.0.1", port=self.port)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                if not self.up:
                    # Reset at once: the client sees a dropped connection, like a dead endpoint.
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                    client.close()
                    continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.connections += [client, upstream]
            for a, b, answers in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pipe, args=(a, b, answers), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        sent = 0
        try:
            while data := src.recv(self.chunk):
                for i in range(0, len(data), self.chunk):
                    piece = data[i:i + self.chunk]
                    if not self._wait_flowing(src):
                        return
                    if self.pause:
                        time.sleep(self.pause)
                    if answers and self.stall_at is not None and sent + len(piece) > self.stall_at:
                        dst.sendall(piece[:max(0, self.stall_at - sent)])
                        piece, sent = piece[max(0, self.stall_at - sent):], max(sent, self.stall_at)
                        if not self._hold(src):
                            return
                    if answers and self.reset_at is not None and sent + len(piece) > self.reset_at:
                        dst.sendall(piece[:max(0, self.reset_at - sent)])
                        self._reset(src, dst)
                        return
                    dst.sendall(piece)
                    sent += len(piece)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _wait_flowing(self, src: socket.socket) -> bool:
        """Hold a piece while stalled; False when the connection was cut meanwhile."""
        with self.flowing:
            if self.stalled:
                self.held += 1
            while self.stalled and src.fileno() != -1:
                self.flowing.wait(0.5)
            return src.fileno() != -1

    def _hold(self, src: socket.socket) -> bool:
        """Hold the rest of this connection's answers until restore(); False if it was cut."""
        with self.flowing:
            self.held += 1
            while self.stall_at is not None and src.fileno() != -1:
                self.flowing.wait(0.5)
            return src.fileno() != -1

    @staticmethod
    def _reset(*socks: socket.socket) -> None:
        for s in socks:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                # Wakes the other direction's thread blocked in recv() (it holds the socket open:
                # a close() alone would neither end its wait nor send the reset).
                s.shutdown(socket.SHUT_RD)
                s.close()
            except OSError:
                pass

    def stall(self) -> None:
        """Stop forwarding, keep every connection open: silence."""
        with self.flowing:
            self.stalled, self.held = True, 0

    def slice(self, nbytes: int) -> None:
        self.chunk = max(1, nbytes)

    def delay(self, seconds: float) -> None:
        self.pause = seconds

    def stall_after(self, nbytes: int | None) -> None:
        self.stall_at = nbytes

    def reset_after(self, nbytes: int | None) -> None:
        self.reset_at = nbytes

    def cut(self) -> None:
        """S3 goes down: open connections drop, new ones are reset."""
        with self.flowing:
            self.up = False
            conns, self.connections = self.connections, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass
        with self.flowing:
            self.flowing.notify_all()

    def restore(self) -> None:
        """Back to normal: up, flowing, no slicing, delay or reset."""
        with self.flowing:
            self.up, self.stalled = True, False
            self.chunk, self.pause, self.reset_at, self.stall_at = 65536, 0.0, None, None
            self.flowing.notify_all()

    def close(self) -> None:
        self.cut()
        self.listener.close()
