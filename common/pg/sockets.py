"""The sockets under PostgreSQL sessions, for common/pg/watchdog.py: how long one has been silent
(the kernel's count), shutting one down under the thread that waits on it, and finding the socket
of a session whose driver shows it to nobody (ADBC). Linux (/proc, TCP_INFO); elsewhere a session
is watched by time alone."""
from __future__ import annotations

import os
import socket
import struct
from typing import Any

from psycopg.conninfo import conninfo_to_dict


#: struct tcp_info (linux/tcp.h): 8 one-byte fields, then u32s; tcpi_last_data_recv is the 12th.
_TCP_INFO_LEN = 104
_LAST_DATA_RECV = struct.Struct("=I")
_LAST_DATA_RECV_OFFSET = 8 + 11 * 4


def since_last_byte(fd: int) -> float | None:
    """Seconds since this TCP socket last received data (the kernel's count), None if unknown."""
    try:
        with socket.socket(fileno=os.dup(fd)) as s:
            raw = s.getsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_INFO", 11), _TCP_INFO_LEN)
    except OSError:
        return None  # a Unix-domain socket, or not Linux
    if len(raw) < _LAST_DATA_RECV_OFFSET + 4:
        return None
    return float(_LAST_DATA_RECV.unpack_from(raw, _LAST_DATA_RECV_OFFSET)[0]) / 1000


def shut(fd: int) -> None:
    """End a connection under the thread waiting on it: its poll() wakes, its read sees EOF."""
    try:
        with socket.socket(fileno=os.dup(fd)) as s:
            s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def socket_fds() -> set[int]:
    """This process's open sockets (Linux /proc; empty elsewhere)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return set()
    out = set()
    for name in names:
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                out.add(int(name))
        except OSError:
            continue
    return out


def _peer(fd: int) -> Any:
    try:
        with socket.socket(fileno=os.dup(fd)) as s:
            return s.getpeername()
    except OSError:
        return None


def _is_server(peer: Any, info: str) -> bool:
    """Whether a socket's peer address is the server of `info` (its port, or a PostgreSQL Unix socket)."""
    d = conninfo_to_dict(info)
    port = int(str(d.get("port") or 5432).split(",")[0])
    return (isinstance(peer, tuple) and peer[1] == port) or (isinstance(peer, str) and ".s.PGSQL." in peer)


#: The far ends of parked sockets: never closed, so a parked wait never ends (nor fails).
_PARKED: list[socket.socket] = []


def park(fd: int) -> None:
    """Put a quiet local socket in place of this one (dup2) and end the real connection: a thread
    waiting on it wakes, finds nothing to read and waits on for good, and the driver under it
    never sees its connection fail. For a driver that would abort the process on that (the ADBC
    PostgreSQL driver below 1.11: apache/arrow-adbc#3878); its waiter is abandoned instead."""
    quiet, far = socket.socketpair()
    quiet.setblocking(False)  # libpq's sockets are non-blocking: a read finds nothing, it polls
    _PARKED.extend((quiet, far))
    old = os.dup(fd)
    try:
        os.dup2(quiet.fileno(), fd)
        shut(old)  # wakes the poll() on the old socket
    finally:
        os.close(old)


def new_socket_to(before: set[int], info: str) -> int | None:
    """The one socket opened since `before` to the server of `info` (the ADBC driver shows libpq's
    socket to nobody), None when there is not exactly one: it is then watched by time alone."""
    found = [fd for fd in socket_fds() - before if _is_server(_peer(fd), info)]
    return found[0] if len(found) == 1 else None
