"""`segmentation.compile`: the compiled backbone and head take the same training steps as eager ones
(MoSE and the single decoder), keep their state-dict keys, and an unknown mode is refused."""
from __future__ import annotations

import pytest
import torch

from bench.config import resolve
from bench.errors import BenchError
from methods.segmentation.config import SegmentationConfig
from methods.segmentation.model import build_model
from methods.segmentation.train import compile_model, make_optimizer, make_spec, train_step


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 1, 32, 48, generator=g)
    y = torch.randint(0, 8, (4, 3, 32, 48), generator=g, dtype=torch.uint8)
    return x, y, torch.full((4, 3), 1.0 / 3)


@pytest.mark.parametrize("kind", ["mose", "single"])
def test_compiled_backbone_and_head_take_the_eager_steps(kind, compile_backend):
    """Same loss and same gradients as eager in training steps (the optimiser's lr is 0 so both
    models stay equal: with a real lr, Adam blows the ~0 gradients of conv biases before a BatchNorm
    up to +-lr and MoSE's discrete coupling then amplifies the noise), same BatchNorm statistics,
    and the state dict keeps its keys (the backend: tests/conftest.py, `compile_backend`). The compiled
    eval graphs are the next test's (validation): each graph costs inductor tens of seconds of C++
    compilation on the test machine's CPU."""
    cfg = SegmentationConfig(model=kind, base_width=4, max_width=8, levels=3, convs=1, samples=2, working_size=32,
                             batch_size=4, lr=0.0)
    models = {mode: build_model(make_spec(cfg, (32, 48), 8), seed=3) for mode in ("off", "default")}
    compile_model(models["default"], "default")
    assert models["default"].backbone._compiled_call_impl is not None
    assert models["default"].head._compiled_call_impl is not None
    assert getattr(models["off"].backbone, "_compiled_call_impl", None) is None
    opts = {mode: make_optimizer(m, cfg) for mode, m in models.items()}
    gens = {mode: (torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)) for mode in models}
    for step in range(2):
        losses = {mode: train_step(models[mode], opts[mode], cfg, *_batch(step), gamma=0.5, g_aug=gens[mode][0],
                                   g_z=gens[mode][1]) for mode in models}
        torch.testing.assert_close(losses["default"], losses["off"], rtol=1e-5, atol=1e-6)
        grads = {mode: {n: p.grad for n, p in m.named_parameters()} for mode, m in models.items()}
        assert any(float(g.abs().max()) > 1e-3 for g in grads["off"].values())
        for name, g in grads["off"].items():
            torch.testing.assert_close(grads["default"][name], g, rtol=1e-3, atol=1e-6, msg=name)
    eager, compiled = models["off"].state_dict(), models["default"].state_dict()
    assert list(compiled) == list(eager)                   # same keys: checkpoints load either way
    for name, value in eager.items():                      # BatchNorm running statistics included
        torch.testing.assert_close(compiled[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_unknown_segmentation_compile_mode_is_refused():
    import methods.segmentation.config  # noqa: F401  (registers the section)

    with pytest.raises(BenchError, match="segmentation.compile"):
        resolve("smoke", sets={"segmentation.compile": "fastest"})
    assert resolve("smoke", sets={"segmentation.compile": "reduce-overhead"}).segmentation.compile == "reduce-overhead"


def test_auto_compiles_the_mose_unet_on_cuda_only(monkeypatch):
    """segmentation.compile defaults to auto: inductor's default mode for MoSE on CUDA with Triton
    (measured faster), eager for the single decoder (measured slower), on the CPU and on a CUDA host
    without Triton; an explicit mode is kept."""
    import methods.compiling as compiling
    from methods.compiling import segmentation_compile_mode

    monkeypatch.setattr(compiling, "triton_available", lambda: True)

    assert SegmentationConfig().compile == "auto"
    assert resolve("paper").segmentation.compile == "auto" and resolve("quick").segmentation.compile == "off"
    table = {(kind, dev): segmentation_compile_mode("auto", kind, dev)
             for kind in ("mose", "single") for dev in ("cuda", "cuda:1", "cpu")}
    assert table == {("mose", "cuda"): "default", ("mose", "cuda:1"): "default", ("mose", "cpu"): "off",
                     ("single", "cuda"): "off", ("single", "cuda:1"): "off", ("single", "cpu"): "off"}
    assert segmentation_compile_mode("off", "mose", "cuda") == "off"
    monkeypatch.setattr(compiling, "triton_available", lambda: False)
    assert segmentation_compile_mode("auto", "mose", "cuda") == "off"
    assert segmentation_compile_mode("default", "mose", "cuda") == "default"       # asked for: kept
    assert segmentation_compile_mode("reduce-overhead", "single", "cpu") == "reduce-overhead"
    model = build_model(make_spec(SegmentationConfig(base_width=4, max_width=8, levels=3, convs=1), (32, 48), 8))
    assert compile_model(model, "auto") == "off"                          # weights on the CPU: eager
    assert getattr(model.backbone, "_compiled_call_impl", None) is None


def test_compiled_training_loop_trains_validates_and_matches_eager(compile_backend):
    """One epoch of the training loop with segmentation.compile=default (train and eval graphs, a
    smaller last validation batch): the same history as eager. The trained model comes back eager,
    so predicting batches of new sizes compiles nothing (each size used to compile both modules)."""
    from torch._dynamo.utils import counters

    from methods.segmentation.data import Placement, SegData
    from methods.segmentation.train import forward_eval, train_segmentation

    def data(n: int, seed: int) -> SegData:
        x, y, beta = (torch.cat(t) for t in zip(*(_batch(seed + i) for i in range((n + 3) // 4))))
        return SegData([f"i{k}" for k in range(n)], x[:n], y[:n], beta[:n], ["a1", "a2", "a3"],
                       [Placement((32, 48), 0, 0, (32, 48))] * n, (32, 48))

    histories = {}
    for mode in ("off", "default"):
        cfg = SegmentationConfig(base_width=4, max_width=8, levels=3, convs=1, samples=2, working_size=32,
                                 batch_size=4, epochs=1, lr=0.0, predict_batch=3, compile=mode)
        graphs = counters["stats"]["unique_graphs"]
        result = train_segmentation(cfg, data(8, 0), data(5, 20), seed=0)
        histories[mode] = result.history
        assert result.compile == mode
        compiled = counters["stats"]["unique_graphs"] - graphs
        assert (compiled >= 4) == (mode == "default")     # backbone and head, train and eval graphs
        for part in (result.model.backbone, result.model.head):
            assert getattr(part, "_compiled_call_impl", None) is None
        graphs = counters["stats"]["unique_graphs"]
        for n in (1, 2, 7):                               # batch sizes the training never saw
            forward_eval(result.model, data(n, 40).images, 0, torch.Generator().manual_seed(0))
        assert counters["stats"]["unique_graphs"] == graphs
    (eager,), (compiled,) = histories["off"], histories["default"]
    assert set(compiled) == set(eager) and "val_ged" in eager
    for key, value in eager.items():
        assert compiled[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
