"""`ssl` options refused when the configuration resolves (before any stage runs), and listed by
`bench list --options`."""
from __future__ import annotations

import pytest

from bench.config import describe, resolve
from bench.errors import BenchError


@pytest.mark.parametrize("profile,sets", [
    ("smoke", {"ssl.epochs": 5, "ssl.warmup_epochs": 10}),
    ("paper", {"ssl.epochs": 5}),                     # the default 10-epoch warm-up
])
def test_warmup_longer_than_the_schedule_is_refused_naming_both_keys(profile, sets):
    with pytest.raises(BenchError, match=r"ssl\.warmup_epochs = 10 must be <= ssl\.epochs = 5"):
        resolve(profile, sets=sets)


@pytest.mark.parametrize("sets", [{"ssl.epochs": 0, "ssl.warmup_epochs": 10},      # the random-encoder control
                                  {"ssl.epochs": 10, "ssl.warmup_epochs": 10}])
def test_warmup_up_to_the_schedule_or_no_pretraining_is_allowed(sets):
    assert resolve("paper", sets=sets).ssl.warmup_epochs == 10


@pytest.mark.parametrize("sets,message", [
    ({"ssl.swav_queue": -32}, r"ssl\.swav_queue = -32 must be >= 0"),
    ({"ssl.swav_queue": 100, "ssl.batch_size": 32}, r"ssl\.swav_queue = 100 .* multiple of ssl\.batch_size = 32"),
    ({"ssl.swav_queue_start": -1}, r"ssl\.swav_queue_start = -1 must be >= 0"),
])
def test_bad_swav_queue_options_are_refused(sets, message):
    with pytest.raises(BenchError, match=message):
        resolve("smoke", sets=sets)


def test_swav_queue_options_default_off_and_are_listed():
    cfg = resolve("smoke", sets={"ssl.swav_queue": 96, "ssl.batch_size": 32}).ssl
    assert (cfg.swav_queue, cfg.swav_queue_start) == (96, 15)
    assert resolve("paper").ssl.swav_queue == 0
    listed = {key: (default, doc) for key, _, default, doc in describe()}
    assert listed["ssl.swav_queue"][0] == 0 and "queue" in listed["ssl.swav_queue"][1]
    assert listed["ssl.swav_queue_start"][0] == 15 and listed["ssl.swav_queue_start"][1]
