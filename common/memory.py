"""Process-wide settings for the tools that move many Arrow buffers between threads. Only a
command's process entry point calls these (they change the whole process)."""
from __future__ import annotations

import gc
import os
import sys


def use_system_allocator() -> None:
    """Arrow's default mimalloc pool keeps pages freed by another thread. Buffers made on one
    thread and released on another left peak RSS high:
    - restoring 50k-row objects: ~276 MB, against ~180-200 MB with the system allocator;
    - archiving the 2M-row bench: ~293 MB, against ~245 MB.
    Both at the same speed. An explicit ARROW_DEFAULT_MEMORY_POOL wins.

    Before pyarrow is imported the environment variable is the whole switch; afterwards
    set_memory_pool only reaches pyarrow's Python-level calls, not C++ code such as the Parquet
    writer (archiving: ~283 MB that way, against ~245 MB through the variable)."""
    if "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return
    if "pyarrow" not in sys.modules:
        os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "system"
        return
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())


def quiet_process() -> None:
    """No BLAS worker threads: numpy's are never used here, yet they spun for ~2% of the
    archiver's CPU on the 2M-row bench (perf). Set before numpy loads; explicit settings win."""
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def settle_heap() -> None:
    """After start-up: the imported modules' objects move out of the collector's sight, and young
    collections run less often. The upload threads make many short-lived dicts; garbage collection
    was ~4% of the archiver's CPU on the 2M-row bench (perf). Cycles are still collected."""
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
