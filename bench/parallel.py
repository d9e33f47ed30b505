"""Per-image CPU work in threads, in order (the stages' loops over radiographs).

Reading a 16-bit PNG, resampling and most numpy/scipy arithmetic release the GIL, so a thread pool
speeds up loops whose every item depends on its image alone (bone patches, ROI crops, radiogrammetry
profiles, landmark loading). Results come back in the items' order and at most `window` items are
in flight, so a loop over thousands of paper-size radiographs holds a few images at a time, and
its output is the same for any number of threads.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

from bench.hardware import usable_cores

T = TypeVar("T")
R = TypeVar("R")

MAX_IMAGE_THREADS = 8     # beyond this the GIL-held parts and memory bandwidth stop paying


def image_threads() -> int:
    """Default threads of a per-image loop: the usable cores, at most :data:`MAX_IMAGE_THREADS`."""
    return max(1, min(MAX_IMAGE_THREADS, usable_cores()))


def thread_map(fn: Callable[[T], R], items: Iterable[T], threads: int | None = None,
               window: int | None = None) -> Iterator[R]:
    """Yield ``fn(item)`` for every item, in order, computing up to `window` (default 2 x threads)
    items ahead in `threads` threads (default :func:`image_threads`; 1 runs in the caller's thread).

    An exception of `fn` is raised at its item's turn; the items after it are not started further.
    """
    threads = image_threads() if threads is None else int(threads)
    if threads <= 1:
        for item in items:
            yield fn(item)
        return
    window = max(threads, 2 * threads if window is None else int(window))
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(threads) as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:           # an error or an abandoned generator: start nothing more
                future.cancel()


__all__ = ["MAX_IMAGE_THREADS", "image_threads", "thread_map"]
