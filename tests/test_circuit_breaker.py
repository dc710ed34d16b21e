"""The S3 circuit breaker of archiver/sink.py (issue 3): once an upload finds S3 down, batches go to
the fallback directory without trying S3 again for each one; after `probe_interval` (on an injected
clock, so no test waits for it) one cheap probe decides whether the circuit closes.

S3 is moto's server behind a TCP proxy the test cuts and restores; the fallback is a real
directory. Requests are counted by botocore's own per-attempt event, retries included."""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from archive_checks import archived
from archiver.sink import ArchiveSink
from common.archive import layout
from common.config import load_config
from common.archive.fallback import FallbackDir
from common.archive.manifest import Manifest
from common.archive.s3client import make_client
from common.archive.storage import S3Storage
from conftest import make_config
from tcp_proxy import TcpProxy

PROBE_INTERVAL = 60.0


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Requests:
    """What the client asks of S3, by operation: `calls` once per API call (botocore's
    before-call), `sent` once per HTTP attempt, retries included (before-send)."""

    def __init__(self, client: Any) -> None:
        self.calls: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        client.meta.events.register("before-call.s3", self._call)
        client.meta.events.register("before-send.s3", self._send)

    # Both must return None: a handler's return value would stand in for the request's response.
    def _call(self, event_name: str, **_: Any) -> None:
        self.calls[event_name.rsplit(".", 1)[-1]] += 1

    def _send(self, event_name: str, **_: Any) -> None:
        self.sent[event_name.rsplit(".", 1)[-1]] += 1

    @property
    def total(self) -> int:
        return sum(self.sent.values())


@pytest.fixture()
def proxy(moto_server: str) -> Iterator[TcpProxy]:
    p = TcpProxy(int(urlparse(moto_server).port or 0))
    yield p
    p.close()


class Rig:
    def __init__(self, tmp_path: Path, bucket: str, proxy: TcpProxy, s3_client: Any) -> None:
        # The archiver's own client factory and settings (one attempt, short timeouts), aimed at the proxy.
        cfg = load_config(make_config(tmp_path, dsn="host=127.0.0.1", bucket=bucket, endpoint=proxy.url))
        client = make_client(cfg)
        self.requests = Requests(client)
        self.clock = FakeClock()
        self.fallback = FallbackDir(tmp_path / "fallback")
        self.sink = ArchiveSink(S3Storage(client, bucket), self.fallback, probe_interval=PROBE_INTERVAL, clock=self.clock)
        self.proxy, self.bucket, self.direct = proxy, bucket, s3_client
        self.made = 0

    def batch(self) -> tuple[Manifest, bytes]:
        """A distinct small batch: its bytes and a manifest that describes them."""
        self.made += 1
        data = f"batch {self.made}".encode() * 100
        key = f"production_db/public.audit_logs/year=2024/month=01/day={self.made:02d}/part-{self.made}.parquet"
        return Manifest(key=key, sha256=hashlib.sha256(data).hexdigest(), size=len(data), rows=1,
                        database="production_db", schema="public", table="audit_logs", primary_key="id",
                        timestamp_column="created_at", min_pk=self.made, max_pk=self.made,
                        min_ts="2024-01-01T00:00:00+00:00", max_ts="2024-01-01T00:00:00+00:00",
                        schema_fingerprint="sha256:test", format="parquet", format_version=1,
                        archiver_version="test", created_at="2024-01-01T00:00:00+00:00"), data

    def put(self) -> tuple[Manifest, str]:
        m, data = self.batch()
        return m, self.sink.put(m, data)

    def in_s3(self) -> set[str]:
        """Keys in the bucket, asked of moto directly (not through the proxy)."""
        pages = self.direct.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return {o["Key"] for page in pages for o in page.get("Contents", [])}

    def in_fallback(self) -> set[str]:
        return {o.key for o in self.fallback.list("")}


@pytest.fixture()
def rig(tmp_path: Path, bucket: str, proxy: TcpProxy, s3_client: Any) -> Rig:
    return Rig(tmp_path, bucket, proxy, s3_client)


def open_the_circuit(rig: Rig) -> Manifest:
    """S3 goes down; the next batch finds out and lands in the fallback directory."""
    rig.proxy.cut()
    m, location = rig.put()
    assert location == "fallback" and rig.sink.s3_down
    # one upload call (botocore's retries inside it), then the fallback; nothing else asked
    assert rig.requests.calls == Counter(PutObject=1) and rig.requests.sent["PutObject"] >= 1
    return m


