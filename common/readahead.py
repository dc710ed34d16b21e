"""Work started ahead and taken in order: restore reads and checks the next objects while one is
loaded (restore/loader.py), query downloads the next scans while one is answered (query/app.py).
At most `ahead` items are under way beyond the one the caller holds, so memory is bounded by that,
not by how many items there are; closing the generator early (an error, a --limit reached)
cancels what has not started."""
from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable
from typing import Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R", covariant=True)


class Pending(Protocol[R]):
    """What `submit` returns: a concurrent.futures.Future, or anything with its two methods."""

    def result(self) -> R: ...

    def cancel(self) -> bool: ...


def in_order(items: Iterable[T], submit: Callable[[T], Pending[R]], *, ahead: int,
             stop: threading.Event | None = None) -> Generator[R, None, None]:
    """The result of submit(item) for each item, in the items' order. The next item is submitted
    before a result is handed over, so the work keeps going while the caller uses it; `items` is
    consumed lazily. Stops early, without raising, once `stop` is set."""
    if ahead < 1:
        raise ValueError("ahead must be at least 1")
    queued: deque[Pending[R]] = deque()
    todo = iter(items)
    try:
        for item in itertools.islice(todo, ahead):
            queued.append(submit(item))
        while queued and not (stop is not None and stop.is_set()):
            done = queued.popleft().result()
            for following in itertools.islice(todo, 1):
                queued.append(submit(following))
            yield done
    finally:
        for pending in queued:
            pending.cancel()
