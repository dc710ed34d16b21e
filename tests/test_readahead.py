"""common/readahead.in_order, which restore's object reader and query's downloads run on: results in
the items' order whatever order the work finishes in, a bounded number of items under way, and
nothing left queued once the caller stops early."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from common.readahead import in_order


def test_results_come_in_the_items_order_when_later_work_finishes_first() -> None:
    released = {i: threading.Event() for i in range(5)}

    def work(i: int) -> int:
        released[i].wait(timeout=10)
        return i * 10

    with ThreadPoolExecutor(max_workers=5) as pool:
        results = in_order(range(5), lambda i: pool.submit(work, i), ahead=4)
        for i in reversed(range(5)):  # the last submitted finishes first
            released[i].set()
        assert list(results) == [0, 10, 20, 30, 40]


@pytest.mark.parametrize("ahead", [1, 3])
def test_at_most_ahead_items_are_under_way_beyond_the_one_held(ahead: int) -> None:
    consumed: list[int] = []

    def items() -> Iterator[int]:
        for i in range(10):
            consumed.append(i)
            yield i

    with ThreadPoolExecutor(max_workers=2) as pool:
        for held, value in enumerate(in_order(items(), lambda i: pool.submit(int, i), ahead=ahead)):
            assert value == held
            # the input is read lazily: the held item and `ahead` more, never the whole list
            assert len(consumed) <= held + 1 + ahead


def test_closing_early_cancels_the_work_not_started() -> None:
    gates = [threading.Event() for _ in range(100)]
    started = [threading.Event() for _ in range(100)]
    futures: list[Future[int]] = []

    def work(i: int) -> int:
        started[i].set()
        gates[i].wait(timeout=10)
        return i

    def submit(i: int) -> Future[int]:
        futures.append(pool.submit(work, i))
        return futures[-1]

    with ThreadPoolExecutor(max_workers=1) as pool:  # one worker: it is busy with item 1 from here
        results = in_order(range(100), submit, ahead=3)
        gates[0].set()
        assert next(results) == 0
        assert started[1].wait(timeout=10)
        results.close()  # a --limit reached, or an error in the caller
        assert len(futures) == 4  # the item held and three more, not the hundred
        assert [f.cancelled() for f in futures[2:]] == [True, True]  # queued behind item 1: never run
        for gate in gates:
            gate.set()


def test_a_stop_event_ends_the_iteration_without_an_error() -> None:
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=2) as pool:
        got = []
        for value in in_order(range(10), lambda i: pool.submit(int, i), ahead=2, stop=stop):
            got.append(value)
            if value == 2:
                stop.set()
    assert got == [0, 1, 2]


def test_an_error_of_one_item_reaches_the_caller_at_that_item() -> None:
    def work(i: int) -> int:
        if i == 2:
            raise RuntimeError("object 2 is unreadable")
        return i

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = in_order(range(5), lambda i: pool.submit(work, i), ahead=2)
        assert [next(results), next(results)] == [0, 1]
        with pytest.raises(RuntimeError, match="object 2"):
            next(results)
