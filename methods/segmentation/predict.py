"""Prediction on radiographs of any size, and saving / loading the model (issue 4, deliverable 6).

Convention: the image is fitted onto the model's working canvas (aspect kept, padded; see
:mod:`methods.segmentation.data`), the model runs in the compact form (K x D samples with weights
pi_k / D: D latent draws per expert, ``samples``, default the training S; one draw of the latents from
`seed` shared by all images, so a prediction does not depend on its batch; the backbone runs once and
the fusion head S draws at a time), and the mixture's MEAN class probabilities sum_n w_n p_n are cropped
to the image's area and upsampled bilinearly to the native size, where the argmax gives the label
map. Uncertainty stays at the working resolution (the image's area on the canvas): the entropy of
the mean H[sum_n w_n p_n] and the mutual information H[mean] - sum_n w_n H[p_n] (>= 0 by concavity;
0 for the single-decoder model), in nats. The confidence of a bone is the mean, over the pixels
labelled with it at native resolution, of the largest class probability; 0 when it is absent.

Laterality: a model trained with canonical laterality (``ModelSpec.canonical_laterality``; left
hands mirrored to right hands, methods.segmentation.data) predicts a left hand on its mirror image and
mirrors the outputs back, so every output is in the radiograph's own orientation. An image whose side
is not given (no manifest or DICOM laterality) is predicted both ways and the orientation with the
higher :func:`orientation_score` is kept (``laterality_source`` "detected"); this doubles its cost.
``predict_many(detect=...)`` predicts an image of known side both ways too, to measure the detection:
it returns the given side's prediction, whose ``detected`` names the side the model would have chosen
(one extra view, not two for a second, untold prediction).
A model trained without it takes every image as it is and only reports the side it was given.
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bench.atomic import atomic_write_bytes
from bench.data.format import BONES, CLASS_NAMES
from bench.errors import BenchError
from methods.segmentation.data import Placement, image_to_canvas, side_of
from methods.segmentation.model import ModelSpec, MoSEUNet, build_model


@dataclass
class Prediction:
    """What :func:`predict` returns for one radiograph."""

    labels: np.ndarray            # uint8 H x W at native resolution (class ids of bench.data.format)
    entropy: np.ndarray           # float32 h x w at working resolution: entropy of the mean (nats)
    mutual_info: np.ndarray       # float32 h x w: mutual information across samples (nats)
    confidence: dict[str, float]  # bone -> mean max-probability inside the predicted bone (0 if absent)
    area_px: dict[str, int]       # bone -> predicted pixels at native resolution
    placement: Placement          # where the image sat on the working canvas
    log_pi: np.ndarray            # mixture weights pi(x) as logs (K,)
    laterality: str = ""          # "L" | "R" | "" (not given and not detected)
    laterality_source: str = ""   # "given" | "detected" | ""
    detected: str = ""            # the side chosen when not told: set when detected, or asked for by predict_many(detect=)

    @property
    def present(self) -> dict[str, bool]:
        return {b: self.area_px[b] > 0 for b in BONES}


def _xlogx(p: torch.Tensor) -> torch.Tensor:
    return torch.special.xlogy(p, p)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def mixture_moments(model: torch.nn.Module, x: torch.Tensor, eps: torch.Tensor,
                    chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean sum_n w_n p_n: B x C x H x W, expected entropy sum_n w_n H[p_n]: B x H x W, log pi: B x K)
    of the compact form over the latent draws `eps` (K x D x L, weights pi_k / D), in float32.

    The backbone runs once; the fusion head runs `chunk` draws per expert at a time (default the
    training S), so D can be large without holding B x K x D probability maps. The single-decoder
    model has one sample of weight 1."""
    device = x.device
    if not isinstance(model, MoSEUNet):
        with _autocast(device):
            out = model(x)
        p = out.probs[:, 0]
        return p, -_xlogx(p).sum(1), out.log_pi.float()
    with _autocast(device):
        u_d, log_pi = model.encode(x)
    draws, step = eps.shape[1], chunk or model.spec.samples
    w = log_pi.exp() / draws                                                        # B x K, per draw
    mean = exp_ent = None
    for start in range(0, draws, step):
        part = eps[:, start:start + step]
        with _autocast(device):
            logits = model.head(u_d, model.latent_grid(x.shape[0], part.shape[1], eps=part))
        p = torch.softmax(logits.float(), dim=3)                                    # B x K x n x C x H x W
        m = torch.einsum("bk,bknchw->bchw", w, p)
        e = -torch.einsum("bk,bknhw->bhw", w, _xlogx(p).sum(3))
        mean, exp_ent = (m, e) if mean is None else (mean + m, exp_ent + e)
    return mean, exp_ent, log_pi


