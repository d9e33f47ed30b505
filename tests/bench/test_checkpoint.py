"""Resumer: saves when due (a fake clock), restores the logged metrics in place, off without a folder
or with checkpoint.minutes = 0, an unreadable state is ignored with a warning, validation."""
from __future__ import annotations

import pytest
import torch

from bench.checkpoint import Resumer, generator_states, restore_generators
from bench.config import resolve
from bench.errors import BenchError


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_saves_when_due_and_restores_history(tmp_path, capsys):
    clock, history = Clock(), [{"metric": "loss", "value": 1.0, "epoch": 0}]
    r = Resumer(tmp_path / "r", every_s=60.0, history=history, clock=clock)
    made = []
    make = lambda: made.append(1) or {"epoch": len(made), "w": torch.arange(3.0)}  # noqa: E731
    assert r.load() is None
    clock.t = 59.0
    assert not r.save_due(make) and not made                     # not due: the state is not even built
    clock.t = 61.0
    assert r.save_due(make) and (tmp_path / "r" / "state.pt").is_file()
    clock.t = 100.0
    assert not r.save_due(make)                                  # 39 s since the last save
    history.append({"metric": "loss", "value": 0.5, "epoch": 1})
    restored: list = [{"stale": True}]
    again = Resumer(tmp_path / "r", every_s=60.0, history=restored, clock=clock)
    state = again.load()
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.arange(3.0))
    assert "resuming from the state saved after epoch 1" in capsys.readouterr().err
    assert restored == [{"metric": "loss", "value": 1.0, "epoch": 0}]      # as logged at the save
    again.clear()
    assert not (tmp_path / "r").exists()


def test_off_without_folder_or_interval_and_bad_state_ignored(tmp_path):
    for r in (Resumer(None, 60.0), Resumer(tmp_path / "x", 0.0)):
        r.save({"epoch": 0})
        assert r.load() is None and not r.save_due(lambda: {"epoch": 0})
    assert not (tmp_path / "x").exists()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "state.pt").write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable"):
        assert Resumer(tmp_path / "bad", 60.0).load() is None


def test_generator_states_round_trip():
    g = torch.Generator().manual_seed(3)
    saved = generator_states(g=g)
    a = torch.rand(4, generator=g)
    restore_generators(saved, g=g)
    assert torch.equal(torch.rand(4, generator=g), a)


def test_checkpoint_minutes_validated():
    with pytest.raises(BenchError, match="checkpoint.minutes"):
        resolve("smoke", sets={"checkpoint.minutes": -1})