def test_s3_down_sends_later_batches_to_the_fallback_without_trying_s3(rig: Rig) -> None:
    first = open_the_circuit(rig)
    before = rig.requests.total
    later = [rig.put() for _ in range(3)]
    rig.clock.advance(PROBE_INTERVAL - 0.001)
    later.append(rig.put())
    assert [location for _, location in later] == ["fallback"] * 4
    assert rig.requests.total == before  # no request at all while the circuit is open
    assert rig.in_fallback() == {m.key for m in [first, *(m for m, _ in later)]}  # objects; manifests come with record()
    assert rig.fallback.pending()[0] == 5
    assert rig.in_s3() == set()


def test_within_the_probe_interval_s3_is_not_asked_even_when_it_is_back(rig: Rig) -> None:
    open_the_circuit(rig)
    rig.proxy.restore()
    before = rig.requests.total
    rig.clock.advance(PROBE_INTERVAL / 2)
    m, location = rig.put()
    assert location == "fallback" and rig.sink.s3_down
    assert rig.requests.total == before
    assert m.key in rig.in_fallback() and rig.in_s3() == set()


def test_a_successful_probe_after_the_interval_closes_the_circuit(rig: Rig) -> None:
    open_the_circuit(rig)
    rig.proxy.restore()
    rig.clock.advance(PROBE_INTERVAL)
    m, location = rig.put()
    assert location == "s3" and not rig.sink.s3_down
    assert rig.requests.calls["HeadBucket"] == 1  # one probe decided it
    assert rig.in_s3() == {m.key}
    # closed: the next batch goes straight to S3, with no probe before it
    m2, location = rig.put()
    assert location == "s3" and rig.requests.calls["HeadBucket"] == 1
    assert rig.in_s3() == {m.key, m2.key}
    assert m2.key not in rig.in_fallback()


def test_a_failed_probe_keeps_the_circuit_open_for_another_interval(rig: Rig) -> None:
    open_the_circuit(rig)
    rig.clock.advance(PROBE_INTERVAL)
    puts = rig.requests.calls["PutObject"]
    m, location = rig.put()
    assert location == "fallback" and rig.sink.s3_down
    # the probe was tried once and failed; the batch itself was not offered to S3
    assert rig.requests.calls["HeadBucket"] == 1 and rig.requests.calls["PutObject"] == puts
    assert m.key in rig.in_fallback()
    # the interval starts again from the failed probe: S3 is back, but not asked yet
    rig.proxy.restore()
    rig.clock.advance(PROBE_INTERVAL - 0.001)
    _, location = rig.put()
    assert location == "fallback" and rig.requests.calls["HeadBucket"] == 1
    rig.clock.advance(0.001)
    m3, location = rig.put()
    assert location == "s3" and not rig.sink.s3_down and rig.requests.calls["HeadBucket"] == 2
    assert rig.in_s3() == {m3.key}


def test_a_set_for_batches_already_in_s3_waits_in_the_fallback_and_drains_without_reuploading_them(rig: Rig) -> None:
    """S3 went down between a group's uploads and its manifest set: the set goes to the fallback
    directory (its objects stay in S3), and the drain checks those objects in S3 and stores the set
    there, uploading no object again."""
    stored = [rig.put() for _ in range(2)]
    assert [location for _, location in stored] == ["s3", "s3"]
    rig.proxy.cut()
    rig.sink.record(stored)
    assert rig.sink.s3_down
    assert {layout.is_manifest_set(k) for k in rig.in_fallback()} == {True}  # the set alone
    rig.proxy.restore()
    rig.clock.advance(PROBE_INTERVAL)
    puts = rig.requests.calls["PutObject"]
    drained = rig.sink.drain()
    assert (drained.drained, drained.quarantined, drained.remaining) == (2, 0, 0)
    assert rig.requests.calls["PutObject"] == puts + 1  # the set; the objects were in S3 already
    assert rig.in_fallback() == set()
    assert sorted(archived(S3Storage(rig.direct, rig.bucket))) == sorted(m.key for m, _ in stored)


def test_a_fallback_set_whose_object_is_nowhere_is_quarantined_not_drained(rig: Rig) -> None:
    """Its object is neither in the fallback directory nor in S3: the set is set aside (validate
    reports it), never stored where it would count an object that is gone."""
    stored = [rig.put()]
    rig.direct.delete_object(Bucket=rig.bucket, Key=stored[0][0].key)  # lost before the set was stored
    rig.proxy.cut()
    rig.sink.record(stored)
    rig.proxy.restore()
    rig.clock.advance(PROBE_INTERVAL)
    drained = rig.sink.drain()
    assert (drained.drained, drained.quarantined) == (0, 1)
    assert archived(S3Storage(rig.direct, rig.bucket)) == {}
    assert [k for k in (o.key for o in rig.fallback.quarantined().list("")) if layout.is_manifest_set(k)]  # type: ignore[union-attr]