def orientation_score(pred: Prediction) -> float:
    """How sure a canonical-laterality model is of a hand seen in one orientation: the mean, over the
    pixels it labels as bone, of the largest class probability (the bones' confidences weighted by
    their areas; 0 when it finds no bone). A MoSE trained on right hands (smoke phantom, 256-row canvas,
    seed 1) labels all seven bones of a mirrored hand too, but wrongly (Dice 0.02-0.14 against the truth)
    and less surely: the right orientation scored higher on all 40 images, by 0.032-0.083 (median 0.056)."""
    area = np.array([pred.area_px[b] for b in BONES], dtype=np.float64)
    conf = np.array([pred.confidence[b] for b in BONES], dtype=np.float64)
    return float((area * conf).sum() / area.sum()) if area.sum() > 0 else 0.0


def _views(side: str, canonical: bool, detect: bool = False) -> tuple[bool, ...]:
    """The mirror flags an image is predicted with (module docstring)."""
    if not canonical:
        return (False,)
    if side and not detect:
        return (side == "L",)
    return (False, True)


def predict_many(model: torch.nn.Module, images: Iterable[np.ndarray], *, batch_size: int = 8,
                 samples: int | None = None, seed: int = 0,
                 laterality: Iterable[str | None] | None = None,
                 detect: bool | Iterable[bool] = False) -> Iterator[Prediction]:
    """Predictions for images (float32 H x W in [0, 1], any sizes), `batch_size` per forward pass;
    `samples` latent draws per expert (None or 0: the training S); `laterality`, one per image, "L",
    "R" or unknown (None, "", anything else), used by canonical-laterality models (module docstring;
    an image segmented both ways counts once in `batch_size` but fills two places of the forward pass);
    `detect` (for all images or one per image): also find the side of an image whose side is given
    (:attr:`Prediction.detected`)."""
    device = next(model.parameters()).device
    canvas = tuple(model.spec.canvas)
    canonical = bool(getattr(model.spec, "canonical_laterality", False))
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    spec = model.spec
    # one latent draw shared by every image: a prediction does not depend on its batch companions
    eps = torch.randn(spec.experts, samples or spec.samples, spec.latent, generator=gen).to(device)
    model.eval()
    batch: list[tuple[list[tuple[torch.Tensor, Placement]], tuple[bool, ...], str]] = []

    def flush() -> Iterator[Prediction]:
        x = torch.stack([t for canvases, _, _ in batch for t, _ in canvases]).to(device)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        mean, exp_ent, log_pi = mixture_moments(model, x, eps)
        ent = -_xlogx(mean).sum(1)
        mi = ent - exp_ent
        row = 0
        for canvases, views, side in batch:
            preds = []
            for (_, pl), mirror in zip(canvases, views):
                preds.append(_finish(mean[row], ent[row], mi[row], pl, log_pi[row], mirror))
                row += 1
            if len(preds) == 1:
                pred = preds[0]
                pred.laterality, pred.laterality_source = side, "given" if side else ""
                yield pred
                continue
            found = "L" if orientation_score(preds[1]) > orientation_score(preds[0]) else "R"   # ties: as it is
            if side:
                pred = preds[1] if side == "L" else preds[0]
                pred.laterality, pred.laterality_source = side, "given"
            else:
                pred = preds[1] if found == "L" else preds[0]
                pred.laterality, pred.laterality_source = found, "detected"
            pred.detected = found
            yield pred
        batch.clear()

    sides = iter(laterality) if laterality is not None else None
    detects = iter(detect) if not isinstance(detect, bool) else None
    for image in images:
        image = np.asarray(image)
        if image.ndim != 2 or not np.issubdtype(image.dtype, np.floating):
            raise BenchError(f"predict expects a float H x W image in [0, 1], got {image.dtype} {image.shape}")
        side = side_of(next(sides, None)) if sides is not None else ""
        views = _views(side, canonical, bool(next(detects, False)) if detects is not None else detect)
        batch.append(([image_to_canvas(image[:, ::-1] if m else image, canvas) for m in views], views, side))
        if len(batch) == batch_size:
            yield from flush()
    if batch:
        yield from flush()


