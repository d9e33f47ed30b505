"""Prediction at native size, uncertainty maps, per-bone confidence, model persistence."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.data.format import BONES
from bench.errors import BenchError
from methods.segmentation.data import image_to_canvas
from methods.segmentation.model import ModelSpec, build_model
from methods.segmentation.predict import entropy_png, load_model, mixture_moments, predict, predict_many, save_model


def make_model(kind: str = "mose", seed: int = 0, head: str = "shared") -> torch.nn.Module:
    spec = ModelSpec(kind=kind, widths=(6, 8, 10), experts=3, samples=2, latent=2, canvas=(40, 24),
                     head=head, bn_momentum=0.1)
    model = build_model(spec, seed=seed)
    with torch.no_grad():   # spread the experts so that the samples disagree somewhere
        if kind == "mose":
            model.mu.mul_(3.0)
            model.log_sigma.fill_(0.0)
    return model.eval()


def phantom_like(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 0.2 + 0.6 * (((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 5)) ** 2 < 1)
    return np.clip(img + rng.normal(0, 0.05, (h, w)), 0, 1).astype(np.float32)


@pytest.mark.parametrize("shape", [(150, 97), (61, 130), (40, 24)])
@pytest.mark.parametrize("kind", ["mose", "single"])
def test_native_size_and_uncertainty_bounds(shape, kind):
    model = make_model(kind)
    image = phantom_like(*shape, seed=1)
    pred = predict(model, image, seed=3)
    assert pred.labels.shape == shape and pred.labels.dtype == np.uint8
    assert pred.entropy.shape == pred.placement.size == pred.mutual_info.shape
    assert (pred.entropy >= 0).all() and pred.entropy.max() <= np.log(8) + 1e-5
    assert (pred.mutual_info >= -1e-5).all()
    assert (pred.mutual_info <= pred.entropy + 1e-5).all()
    if kind == "single":
        assert np.abs(pred.mutual_info).max() < 1e-5          # one deterministic sample: no epistemic part
    else:
        assert pred.mutual_info.max() > 1e-3
    counts = np.bincount(pred.labels.ravel(), minlength=8)
    for bone, c in BONES.items():
        assert pred.area_px[bone] == counts[c]
        assert pred.present[bone] == (counts[c] > 0)
        if counts[c] == 0:
            assert pred.confidence[bone] == 0.0
        else:
            assert 1 / 8 - 1e-6 <= pred.confidence[bone] <= 1.0


def test_labels_are_the_argmax_of_the_upsampled_weighted_mean():
    """Recompute the label map, entropy and confidence independently from the model's samples."""
    model = make_model("mose", head="per_expert")
    image = phantom_like(90, 70, seed=2)
    pred = predict(model, image, seed=7)
    x, pl = image_to_canvas(image, model.spec.canvas)
    gen = torch.Generator().manual_seed(7)
    eps = torch.randn(3, 2, 2, generator=gen)
    with torch.no_grad():
        out = model(x[None], eps=eps)
    p = torch.softmax(out.logits, dim=2)[0].double()                         # N x C x H x W
    w = out.log_pi.exp()[0].repeat_interleave(2).double() / 2                # expert-major pi_k / S
    mean = (w[:, None, None, None] * p).sum(0)
    crop = mean[:, pl.top:pl.top + pl.size[0], pl.left:pl.left + pl.size[1]]
    ent = -(crop * torch.log(crop)).sum(0)
    exp_ent = -(w[:, None, None] * (p * torch.log(p)).sum(1)).sum(0)[pl.top:pl.top + pl.size[0], pl.left:pl.left + pl.size[1]]
    native = F.interpolate(crop[None].float(), size=(90, 70), mode="bilinear", align_corners=False)[0]
    conf, lab = native.max(0)
    agree = (lab.numpy() == pred.labels).mean()
    assert agree > 0.999                    # float32 vs float64 ties at most on a handful of pixels
    assert np.allclose(pred.entropy, ent.numpy(), atol=1e-4)
    assert np.allclose(pred.mutual_info, (ent - exp_ent).numpy(), atol=1e-4)
    for bone, c in BONES.items():
        sel = lab.numpy() == c
        if sel.sum():
            assert pred.confidence[bone] == pytest.approx(conf.numpy()[sel].mean(), abs=1e-3)


