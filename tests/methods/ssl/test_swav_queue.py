"""The SwAV queue in the pretraining step (ssl.md §1.3, ``ssl.swav_queue``): filled with every step's
global-crop projections from the first step, its scores (those of the previous steps' projections,
newest first) join Sinkhorn once it is full and the epoch has reached ``ssl.swav_queue_start``."""
from __future__ import annotations

import copy
import dataclasses

import torch

from bench.config import resolve
from bench.perf_timing import seeded_build
from methods.ssl.losses import swav
from methods.ssl.pretrain import Pretrainer, _encode, build_pretrainer, train_step

BATCH = 6


def _pretrainer(queue: int, start: int) -> Pretrainer:
    config = resolve("smoke")
    cfg = dataclasses.replace(config.ssl, method="swav", encoder="resnet10t", batch_size=BATCH, lr=0.05,
                              swav_freeze_epochs=0, swav_queue=queue, swav_queue_start=start)
    cfg.validate()
    return seeded_build(lambda: build_pretrainer(cfg, config.heads, "cpu"), 3)


def _views(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(BATCH, 1, 32, 32, generator=g) for _ in range(2)] + [torch.rand(BATCH, 1, 16, 16, generator=g)
                                                                           for _ in range(2)]


def _reference(p: Pretrainer, views: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """On a copy of the model before the step: (global projections, every view's scores, prototypes)."""
    model = copy.deepcopy(p.model)
    model.train()
    head = model["head"]
    head.prototypes.normalize()
    with torch.no_grad():
        out = [head(h) for h in _encode(model["encoder"], views, 2, False)]
    return [z for z, _ in out[:2]], [s for _, s in out], head.prototypes.weight.detach().clone()


def _steps(p: Pretrainer, epochs: list[int]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Run one step per entry of `epochs`; per step: (the step's loss, swav() without a queue, swav() with the
    scores of the previous steps' global projections against the current prototypes, None until 12 are held)."""
    cfg, history, results = p.cfg, [], []
    for k, epoch in enumerate(epochs):
        p.start_epoch(epoch)
        views = _views(k)
        z, scores, w = _reference(p, views)
        kw = dict(n_global=2, temperature=cfg.temperature, epsilon=cfg.swav_epsilon, iterations=cfg.swav_iterations)
        plain = swav(scores, **kw)
        queued = None
        if len(history) * BATCH >= cfg.swav_queue:
            held = history[::-1][:cfg.swav_queue // BATCH]           # newest first
            queued = swav(scores, queue_scores=[torch.cat([h[c] for h in held]) @ w.T for c in range(2)], **kw)
        history.append(z)
        results.append((train_step(p, views, torch.full((BATCH,), -1), cfg.lr, n_global=2), plain, queued))
    return results


def test_step_loss_uses_the_previous_steps_projections_once_the_queue_is_full():
    results = _steps(_pretrainer(queue=2 * BATCH, start=0), epochs=[0, 0, 0, 0])
    for k, (loss, plain, queued) in enumerate(results):
        if k < 2:                                         # fewer than 12 projections held: not used yet
            assert queued is None
            torch.testing.assert_close(loss, plain, rtol=1e-5, atol=1e-6)
        else:
            torch.testing.assert_close(loss, queued, rtol=1e-5, atol=1e-6)
            assert abs(float(queued) - float(plain)) > 1e-4     # the queue does change the codes


def test_queue_is_filled_but_not_used_before_its_start_epoch():
    p = _pretrainer(queue=2 * BATCH, start=2)
    results = _steps(p, epochs=[0, 0, 1, 1, 2])
    for loss, plain, _ in results[:4]:                    # full from the third step on, but epoch < 2
        torch.testing.assert_close(loss, plain, rtol=1e-5, atol=1e-6)
    loss, plain, queued = results[4]                      # epoch 2: the projections of steps 4 and 3
    torch.testing.assert_close(loss, queued, rtol=1e-5, atol=1e-6)
    assert abs(float(queued) - float(plain)) > 1e-4
    assert p.queue.count == 2 * BATCH and set(p.queue.state_dict()) == {"queue", "_extra_state"}


def test_no_queue_unless_configured_or_for_other_methods():
    assert _pretrainer(queue=0, start=0).queue is None
    config = resolve("smoke")
    cfg = dataclasses.replace(config.ssl, method="simclr", encoder="resnet10t", swav_queue=64)
    assert build_pretrainer(cfg, config.heads, "cpu").queue is None