def _finish(mean: torch.Tensor, ent: torch.Tensor, mi: torch.Tensor, pl: Placement,
            log_pi: torch.Tensor, mirrored: bool = False) -> Prediction:
    """Crop to the image's area, upsample the mean to native size, label and score the bones; `mirrored`:
    the canvas held the image's mirror, so the maps are mirrored back."""
    sl = (slice(pl.top, pl.top + pl.size[0]), slice(pl.left, pl.left + pl.size[1]))
    crop = mean[:, sl[0], sl[1]].float()
    native = F.interpolate(crop[None], size=pl.native, mode="bilinear", align_corners=False)[0]
    conf, lab = native.max(dim=0)
    lab = lab.to(torch.uint8)
    areas = torch.bincount(lab.flatten().long(), minlength=len(CLASS_NAMES))
    sums = torch.bincount(lab.flatten().long(), weights=conf.flatten().double(), minlength=len(CLASS_NAMES))
    areas_np, sums_np = areas.cpu().numpy(), sums.cpu().numpy()
    confidence = {b: float(sums_np[c] / areas_np[c]) if areas_np[c] > 0 else 0.0 for b, c in BONES.items()}
    area = {b: int(areas_np[c]) for b, c in BONES.items()}
    maps = [lab, ent[sl[0], sl[1]].float(), mi[sl[0], sl[1]].float()]
    if mirrored:
        maps = [m.flip(-1) for m in maps]
    labels, entropy, mutual_info = (m.cpu().numpy() for m in maps)
    return Prediction(labels=labels, entropy=entropy, mutual_info=mutual_info, confidence=confidence,
                      area_px=area, placement=pl, log_pi=log_pi.float().cpu().numpy())


def predict(model: torch.nn.Module, image: np.ndarray, *, samples: int | None = None, seed: int = 0,
            laterality: str | None = None) -> Prediction:
    """Prediction for one radiograph (float32 H x W in [0, 1], any size); see the module docstring."""
    return next(predict_many(model, [image], batch_size=1, samples=samples, seed=seed, laterality=[laterality]))


def entropy_png(entropy: np.ndarray, classes: int = len(CLASS_NAMES)) -> np.ndarray:
    """Entropy map as uint8: 0 -> 0, log(classes) (the maximum) -> 255."""
    return np.round(np.clip(entropy / np.log(classes), 0.0, 1.0) * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------- persistence
def save_model(model: torch.nn.Module, path: str | Path, extra: dict | None = None) -> None:
    """Write weights + ModelSpec (+ `extra` JSON-able notes) to `path` atomically."""
    spec: ModelSpec = model.spec
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": "osteobench-segmentation-1", "spec": spec.to_dict(), "state_dict": state,
               "extra": extra or {}}
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_model(path: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Rebuild the network saved by :func:`save_model`, in eval mode, on `device`."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"segmentation model {path} does not exist; train one with `bench run` "
                         "(its segment stage writes model.pt)")
    if not zipfile.is_zipfile(path):                  # torch.save writes a zip archive
        raise BenchError(f"cannot read segmentation model {path}: not a PyTorch archive; give the model.pt a "
                         "segment stage wrote")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise BenchError(f"cannot read segmentation model {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != "osteobench-segmentation-1":
        raise BenchError(f"{path} is not an osteobench segmentation model (model.pt of a segment stage)")
    model = build_model(ModelSpec.from_dict(payload["spec"]))
    model.load_state_dict(payload["state_dict"])
    model.spec.extra = payload.get("extra", {})
    return model.to(device).eval()


def load_images(paths: Sequence[str | Path]) -> list[np.ndarray]:
    """Read radiographs for prediction (bench.data.imageio conventions)."""
    from bench.data.imageio import read_image

    return [read_image(Path(p)).pixels for p in paths]
