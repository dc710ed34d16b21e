"""A moment in a run, marked by the S3 client itself: botocore's after-call event fires in the
upload thread once S3 has answered a request, so a test can act at "this batch's object is
stored, its rows not yet deleted" without a hook inside the archiver."""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def once_after(client: Any, operation: str, action: Callable[[], None]) -> threading.Event:
    """Run `action` once, right after the client's first `operation` (e.g. "PutObject") call has
    its answer and before that call returns to the archiver; the returned event is set after."""
    done = threading.Event()
    lock = threading.Lock()

    def handler(**_: Any) -> None:  # must return None: a value would stand in for the response
        with lock:
            if done.is_set():
                return
            action()
            done.set()

    client.meta.events.register(f"after-call.s3.{operation}", handler)
    return done
