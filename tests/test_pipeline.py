"""The batch pipeline's threads (archiver/pipeline.py) on their own: a reader of made-up batches,
uploads that record what they did; the table job's tests run it over PostgreSQL and S3."""
from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import date
import pyarrow as pa
import pytest

from archiver.controls import RunControls
from archiver.encoding import Encoded
from archiver.hooks import Hook
from archiver.pipeline import READ_AHEAD, BatchPipeline
from archiver.reader import Batch
from common.archive.manifest import Manifest

DAY = date(2024, 1, 1)


def batch(n: int) -> Batch:
    return Batch(DAY, pa.table({"id": [n]}), pa.array([1], pa.uint32()), {"id": "native"}, 8, 1, (n, None), (n, None))


def encode(b: Batch) -> Encoded:
    n = b.rows.column("id")[0].as_py()
    m = Manifest(key=f"k{n:04d}", sha256="", size=1, rows=1, database="d", schema="s", table="t",
                 primary_key="id", timestamp_column="ts", min_pk=n, max_pk=n, min_ts="", max_ts="",
                 schema_fingerprint="", format="parquet", format_version=1, archiver_version="test", created_at="")
    return Encoded(m, b"x", pa.chunked_array([b.rows.column("id")]), b.xmins, 0.0, b.window, b.lo, b.hi)


def endless(stop: threading.Event) -> Iterator[Batch]:
    n = 0
    while not stop.is_set():
        n += 1
        yield batch(n)


class Calls:
    """What the pipeline asked of its caller, guarded for the threads it comes from."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.reads = 0
        self.begun: list[str] = []
        self.called_off: list[str] = []
        self.uploaded: list[str] = []

    def hook(self, point: str) -> None:
        if point == "after_read":
            with self.cond:
                self.reads += 1
                self.cond.notify_all()

    def begin(self, new: Sequence[Encoded]) -> None:
        self.begun += [e.manifest.key for e in new]

    def call_off(self, enc: Encoded) -> None:
        self.called_off.append(enc.manifest.key)

    def wait_for(self, predicate: Callable[[], bool]) -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, timeout=10)


def encode_once_read_ahead(calls: Calls) -> Callable[[Batch], Encoded]:
    """An encoder whose first batch waits for the reader to be 5 batches ahead: the first take
    then collects a full flight of 4 (one upload thread)."""

    def first_waits_for_the_reader(b: Batch) -> Encoded:
        if b.lo[0] == 1:
            calls.wait_for(lambda: calls.reads >= 6)
        return encode(b)

    return first_waits_for_the_reader


def pipeline(calls: Calls, *, upload: Callable[[Manifest, bytes], str], controls: RunControls | None = None,
             encode_with: Callable[[Batch], Encoded] = encode, hook: Hook | None = None,
             call_off: Callable[[Encoded], None] | None = None) -> BatchPipeline:
    return BatchPipeline(read=endless, encode=encode_with, upload=upload, begin=calls.begin,
                         call_off=call_off or calls.call_off,
                         upload_failed=lambda exc: None, controls=controls or RunControls(),
                         hook=hook or calls.hook, uploads=1, window_rows=1_000, group_max=8, name="test")


def pipeline_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.split("-")[0] in ("reader", "encode", "upload")]


def in_thread(work: Callable[[], None]) -> BaseException | None:
    """Run `work` in a thread and return what it raised; fails if it does not end (a hang)."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            raised.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout=20)
    assert not t.is_alive(), "the pipeline did not shut down"
    return raised[0] if raised else None


class Boom(Exception):
    pass


def test_exit_unblocks_a_reader_on_a_full_queue_and_outlives_no_upload() -> None:
    calls = Calls()
    finished_at_exit: list[int] = []

    def slow_upload(m: Manifest, data: bytes) -> str:
        threading.Event().wait(0.02)  # an upload's duration, so some are still queued at the exit
        with calls.cond:
            calls.uploaded.append(m.key)
        return "local"

    def work() -> None:
        pipe = pipeline(calls, upload=slow_upload, encode_with=encode_once_read_ahead(calls))
        try:
            with pipe:
                for _group in pipe.stored():
                    # the mover is busy here: the reader fills the queue and blocks on it
                    calls.wait_for(lambda: calls.reads >= len(calls.begun) + READ_AHEAD + 1)
                    raise Boom
        finally:
            finished_at_exit.append(len(calls.uploaded))

    assert isinstance(in_thread(work), Boom)
    assert len(calls.begun) == 4 and finished_at_exit == [4]  # every begun upload ran, before the exit
    assert pipeline_threads() == []


def test_a_stop_calls_off_queued_uploads_from_the_end_and_hands_out_the_rest_in_read_order() -> None:
    calls = Calls()
    controls = RunControls()
    second_started, second_may_finish = threading.Event(), threading.Event()

    def upload(m: Manifest, data: bytes) -> str:
        if m.key == "k0002":  # running while the stop comes: it cannot be called off
            second_started.set()
            assert second_may_finish.wait(10)
        calls.uploaded.append(m.key)
        return "local"

    def call_off(enc: Encoded) -> None:
        calls.called_off.append(enc.manifest.key)
        if len(calls.called_off) == 2:
            second_may_finish.set()

    handed_out: list[str] = []

    def work() -> None:
        with pipeline(calls, upload=upload, controls=controls, encode_with=encode_once_read_ahead(calls),
                      call_off=call_off) as pipe:
            for group in pipe.stored():
                handed_out.extend(enc.manifest.key for enc, _ in group)
                assert second_started.wait(10)
                controls.signal_received = signal.SIGTERM

    assert in_thread(work) is None
    assert calls.begun == ["k0001", "k0002", "k0003", "k0004"]
    assert handed_out == ["k0001", "k0002"] and calls.called_off == ["k0004", "k0003"]


@pytest.mark.parametrize("where", ["read", "encode"])
def test_a_reader_or_encoder_error_is_raised_to_the_caller(where: str) -> None:
    calls = Calls()

    def failing_hook(point: str) -> None:
        if where == "read" and point == "after_read" and calls.reads >= 3:
            raise Boom
        calls.hook(point)

    def failing_encode(b: Batch) -> Encoded:
        if where == "encode" and b.lo[0] == 3:
            raise Boom
        return encode(b)

    def work() -> None:
        with pipeline(calls, upload=lambda m, d: "local", encode_with=failing_encode, hook=failing_hook) as pipe:
            for _group in pipe.stored():
                pass

    assert isinstance(in_thread(work), Boom)
    assert pipeline_threads() == []