def test_batched_prediction_equals_single_image_prediction():
    model = make_model("mose")
    images = [phantom_like(50 + 10 * i, 40 + 7 * i, seed=i) for i in range(5)]
    batched = list(predict_many(model, images, batch_size=2, seed=4))
    for image, b in zip(images, batched):
        one = predict(model, image, seed=4)
        assert np.array_equal(one.labels, b.labels)
        assert np.allclose(one.entropy, b.entropy, atol=1e-6)


def test_save_load_roundtrip(tmp_path):
    model = make_model("mose", seed=5, head="per_expert")
    save_model(model, tmp_path / "m" / "model.pt", extra={"note": 1})
    loaded = load_model(tmp_path / "m" / "model.pt")
    assert loaded.spec.to_dict() | {"extra": {}} == model.spec.to_dict() | {"extra": {}}
    assert loaded.spec.extra == {"note": 1}
    image = phantom_like(77, 51, seed=9)
    a, b = predict(model, image), predict(loaded, image)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.entropy, b.entropy)
    single = make_model("single", seed=1)
    save_model(single, tmp_path / "s.pt")
    assert np.array_equal(predict(load_model(tmp_path / "s.pt"), image).labels, predict(single, image).labels)


def test_bad_inputs_raise_bench_error(tmp_path):
    with pytest.raises(BenchError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(BenchError, match="cannot read"):
        load_model(tmp_path / "junk.pt")
    with pytest.raises(BenchError, match="H x W"):
        predict(make_model(), np.zeros((10, 10, 3), np.float32))


def test_entropy_png_scale():
    e = np.array([[0.0, np.log(8) / 2, np.log(8), 5.0]])
    assert entropy_png(e).tolist() == [[0, 128, 255, 255]]


@pytest.mark.parametrize("head", ["shared", "per_expert"])
def test_mixture_moments_over_many_draws_in_chunks(head):
    """D draws per expert, the head run a few draws at a time, give the compact form's mean and
    expected entropy of one forward over all K x D samples (weights pi_k / D)."""
    model = make_model("mose", head=head)
    x = torch.stack([image_to_canvas(phantom_like(60 + 9 * i, 40, seed=i), model.spec.canvas)[0] for i in range(2)])
    eps = torch.randn(3, 7, 2, generator=torch.Generator().manual_seed(11))            # D = 7, not a multiple of S
    with torch.no_grad():
        out = model(x, eps=eps)
    p, w = out.probs.double(), out.weights.double()                                    # B x 21 x C x H x W
    mean = torch.einsum("bn,bnchw->bchw", w, p)
    exp_ent = -torch.einsum("bn,bnhw->bhw", w, (p * torch.log(p)).sum(2))
    for chunk in (1, 2, 7, None):
        m, e, log_pi = mixture_moments(model, x, eps, chunk=chunk)
        assert torch.allclose(m.double(), mean, atol=1e-6) and torch.allclose(e.double(), exp_ent, atol=1e-5)
        assert torch.allclose(log_pi, out.log_pi)


def test_prediction_draws_set_the_mean():
    """`samples` draws per expert: the first S of the same generator stream are the default's draws only
    when D = S, and the label map then equals the default prediction."""
    model = make_model("mose")
    image = phantom_like(70, 50, seed=3)
    assert np.array_equal(predict(model, image, samples=2, seed=5).labels, predict(model, image, seed=5).labels)
    many = predict(model, image, samples=64, seed=5)
    x, pl = image_to_canvas(image, model.spec.canvas)
    eps = torch.randn(3, 64, 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        mean = model(x[None], eps=eps).mean_probs()[0]
    crop = mean[:, pl.top:pl.top + pl.size[0], pl.left:pl.left + pl.size[1]]
    native = F.interpolate(crop[None], size=image.shape, mode="bilinear", align_corners=False)[0]
    assert (native.argmax(0).numpy() == many.labels).mean() > 0.999
