"""`ssl.compile`: the compiled encoder takes the same SSL step as the eager one, keeps its state-dict
keys, and an unknown mode is refused when the configuration resolves."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.config import resolve
from bench.errors import BenchError
from bench.perf_timing import seeded_build
from methods.encoders import build_encoder
from methods.ssl.pretrain import build_pretrainer, train_step


def _views(seed: int, local_size: int = 16) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    views = [torch.rand(6, 1, 32, 32, generator=g) for _ in range(2)] + [
        torch.rand(6, 1, local_size, local_size, generator=g) for _ in range(2)]
    return views, torch.full((6,), -1)


def test_compiled_encoder_takes_the_eager_step(compile_backend):
    """Two training steps, compiled (tests/conftest.py: `compile_backend`) and eager, give the same
    losses and weights. The local views have the global size here: with static shapes
    (methods.compiling) each view size is a graph of its own, and each graph costs inductor about a
    minute of C++ compilation on the test machine's CPU. The compiled encoder's state dict loads into
    a plain one (no compiled eval graph: the probes run the encoder eager)."""
    config = resolve("smoke")
    cfg = dataclasses.replace(config.ssl, encoder="resnet10t", lr=0.05)
    eager = seeded_build(lambda: build_pretrainer(cfg, config.heads, "cpu"), 3)
    compiled = seeded_build(lambda: build_pretrainer(dataclasses.replace(cfg, compile="default"), config.heads,
                                                     "cpu"), 3)
    assert hasattr(compiled.encoder, "_compiled_call_impl") and compiled.encoder._compiled_call_impl is not None
    assert not getattr(eager.encoder, "_compiled_call_impl", None)
    for seed in (0, 1):                                   # two steps: the second starts from updated weights
        views, labels = _views(seed, local_size=32)
        for p in (eager, compiled):
            p.start_epoch(0)
        le = train_step(eager, views, labels, cfg.lr, n_global=2)
        lc = train_step(compiled, views, labels, cfg.lr, n_global=2)
        torch.testing.assert_close(lc, le, rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(eager.model.named_parameters(), compiled.model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=name)
    fresh = seeded_build(lambda: build_pretrainer(cfg, config.heads, "cpu"), 3)
    moved = max(float((a - b).detach().abs().max())
                for a, b in zip(eager.model.parameters(), fresh.model.parameters()))
    assert moved > 1e-3                                   # the steps did move the weights
    # the saved encoder loads into a plain one: same keys, same features
    state = compiled.encoder.state_dict()
    plain = build_encoder("resnet10t")
    plain.load_state_dict(state)
    x = _views(5)[0][0]
    eager.encoder.eval()
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), eager.encoder(x), rtol=1e-3, atol=1e-4)


def test_unknown_compile_mode_is_refused():
    with pytest.raises(BenchError, match="ssl.compile"):
        resolve("smoke", sets={"ssl.compile": "fastest"})


def test_channels_last_is_a_choice_of_the_fast_path():
    """`fast` (CUDA's bf16 path, forced here) lays the encoder out channels-last unless ssl.channels_last=false;
    both layouts take the same step up to bf16 rounding."""
    config = resolve("smoke")
    losses = {}
    for last in (True, False):
        cfg = dataclasses.replace(config.ssl, encoder="resnet10t", channels_last=last)
        p = seeded_build(lambda: build_pretrainer(cfg, config.heads, "cpu", fast=True), 3)
        w = next(t for t in p.encoder.parameters() if t.dim() == 4 and t.shape[1] > 1 and t.shape[-1] > 1)
        assert p.channels_last is last
        assert w.is_contiguous(memory_format=torch.channels_last) is last
        p.start_epoch(0)
        losses[last] = train_step(p, *_views(0), cfg.lr, n_global=2)
    torch.testing.assert_close(losses[True], losses[False], rtol=2e-2, atol=2e-2)
