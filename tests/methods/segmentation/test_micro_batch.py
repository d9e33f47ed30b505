"""Gradient accumulation of the segmentation step (``segmentation.micro_batch``)."""
from __future__ import annotations

import pytest
import torch

from bench.errors import BenchError
from methods.segmentation.config import SegmentationConfig
from methods.segmentation.model import build_model
from methods.segmentation.train import latent_noise, make_spec, train_step


def _cfg(**kw) -> SegmentationConfig:
    return SegmentationConfig(base_width=4, max_width=8, levels=3, convs=1, samples=2, working_size=24,
                              gamma0=0.5, **kw)


def _batch(b: int = 5, m: int = 3):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(b, 1, 24, 16, generator=gen)
    y = torch.randint(0, 8, (b, m, 24, 16), generator=gen, dtype=torch.uint8)
    beta = torch.rand(b, m, generator=gen) + 0.1
    return x, y, beta / beta.sum(1, keepdim=True)


def _step(cfg: SegmentationConfig, frozen_bn: bool,
          device: str = "cpu") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One step from fixed weights with a zero learning rate: (returned loss terms, gradients)."""
    model = build_model(make_spec(cfg, (24, 16), 8), seed=3).to(device)
    if device == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.train(not frozen_bn)            # eval mode: BatchNorm uses its running statistics
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    x, y, beta = (t.to(device) for t in _batch())
    gen = (torch.Generator(device=device).manual_seed(s) for s in (5, 7))
    out = train_step(model, opt, cfg, x, y, beta, gamma=cfg.gamma0, g_aug=next(gen), g_z=next(gen))
    return out.cpu(), {n: p.grad.float().cpu() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("model", ["mose", "single"])
@pytest.mark.parametrize("micro", [1, 2, 3])
def test_accumulated_gradients_equal_the_whole_batch_when_batchnorm_is_frozen(model, micro):
    whole_out, whole = _step(_cfg(model=model), frozen_bn=True)
    acc_out, acc = _step(_cfg(model=model, micro_batch=micro), frozen_bn=True)   # 5 = 3 + 2, 2 + 2 + 1, ...
    assert torch.allclose(acc_out, whole_out, rtol=1e-5, atol=1e-6)
    assert whole.keys() == acc.keys() and len(whole) > 10
    for name in whole:
        assert torch.allclose(acc[name], whole[name], rtol=1e-4, atol=1e-7), name
    if model == "mose":   # the routing network gets its gradient (through the KL term) in both
        assert any(whole[n].abs().sum() > 0 for n in whole if n.startswith("gate"))


def test_batch_statistics_are_those_of_the_micro_batch_in_training_mode():
    whole_out, whole = _step(_cfg(), frozen_bn=False)
    acc_out, acc = _step(_cfg(micro_batch=2), frozen_bn=False)
    assert not torch.allclose(acc["backbone.down.0.0.0.weight"], whole["backbone.down.0.0.0.weight"], rtol=1e-3)
    same, _ = _step(_cfg(micro_batch=5), frozen_bn=False)    # a micro-batch as large as the batch: one pass
    assert torch.equal(same, whole_out)


def test_latent_noise_is_the_draw_of_the_forward_pass():
    cfg = _cfg()
    model = build_model(make_spec(cfg, (24, 16), 8), seed=0).eval()
    x, _, _ = _batch()
    inside = model(x, generator=torch.Generator().manual_seed(11))
    eps = latent_noise(model, x.shape[0], torch.Generator().manual_seed(11))
    assert eps.shape == (5, cfg.experts, cfg.samples, cfg.latent)
    assert torch.equal(model(x, eps=eps).logits, inside.logits)
    single = build_model(make_spec(_cfg(model="single"), (24, 16), 8), seed=0)
    assert latent_noise(single, 5, torch.Generator()) is None


def test_negative_micro_batch_is_refused():
    with pytest.raises(BenchError, match="micro_batch must be >= 0"):
        _cfg(micro_batch=-1).validate()


def test_out_of_memory_advice_halves_the_pass():
    from methods.segmentation.stage import out_of_memory

    msg = str(out_of_memory(_cfg(batch_size=16), (320, 208)))
    assert "16 images x 8 samples per pass on a 320x208 canvas" in msg and "segmentation.micro_batch=8" in msg
    assert "micro_batch=2" in str(out_of_memory(_cfg(batch_size=16, micro_batch=4), (320, 208)))
    assert "x 1 samples" in str(out_of_memory(_cfg(model="single", micro_batch=32, batch_size=16), (8, 8)))
    assert "working_size" in str(out_of_memory(_cfg(micro_batch=1), (8, 8)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("model", ["mose", "single"])
def test_micro_batches_on_cuda_in_bf16_give_the_whole_batch_gradient(model):
    """bf16 autocast and channels_last: the same direction and size of gradient, up to bf16 rounding."""
    whole_out, whole = _step(_cfg(model=model), frozen_bn=True, device="cuda")
    acc_out, acc = _step(_cfg(model=model, micro_batch=2), frozen_bn=True, device="cuda")
    assert torch.allclose(acc_out, whole_out, rtol=2e-2, atol=1e-3)
    a = torch.cat([acc[n].flatten() for n in whole])
    w = torch.cat([whole[n].flatten() for n in whole])
    assert torch.nn.functional.cosine_similarity(a, w, dim=0) > 0.999
    assert abs(a.norm() / w.norm() - 1) < 0.02
