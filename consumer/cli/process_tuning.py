"""Process-wide settings ``reach-sync run`` makes for itself: glibc's allocator and Python's
cyclic garbage collector. They belong to the process, so the command sets them, not the
library (a test or an embedding program keeps its own). The benchmarks call ``tune_gc`` so
that their in-process parts collect as ``run`` does (the allocator's settings matter for the
peak RSS they measure on ``run`` itself). The figures behind each: docs/benchmarks.md.
"""

from __future__ import annotations

import gc
import os

__all__ = ["GC_YOUNG_THRESHOLD", "tune_gc", "tune_malloc"]

# glibc's malloc settings (mallopt). By default glibc raises its mmap threshold each time a
# large block is freed (up to 32 MiB), after which fetch buffers, event values and request
# bodies come from the heap and fragment it: M_TRIM_THRESHOLD and M_MMAP_THRESHOLD fixed at
# 128 KiB, a 300,000-event backlog peaked 10-20 MiB lower. And glibc gives threads up to
# 8 arenas a core, each holding its own free memory; librdkafka's and the health server's
# threads allocate little, so M_ARENA_MAX 2 took the peak another 9 MiB lower (229-233 →
# 220-225 MiB in three runs each, the same rate; bench/pipeline.py, peak RSS).
# Each is left alone when the environment sets it (glibc's own MALLOC_*_ variables).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # <malloc.h>
_MALLOPT = {
    _M_TRIM_THRESHOLD: ("MALLOC_TRIM_THRESHOLD_", 128 * 1024),
    _M_MMAP_THRESHOLD: ("MALLOC_MMAP_THRESHOLD_", 128 * 1024),
    _M_ARENA_MAX: ("MALLOC_ARENA_MAX", 2),
}

# The collector's youngest generation is collected after this many container objects were
# allocated and not freed (CPython's default: 700). A backlog allocates millions (decoded dirty
# keys, rows, records, audit messages), nearly all freed by reference counting, so at 700 the
# collector ran thousands of times a minute, and its full collections walked every object the
# windows in flight hold: about a fifth of the process's CPU in a backlog. Higher is not better
# without end: a young collection stops every Python thread while it runs, and at 50,000 each took
# about 80 ms of CPU under a real-time load, which lengthened the latency's tail; at 10,000 the
# longest took 15-23 ms there, and a backlog spends a tenth to a quarter of the default's time
# in the collector (docs/benchmarks.md). What it can still find (cyclic garbage) waits at most
# this many allocations.
GC_YOUNG_THRESHOLD = 10_000


def tune_malloc() -> None:
    """Set glibc's malloc settings (``_MALLOPT``), each unless the environment sets it itself,
    and nothing where the C library is not glibc. Before any thread starts."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return
    for param, (variable, value) in _MALLOPT.items():
        if variable not in os.environ:
            mallopt(param, value)


def tune_gc() -> None:
    """Collect once, then freeze what the start made (modules, the definition: they live as
    long as the process, and a full collection would otherwise walk them every time),
    and raise the youngest generation's threshold to ``GC_YOUNG_THRESHOLD``. Once, when the
    process has started and before it works; a threshold set higher already is kept."""
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), middle, old)
