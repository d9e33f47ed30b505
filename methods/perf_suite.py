"""Cost models of the built-in stages for `bench perf suite` (bench.perf_suite; issue 9).

Each model measures a few steps of the stage's work on the device and counts the steps the
resolved config implies for the profile's datasets (the phantom presets' sizes, splits 80/10/10
by largest remainder; a user dataset's manifest when ``data.seg``/``data.cls`` name one):

* segment: the training loop's own step (methods.segmentation.perf) × epochs × ⌊train / batch⌋,
  plus, per image of every validation pass, the loop's eval forward on the canvas and its GED, plus
  ``predict_many`` per image (upsampled to native size) for the final prediction of both datasets;
* segment_eval: per image of the evaluated splits, ``predict_many`` with the side-detection pass, the
  eval forward and the GED;
* extract / extract_raw / radiogrammetry: per image (PNG decode + label map + the stage's
  per-image function) on one phantom radiograph of each preset at the profile's size;
* patch_sheet (the extract stages' companion, a contact sheet): priced at zero;
* pretrain: :func:`methods.ssl.pretrain.pretrain_step` (methods.ssl.perf, feed (a)) × epochs ×
  steps per epoch of the pretraining set (7 bones or ``patches.raw_count`` raw crops per `seg`
  image, plus the `cls` train patches for SupCon);
* supervised, deepdxa, jang, hsieh, wang: the end-to-end loop's own step
  (:func:`methods.supervised.supervised_step`) on the stage's own input preparation (resize,
  flips drawn on the CPU generator, channels_last) from stored samples × epochs × steps per
  epoch, plus the per-epoch validation and final prediction forwards, plus the per-image CPU
  preparation where it is not small: ROI boxes and crops (jang, hsieh, wang);
* landmarks: the detector's own step (:func:`baselines.landmark_detector.landmark_step`: flips,
  Gaussian targets, heat-map loss) × epochs × steps, plus the forwards, plus resampling and the
  annotators' reference landmarks per image;
* probe: a head step that mirrors the stage's loop body (same model, loss and optimiser) ×
  epochs × steps per epoch, plus the encoder's feature forwards;
* clinical: a two-covariate logistic regression, priced at zero.

The baselines' models (jang, hsieh, wang, landmarks, radiogrammetry, clinical) are in
baselines.perf_costs, built on this module's helpers; :func:`builtin_cost_models` merges both.

Known omissions (small next to training at the paper profile, to be confirmed against one measured
entry): PNG writing, figures, the segmentation's data loading and the evaluation's CPU scoring
(Hungarian IoU, ECE, Dice at native resolution), the probe's whole-image resizing. The per-epoch validation GED is
counted (batched on the device, on the whole canvas). Measurements are cached per configuration, so
seeds and entries sharing a configuration are measured once.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from bench.config import Config
from bench.data.format import BONES
from bench.parallel import image_threads
from bench.perf_suite import CostModel, CostPart, StageCost
from bench.perf_timing import Measurer, seeded_build
from methods.optim import adam

ROLE_PRESETS = {"seg": "public", "cls": "clinical"}


@dataclass(frozen=True)
class RoleSize:
    n: int              # images
    train: int
    val: int
    height: int         # native pixels
    width: int
    spacing: float      # mm per pixel


def role_sizes(config: Config) -> dict[str, RoleSize]:
    """Image counts per split and native size of both datasets (module docstring); in a fold of a
    cross-validation (``data.folds``) the `cls` train and val splits are the fold's (bench.data.folds)."""
    sizes = _role_sizes(config.data.seg, config.data.cls, config.data.phantom_profile or config.profile)
    folds = config.data.folds
    if folds and "cls" in sizes:
        from bench.data.folds import TRAIN_VAL_FRACTIONS

        cls = sizes["cls"]
        rest = cls.n * (folds - 1) / folds
        sizes = {**sizes, "cls": dataclasses.replace(cls, train=round(rest * TRAIN_VAL_FRACTIONS[0]),
                                                      val=round(rest * TRAIN_VAL_FRACTIONS[1]))}
    return sizes


