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
    assert "resuming from the state saved after epoch 2" in capsys.readouterr().err   # index 1: the 2nd epoch line
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


def test_saved_state_carries_the_seconds_it_cost_across_attempts(tmp_path):
    clock = Clock()
    clock.t = 10.0
    first = Resumer(tmp_path / "r", every_s=60.0, clock=clock)
    clock.t = 70.0
    first.save({"epoch": 0})                                     # 60 s into the first attempt
    clock.t = 500.0                                              # killed; a second attempt starts
    second = Resumer(tmp_path / "r", every_s=60.0, clock=clock)
    assert second.load() == {"epoch": 0} and second.earlier_s == 60.0
    clock.t = 530.0
    second.save({"epoch": 1})
    third = Resumer(tmp_path / "r", every_s=60.0, clock=clock)
    third.load()
    assert third.earlier_s == pytest.approx(90.0)               # 60 + 30; the first attempt's lost 430 s not


def test_stage_marker_counts_the_resumed_attempts(tmp_path):
    """_stage.json's seconds = this attempt + what the resumed state cost; the resume folder then goes."""
    import json

    from bench.checkpoint import resume_dir
    from bench.registry import Stage
    from bench.stage import run_stage

    def resumable(ctx):
        state = ctx.resumer().load()
        return {"resumed_epoch": None if state is None else state["epoch"]}

    stage = Stage("resumable", resumable, sections=("checkpoint",))
    cfg = resolve("smoke")
    state_dir = resume_dir(tmp_path, "resumable", "k")
    Resumer(state_dir, 60.0).save({"epoch": 3})
    torch_state = torch.load(state_dir / "state.pt", weights_only=False)
    torch_state["seconds"] = 42.0                                 # as an earlier attempt would have saved
    torch.save(torch_state, state_dir / "state.pt")
    out = run_stage(stage, cache_root=tmp_path, key="k", material={}, config=cfg, seed=0, inputs={}, datasets={},
                    device="cpu")
    marker = json.loads((out / "_stage.json").read_text())
    assert marker["summary"] == {"resumed_epoch": 3} and marker["resumed_seconds"] == 42.0
    assert 42.0 <= marker["seconds"] < 42.0 + 60 and not state_dir.exists()
    fresh = run_stage(stage, cache_root=tmp_path, key="k2", material={}, config=cfg, seed=0, inputs={},
                      datasets={}, device="cpu")
    marker = json.loads((fresh / "_stage.json").read_text())
    assert "resumed_seconds" not in marker and marker["seconds"] < 42.0


def test_the_cuda_rng_states_are_saved_and_restored_when_cuda_is_in_use(monkeypatch):
    """A resumed loop on a GPU draws the same dropout masks (global CUDA RNG) as an uninterrupted one."""
    import torch

    from bench.checkpoint import loop_state, restore_loop

    assert loop_state(0, {}, {})["cuda_rng"] is None or torch.cuda.is_initialized()
    states = [torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([3, 4], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)            # resumed on a machine with one GPU
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, index: restored.append((s.tolist(), index)))
    saved = loop_state(3, {}, {})
    assert saved["cuda_rng"] is states
    assert restore_loop(saved, {}, {}) == 4 and restored == [([1, 2], 0)]
