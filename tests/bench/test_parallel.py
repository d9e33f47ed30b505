"""bench.parallel.thread_map: order, bounded look-ahead, errors, the inline path."""
from __future__ import annotations

import random
import threading
import time

import pytest

from bench.parallel import image_threads, thread_map


def test_results_come_in_order_whatever_the_finishing_order():
    rng = random.Random(0)
    delays = [rng.uniform(0, 0.01) for _ in range(40)]

    def work(i: int) -> tuple[int, int]:
        time.sleep(delays[i])
        return i, i * i
    assert list(thread_map(work, range(40), threads=4)) == [(i, i * i) for i in range(40)]


def test_at_most_window_items_in_flight():
    lock, state = threading.Lock(), {"now": 0, "peak": 0, "started": 0}

    def work(i: int) -> int:
        with lock:
            state["now"] += 1
            state["started"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.002)
        with lock:
            state["now"] -= 1
        return i
    taken = []
    for i in thread_map(work, range(30), threads=3, window=5):
        taken.append(i)
        with lock:                       # not yet taken: at most `window` submitted ahead of the consumer
            assert state["started"] - len(taken) <= 5 - 1
        time.sleep(0.001)
    assert taken == list(range(30)) and state["peak"] <= 3


def test_an_error_is_raised_at_its_turn_and_later_items_are_not_all_started():
    started = []

    def work(i: int) -> int:
        started.append(i)
        if i == 3:
            raise ValueError("bad image 3")
        time.sleep(0.005)
        return i
    got = []
    with pytest.raises(ValueError, match="bad image 3"):
        for i in thread_map(work, range(100), threads=2, window=4):
            got.append(i)
    assert got == [0, 1, 2]
    assert max(started) < 10


def test_one_thread_runs_in_the_callers_thread_lazily():
    caller = threading.get_ident()
    seen = []
    it = thread_map(lambda i: (seen.append(i), threading.get_ident())[1], range(3), threads=1)
    assert seen == []                                  # nothing runs before it is asked for
    assert next(it) == caller and seen == [0]
    assert image_threads() >= 1