@functools.lru_cache(maxsize=None)
def _role_sizes(seg: str, cls: str, profile: str) -> dict[str, RoleSize]:
    from bench.data.format import Dataset
    from bench.data.phantom import PhantomConfig
    from bench.data.splits import DEFAULT_FRACTIONS, _allocate

    out = {}
    for role, given in (("seg", seg), ("cls", cls)):
        if given and (Path(given) / "manifest.csv").is_file():
            ds = Dataset.open(given)
            m = ds.manifest
            h, w = ds.image(str(m["image_id"].iloc[0])).shape
            out[role] = RoleSize(len(m), int((m["split"] == "train").sum()), int((m["split"] == "val").sum()),
                                 h, w, float(m["pixel_spacing_mm"].median()))
            continue
        p = PhantomConfig.for_preset(ROLE_PRESETS[role], profile)
        train, val, _ = _allocate(p.n_images, DEFAULT_FRACTIONS)
        out[role] = RoleSize(p.n_images, train, val, p.height, p.width, p.pixel_spacing_mm)
    return out


def ceil_div(a: int, b: int) -> int:
    """Steps of `b` over `a` items, at least one (a loop's steps per epoch)."""
    return max(1, -(-a // max(b, 1)))


def profile_name(config: Config) -> str:
    """The profile the phantom datasets are generated at."""
    return config.data.phantom_profile or config.profile


# ---------------------------------------------------------------------------- segmentation and patches
def _seg_canvas(cfg) -> tuple[int, int]:
    """The working canvas the stage would choose for the phantoms (the default aspect)."""
    from methods.segmentation.perf import DEFAULT_ASPECT

    rows = cfg.working_size
    return rows, max(8, int(round(rows * (cfg.canvas_aspect or DEFAULT_ASPECT) / 8)) * 8)


def _seg_predict_s(m: Measurer, cfg, size: RoleSize, detect: bool = False) -> float:
    """Per image of `size`, ``predict_many`` as the stages call it (upsampled to native size; with
    `detect`, each image also segmented mirrored, as the evaluation does to measure laterality detection)."""
    from methods.segmentation.model import build_model
    from methods.segmentation.predict import predict_many
    from methods.segmentation.train import make_spec

    def measure() -> float:
        model = build_model(make_spec(cfg, _seg_canvas(cfg), 8), seed=0).to(m.device)
        rng = np.random.default_rng(0)
        images = [rng.random((size.height, size.width), dtype=np.float32) for _ in range(cfg.predict_batch)]
        sides = ["R"] * len(images)   # the phantoms state every side: no detection pass unless asked
        return m.time(lambda _: list(predict_many(model, images, batch_size=cfg.predict_batch,
                                                  samples=cfg.predict_draws, laterality=sides,
                                                  detect=detect))) / len(images)
    return m.cached(("seg-predict", repr(cfg), size.height, size.width, detect), measure)


def _seg_eval_forward_s(m: Measurer, cfg) -> float:
    """Per image, the loop's eval forward (train.forward_eval: the compact form's K x S samples, or one
    map, on the canvas, `predict_batch` images at once) and the hard maps the GED reads."""
    from methods.segmentation.model import build_model
    from methods.segmentation.train import forward_eval, make_spec

    canvas = _seg_canvas(cfg)

    def measure() -> float:
        model = build_model(make_spec(cfg, canvas, 8), seed=0).to(m.device).eval()
        if m.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        gen = torch.Generator(device=m.device).manual_seed(0)
        x = torch.rand(cfg.predict_batch, 1, *canvas, generator=gen, device=m.device)
        return m.time(lambda _: forward_eval(model, x, 0, gen).logits.float().argmax(2)) / cfg.predict_batch
    return m.cached(("seg-val-forward", repr(cfg), canvas), measure)


def _seg_ged_s(m: Measurer, cfg, config: Config) -> float:
    """Per image, the batched GED (methods.segmentation.device_metrics, on the device, `predict_batch`
    images at once): N samples (K x S in the compact form, 1 for the single decoder) against the `seg`
    phantom's annotators on the whole canvas (the cost depends on N, M and the pixels, not the labels)."""
    from bench.data.phantom import PhantomConfig
    from methods.segmentation.device_metrics import ged_batched

    rows, cols = _seg_canvas(cfg)
    n = cfg.experts * cfg.samples if cfg.model == "mose" else 1
    k = PhantomConfig.for_preset(ROLE_PRESETS["seg"], profile_name(config)).annotators
    b = cfg.predict_batch

    def measure() -> float:
        gen = torch.Generator(device=m.device).manual_seed(0)
        samples = torch.randint(0, 8, (b, n, rows, cols), generator=gen, device=m.device, dtype=torch.uint8)
        annotations = torch.randint(0, 8, (b, k, rows, cols), generator=gen, device=m.device, dtype=torch.uint8)
        p, q = torch.ones(b, n, device=m.device), torch.ones(b, k, device=m.device)
        return m.time(lambda _: ged_batched(samples, annotations, p, q)) / b
    return m.cached(("seg-ged", n, k, rows, cols, b), measure)


def segment_cost(m: Measurer, stage, config: Config) -> StageCost:
    """Training steps, the per-epoch validation (eval forward + GED) and the predictions of both datasets."""
    from methods.compiling import segmentation_compile_mode
    from methods.segmentation.perf import benchmark_seg_step

    cfg, sizes = config.segmentation, role_sizes(config)
    seg, cls = sizes["seg"], sizes["cls"]
    bs = min(cfg.batch_size, seg.train)
    first: dict[str, float] = {}

    def measure_step() -> float:
        r = benchmark_seg_step(cfg, m.device, batch=bs, steps=m.steps, warmup=m.warmup)
        step_s = r["step_ms"] / 1e3
        first["compile"] = max((r["first_step_s"] or step_s) - step_s, 0.0)
        return step_s
    step = m.cached(("seg-step", repr(cfg), bs), measure_step)
    validations = ceil_div(cfg.epochs, cfg.val_every)
    parts = [CostPart("train steps", cfg.epochs * (seg.train // bs), step),
             CostPart("val images (forward)", validations * seg.val, _seg_eval_forward_s(m, cfg)),
             CostPart("val GED", validations * seg.val, _seg_ged_s(m, cfg, config)),
             CostPart("predict seg images", seg.n, _seg_predict_s(m, cfg, seg)),
             CostPart("predict cls images", cls.n, _seg_predict_s(m, cfg, cls))]
    # compiled: the training graphs once a process (validation and predictions are timed eager)
    if segmentation_compile_mode(cfg.compile, cfg.model, m.device) != "off":
        parts.append(CostPart("compile", 1, m.cached(("seg-step", repr(cfg), bs, "compile"),
                                                     lambda: first.get("compile", 0.0))))
    return StageCost(parts, note=f"{cfg.model}, {cfg.epochs} epochs x {seg.train // bs} steps of {bs}")


def segment_eval_cost(m: Measurer, stage, config: Config) -> StageCost:
    """The companion segment_eval: each image of the evaluated `seg` splits predicted with the side-detection
    pass, then its samples' eval forward and GED (the CPU scoring at native size is not counted)."""
    cfg, seg = config.segmentation, role_sizes(config)["seg"]
    per_split = {"train": seg.train, "val": seg.val, "test": seg.n - seg.train - seg.val}
    n = sum(per_split.get(s, 0) for s in cfg.split_list)
    return StageCost([CostPart("predict eval images (+ mirrored)", n, _seg_predict_s(m, cfg, seg, detect=True)),
                      CostPart("eval images (forward)", n, _seg_eval_forward_s(m, cfg)),
                      CostPart("eval GED", n, _seg_ged_s(m, cfg, config))],
                     note=f"{n} images of {cfg.eval_splits}")


def extract_cost(m: Measurer, stage, config: Config) -> StageCost:
    from methods.bones import extract_bones, random_patches

    cfg, sizes, profile = config.patches, role_sizes(config), profile_name(config)
    raw = stage.fn.__name__ == "extract_raw_stage"
    if raw:
        def work(image, labels, spacing):
            return random_patches(image, cfg.raw_count, rng=np.random.default_rng(0), patch_size=cfg.patch_size,
                                  scale=tuple(cfg.raw_scale))
    else:
        def work(image, labels, spacing):
            return extract_bones(image, labels, None, cfg, spacing)
    parts = [CostPart(f"{role} images", sizes[role].n,
                      m.per_image_s(("extract", raw, repr(cfg)), ROLE_PRESETS[role], profile, work,
                                    threads=image_threads())) for role in sizes]      # the stage's threads
    return StageCost(parts, note=("raw crops" if raw else "bone patches") + " per image, phantom radiographs")


# ---------------------------------------------------------------------------- SSL and its probe
def pretrain_cost(m: Measurer, stage, config: Config) -> StageCost:
    from methods.ssl.perf import benchmark_ssl
    from methods.ssl.pretrain import steps_per_epoch

    cfg, sizes = config.ssl, role_sizes(config)
    per_image = config.patches.raw_count if stage.options.get("patches") == "extract_raw" else len(BONES)
    use_cls = cfg.uses_cls_train
    n = per_image * (sizes["seg"].n + (sizes["cls"].train if use_cls else 0))
    batch, spe = steps_per_epoch(cfg, n)
    key = ("pretrain", repr(cfg), repr(config.multicrop), repr(config.augment), repr(config.heads),
           config.patches.patch_size, batch)

    first: dict[str, float] = {}

    def measure() -> float:
        r = benchmark_ssl(config, m.device, batch=batch, steps=m.steps, warmup=m.warmup, n_patches=2 * batch,
                          feeds=("end_to_end",))
        step_s = r["end_to_end"]["step_ms"] / 1e3
        first["compile"] = max(r.get("first_step_s", step_s) - step_s, 0.0)
        return step_s
    step = m.cached(key, measure)
    parts = [CostPart("train steps", cfg.epochs * spe, step)]
    if cfg.compile != "off":      # a fresh process compiles once (inductor's on-disk cache may make it cheaper)
        parts.append(CostPart("compile", 1, m.cached(key + ("compile",), lambda: first.get("compile", 0.0))))
    return StageCost(parts, note=f"{cfg.method} {cfg.crop_policy}, {n} patches, {cfg.epochs} epochs x {spe} steps "
                                 f"of {batch}")


def _encoder(name: str) -> Callable[[], nn.Module]:
    from methods.encoders import build_encoder

    return lambda: build_encoder(name)


class EncoderClassifier(nn.Module):
    """An encoder with a two-class linear head (the supervised loops' network)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(encoder.num_features, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def probe_cost(m: Measurer, stage, config: Config) -> StageCost:
    cfg, cls = config.probe, role_sizes(config)["cls"]
    whole = bool(stage.options.get("whole_image"))
    per_image = 1 if whole else len(BONES)
    size, enc = config.multicrop.global_size, config.ssl.encoder
    fwd = m.forward_s(("encoder", enc), _encoder(enc), (1, size, size), 128)
    width = m.cached(("width", enc), lambda: _encoder(enc)().num_features)
    head = m.train_step_s(("linear", width), lambda: nn.Linear(width, 2), (width,), cfg.batch_size, lr=cfg.lr)
    train = cls.train * per_image
    return StageCost([CostPart("encoder features", cls.n * per_image, fwd),
                      CostPart("head steps", cfg.epochs * ceil_div(train, cfg.batch_size), head)],
                     note=f"{enc} at {size} px on {'whole images' if whole else 'bone patches'}")


# ---------------------------------------------------------------------------- supervised loops
def supervised_loop_cost(m: Measurer, key: Any, build: Callable[[], nn.Module], raw: tuple[int, ...],
                         sample: tuple[int, ...], prepare: Callable, n: int, train: int, val: int, batch: int,
                         config: Config, predict_batch: int, note: str) -> StageCost:
    """The end-to-end loop: :func:`methods.supervised.supervised_step` on the stage's own input preparation
    (from stored uint16 samples of shape `raw`, flips included) × epochs × steps, plus the forwards."""
    sup = config.supervised
    step = m.cached(("supervised-step", key, raw, batch),
                    lambda: _supervised_step_s(m, build, raw, batch, sup, prepare))
    fwd = m.forward_s(key, build, sample, predict_batch)
    return StageCost([CostPart("train steps", sup.epochs * ceil_div(train, batch), step),
                      CostPart("val forward", sup.epochs * val, fwd), CostPart("final forward", n, fwd)],
                     note=note + f", {sup.epochs} epochs x {ceil_div(train, batch)} steps of {batch}")


def _supervised_step_s(m: Measurer, build: Callable[[], nn.Module], raw: tuple[int, ...], batch: int, sup,
                       prepare: Callable) -> float:
    from methods.supervised import supervised_step

    dev = m.device
    model = seeded_build(build).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = adam([p for p in model.parameters() if p.requires_grad], dev, lr=sup.lr, weight_decay=sup.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10 ** 6)
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randint(0, 65536, (batch, *raw), generator=gen, device=dev, dtype=torch.int32)
    y = torch.randint(0, 2, (batch,), generator=gen, device=dev)
    flips = torch.Generator().manual_seed(0)
    loss_fn = nn.CrossEntropyLoss()
    return m.time(lambda _: supervised_step(model, opt, sched, loss_fn, prepare(x, flips), y))


def supervised_cost(m: Measurer, stage, config: Config) -> StageCost:
    """methods.stages.supervised_stage (the `supervised` ablation and DeepDXA): encoder + head on bone patches."""
    from methods.supervised import patch_prepare

    sup, cls = config.supervised, role_sizes(config)["cls"]
    enc = stage.options.get("encoder") or config.ssl.encoder
    k, p = len(BONES), config.patches.patch_size
    return supervised_loop_cost(m, ("classifier", enc), lambda: EncoderClassifier(_encoder(enc)()), (p, p),
                                (1, sup.input_size, sup.input_size), patch_prepare(sup), cls.n * k, cls.train * k,
                                cls.val * k, sup.batch_size, config, 128,
                                f"{enc} at {sup.input_size} px from {p} px patches")


def sheet_cost(m: Measurer, stage, config: Config) -> StageCost:
    return StageCost([], note="one contact-sheet figure: negligible")


#: a cost model of this module and of baselines.perf_costs: priced with a shared Measurer.
MeasuredCost = Callable[[Measurer, Any, Config], StageCost]

METHOD_COSTS: dict[str, MeasuredCost] = {
    "methods.segmentation.stage.segment_stage": segment_cost,
    "methods.segmentation.eval_stage.segment_eval_stage": segment_eval_cost,
    "methods.extract.extract_stage": extract_cost,
    "methods.extract.extract_raw_stage": extract_cost,
    "methods.extract.patch_sheet_stage": sheet_cost,
    "methods.ssl.pretrain.pretrain_stage": pretrain_cost,
    "methods.stages.probe_stage": probe_cost,
    "methods.stages.supervised_stage": supervised_cost,
}


def builtin_cost_models(device: Any, steps: int = 3, warmup: int = 1, measurer: Measurer | None = None
                        ) -> dict[str, CostModel]:
    """Cost models of the built-in stages (the method's and the baselines') sharing one :class:`Measurer`
    (measurements cached across stages)."""
    from baselines.perf_costs import BASELINE_COSTS    # baselines build on this module, not the reverse

    m = measurer or Measurer(device, steps, warmup)
    return {fn: (lambda model: lambda stage, config, dev: model(m, stage, config))(model)
            for fn, model in {**METHOD_COSTS, **BASELINE_COSTS}.items()}
