"""Cost models of the built-in stages for `bench perf suite` (bench.perf_suite; issue 9).

Each model measures a few steps of the stage's work on the device and counts the steps the
resolved config implies for the profile's datasets (the phantom presets' sizes, splits 80/10/10
by largest remainder; a user dataset's manifest when ``data.seg``/``data.cls`` name one):

* segment: the training loop's own step (methods.segmentation.perf) × epochs × ⌊train / batch⌋,
  plus, per image of every validation pass, the loop's eval forward on the canvas and its GED, plus
  ``predict_many`` per image (upsampled to native size) for the final prediction of both datasets;
* extract / extract_raw / radiogrammetry: per image (PNG decode + label map + the stage's
  per-image function) on one phantom radiograph of each preset at the profile's size;
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

Known omissions (small next to training at the paper profile, to be confirmed against one measured
entry): PNG writing, figures, the segmentation's data loading and final evaluation (Hungarian IoU,
ECE, Dice at native resolution), the probe's whole-image resizing. The per-epoch validation GED is
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
from bench.perf_suite import CostModel, CostPart, Measurer, StageCost, seeded_build
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


def _ceil(a: int, b: int) -> int:
    return max(1, -(-a // max(b, 1)))


def _profile(config: Config) -> str:
    return config.data.phantom_profile or config.profile


# ---------------------------------------------------------------------------- segmentation and patches
def segment_cost(m: Measurer, stage, config: Config) -> StageCost:
    from methods.compiling import segmentation_compile_mode
    from methods.segmentation.model import build_model
    from methods.segmentation.perf import DEFAULT_ASPECT, benchmark_seg_step
    from methods.segmentation.predict import predict_many
    from methods.segmentation.train import make_spec

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

    rows = cfg.working_size
    canvas = (rows, max(8, int(round(rows * (cfg.canvas_aspect or DEFAULT_ASPECT) / 8)) * 8))

    def predict_s(size: RoleSize) -> float:
        def measure() -> float:
            model = build_model(make_spec(cfg, canvas, 8), seed=0).to(m.device)
            rng = np.random.default_rng(0)
            images = [rng.random((size.height, size.width), dtype=np.float32) for _ in range(cfg.predict_batch)]
            sides = ["R"] * len(images)   # the phantoms state every side: no detection pass (predict_many)
            return m.time(lambda _: list(predict_many(model, images, batch_size=cfg.predict_batch,
                                                      samples=cfg.predict_draws, laterality=sides))) / len(images)
        return m.cached(("seg-predict", repr(cfg), size.height, size.width), measure)

    def val_forward_s() -> float:
        """Per validation image, the loop's eval forward (train.forward_eval: the compact form's K x S
        samples, or one map, on the canvas, `predict_batch` images at once) and the hard maps the GED
        reads; the validation neither upsamples to native size nor computes the uncertainty maps."""
        from methods.segmentation.train import forward_eval

        def measure() -> float:
            model = build_model(make_spec(cfg, canvas, 8), seed=0).to(m.device).eval()
            if m.device.type == "cuda":
                model = model.to(memory_format=torch.channels_last)
            gen = torch.Generator(device=m.device).manual_seed(0)
            x = torch.rand(cfg.predict_batch, 1, *canvas, generator=gen, device=m.device)
            return m.time(lambda _: forward_eval(model, x, 0, gen).logits.float().argmax(2)) / cfg.predict_batch
        return m.cached(("seg-val-forward", repr(cfg), canvas), measure)

    def ged_s() -> float:
        """Per validation image, the batched GED of the loop (methods.segmentation.device_metrics, on
        the device, `predict_batch` images at once): N samples (K x S in the compact form the loop
        validates with, 1 for the single decoder) against the `seg` phantom's annotators on the whole
        canvas (the cost depends on N, M and the pixels, not on the labels)."""
        from bench.data.phantom import PhantomConfig
        from methods.segmentation.device_metrics import ged_batched

        cols = canvas[1]
        n = cfg.experts * cfg.samples if cfg.model == "mose" else 1
        k = PhantomConfig.for_preset(ROLE_PRESETS["seg"], _profile(config)).annotators
        b = cfg.predict_batch

        def measure() -> float:
            gen = torch.Generator(device=m.device).manual_seed(0)
            samples = torch.randint(0, 8, (b, n, rows, cols), generator=gen, device=m.device, dtype=torch.uint8)
            annotations = torch.randint(0, 8, (b, k, rows, cols), generator=gen, device=m.device, dtype=torch.uint8)
            p, q = torch.ones(b, n, device=m.device), torch.ones(b, k, device=m.device)
            return m.time(lambda _: ged_batched(samples, annotations, p, q)) / b
        return m.cached(("seg-ged", n, k, rows, cols, b), measure)

    validations = _ceil(cfg.epochs, cfg.val_every)
    parts = [CostPart("train steps", cfg.epochs * (seg.train // bs), step),
             CostPart("val images (forward)", validations * seg.val, val_forward_s()),
             CostPart("val GED", validations * seg.val, ged_s()),
             CostPart("predict seg images", seg.n, predict_s(seg)),
             CostPart("predict cls images", cls.n, predict_s(cls))]
    # compiled: the training graphs once a process (validation and predictions are timed eager)
    if segmentation_compile_mode(cfg.compile, cfg.model, m.device) != "off":
        parts.append(CostPart("compile", 1, m.cached(("seg-step", repr(cfg), bs, "compile"),
                                                     lambda: first.get("compile", 0.0))))
    return StageCost(parts, note=f"{cfg.model}, {cfg.epochs} epochs x {seg.train // bs} steps of {bs}")


def extract_cost(m: Measurer, stage, config: Config) -> StageCost:
    from methods.bones import extract_bones, random_patches

    cfg, sizes, profile = config.patches, role_sizes(config), _profile(config)
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


def radiogrammetry_cost(m: Measurer, stage, config: Config) -> StageCost:
    from baselines.cortical import measure_bone

    cfg, cls = config.section("radiogrammetry"), role_sizes(config)["cls"]

    def work(image, labels, spacing):
        return [measure_bone(image, labels, b, spacing, metacarpal_fraction=cfg.metacarpal_fraction,
                             radius_offset_mm=cfg.radius_offset_mm, profiles=cfg.profiles, window_mm=cfg.window_mm,
                             step_px=cfg.step_px, outer_edge=cfg.outer_edge, margin_mm=cfg.margin_mm,
                             smooth_mm=cfg.smooth_mm)
                for b in cfg.bones]
    s = m.per_image_s(("radiogrammetry", repr(cfg)), "clinical", _profile(config), work, threads=image_threads())
    return StageCost([CostPart("cls images", cls.n, s)], note="2MCI per image; the logistic fit is negligible")


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


class _Classifier(nn.Module):
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
                      CostPart("head steps", cfg.epochs * _ceil(train, cfg.batch_size), head)],
                     note=f"{enc} at {size} px on {'whole images' if whole else 'bone patches'}")


# ---------------------------------------------------------------------------- supervised loops
def _supervised(m: Measurer, key: Any, build: Callable[[], nn.Module], raw: tuple[int, ...], sample: tuple[int, ...],
                prepare: Callable, n: int, train: int, val: int, batch: int, config: Config, predict_batch: int,
                note: str) -> StageCost:
    """The end-to-end loop: :func:`methods.supervised.supervised_step` on the stage's own input preparation
    (from stored uint16 samples of shape `raw`, flips included) × epochs × steps, plus the forwards."""
    sup = config.supervised
    step = m.cached(("supervised-step", key, raw, batch), lambda: _supervised_step_s(m, build, raw, batch, sup, prepare))
    fwd = m.forward_s(key, build, sample, predict_batch)
    return StageCost([CostPart("train steps", sup.epochs * _ceil(train, batch), step),
                      CostPart("val forward", sup.epochs * val, fwd), CostPart("final forward", n, fwd)],
                     note=note + f", {sup.epochs} epochs x {_ceil(train, batch)} steps of {batch}")


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
    return _supervised(m, ("classifier", enc), lambda: _Classifier(_encoder(enc)()), (p, p),
                       (1, sup.input_size, sup.input_size), patch_prepare(sup), cls.n * k, cls.train * k, cls.val * k,
                       sup.batch_size, config, 128, f"{enc} at {sup.input_size} px from {p} px patches")


def _vgg(config: Config) -> Callable[[], nn.Module]:
    from baselines.vgg import build_vgg

    return lambda: _Classifier(build_vgg(config.vgg))


def _with_rois(m: Measurer, config: Config, cost: StageCost, key: Any, crop: Callable) -> StageCost:
    """Add the per-`cls`-image ROI preparation (read + crop(image, labels, spacing)) to a training cost."""
    s = m.per_image_s(key, "clinical", _profile(config), crop, threads=image_threads())   # the stages' threads
    cost.parts.insert(0, CostPart("ROI crops (cls images)", role_sizes(config)["cls"].n, s))
    return cost


def _landmark_crops(config: Config) -> Callable:
    """Hsieh / Wang: a ``roi.size_mm`` square around each landmark (the image centre stands in)."""
    from baselines.roi import centred_box, crop_box

    def crop(image, labels, spacing):
        side = config.roi.size_mm / spacing
        return [crop_box(image, centred_box(np.array(image.shape) / 2, side), config.supervised.input_size)
                for _ in config.landmarks.bones]
    return crop


def jang_cost(m: Measurer, stage, config: Config) -> StageCost:
    from baselines.roi import crop_box, jitter_box, wrist_box

    from methods.supervised import patch_prepare

    sup, cls, roi = config.supervised, role_sizes(config)["cls"], config.roi
    size = sup.input_size
    cost = _supervised(m, ("vgg", repr(config.vgg)), _vgg(config), (size, size), (1, size, size), patch_prepare(sup),
                       cls.n, cls.train, cls.val, sup.batch_size, config, 128, f"{config.vgg.name}, one ROI per image")

    def crop(image, labels, spacing):   # the box over the annotators' maps (3 in the phantom), jittered, cropped
        box = wrist_box([labels] * 3, spacing, roi.forearm_mm) or (0.0, 0.0, *map(float, image.shape))
        return crop_box(image, jitter_box(box, np.random.default_rng(0), roi.margin, roi.jitter), sup.input_size)
    return _with_rois(m, config, cost, ("jang-roi", repr(roi), sup.input_size), crop)


def hsieh_cost(m: Measurer, stage, config: Config) -> StageCost:
    from methods.supervised import patch_prepare

    sup, cls, k = config.supervised, role_sizes(config)["cls"], len(config.landmarks.bones)
    size = sup.input_size
    cost = _supervised(m, ("vgg", repr(config.vgg)), _vgg(config), (size, size), (1, size, size), patch_prepare(sup),
                       cls.n * k, cls.train * k, cls.val * k, sup.batch_size, config, 128,
                       f"{config.vgg.name}, {k} landmark ROIs per image")
    return _with_rois(m, config, cost, ("landmark-roi", repr(config.roi), sup.input_size, k), _landmark_crops(config))


def wang_cost(m: Measurer, stage, config: Config) -> StageCost:
    from baselines.vgg import build_vgg
    from baselines.wang import MultiRoiTransformer, roi_prepare

    sup, cfg, cls, k = config.supervised, config.wang, role_sizes(config)["cls"], len(config.landmarks.bones)
    size = sup.input_size
    build = lambda: MultiRoiTransformer(build_vgg(config.vgg), k, cfg)  # noqa: E731
    cost = _supervised(m, ("wang", repr(config.vgg), repr(cfg), k), build, (k, size, size), (k, 1, size, size),
                       roi_prepare(sup), cls.n, cls.train, cls.val, cfg.batch_size, config, 16,
                       f"{config.vgg.name} x {k} ROIs + transformer")
    return _with_rois(m, config, cost, ("landmark-roi", repr(config.roi), sup.input_size, k), _landmark_crops(config))


def landmarks_cost(m: Measurer, stage, config: Config) -> StageCost:
    from baselines.landmark_detector import LandmarkNet, landmark_step, resample
    from baselines.landmarks import reference_landmarks

    cfg, sizes = config.landmarks, role_sizes(config)
    k, build = len(cfg.bones), (lambda: LandmarkNet(len(cfg.bones), cfg.widths, cfg.convs))

    def shape(s: RoleSize) -> tuple[int, int, int]:
        f = s.spacing / cfg.mm_per_px
        return 1, max(8, round(s.height * f)), max(8, round(s.width * f))
    seg, cls = sizes["seg"], sizes["cls"]
    h, w = shape(seg)[1:]
    batch = min(cfg.batch_size, seg.train)

    def measure_step() -> float:   # the detector's own step on random images and landmarks inside them
        dev = m.device
        model = seeded_build(build).to(dev)
        if dev.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        model.train()
        opt = adam(model.parameters(), dev, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10 ** 6)
        gen = torch.Generator(device=dev).manual_seed(0)
        x = torch.rand(batch, 1, h, w, generator=gen, device=dev)
        pts = torch.rand(batch, k, 2, generator=gen, device=dev) * torch.tensor([h - 1.0, w - 1.0], device=dev)
        flips = torch.Generator().manual_seed(0)
        return m.time(lambda _: landmark_step(model, opt, sched, x, pts, cfg, flips))
    step = m.cached(("landmark-step", repr(cfg), h, w, batch), measure_step)
    fwd_seg = m.forward_s(("landmarks", repr(cfg)), build, shape(seg), cfg.batch_size)
    fwd_cls = m.forward_s(("landmarks", repr(cfg)), build, shape(cls), cfg.batch_size)

    def load(image, labels, spacing):   # resample + the annotators' reference landmarks (3 maps in the phantom)
        resample(image, spacing, cfg.mm_per_px)
        maps = {f"a{i}": labels for i in range(3)}
        return reference_landmarks(maps, {name: 1 / 3 for name in maps}, spacing, cfg)
    threads = image_threads()        # the stage loads its images in threads (bench.parallel)
    loads = [CostPart(f"load {role} images", sizes[role].n,
                      m.per_image_s(("landmark-load", repr(cfg)), ROLE_PRESETS[role], _profile(config), load,
                                    threads=threads))
             for role in ("seg", "cls")]
    return StageCost([*loads, CostPart("train steps", cfg.epochs * _ceil(seg.train, cfg.batch_size), step),
                      CostPart("val forward", cfg.epochs * seg.val, fwd_seg),
                      CostPart("detect seg images", seg.n, fwd_seg), CostPart("detect cls images", cls.n, fwd_cls)],
                     note=f"heat-map U-Net at {cfg.mm_per_px} mm/px ({h}x{w} px on seg)")


def clinical_cost(m: Measurer, stage, config: Config) -> StageCost:
    return StageCost([], note="logistic regression on age and sex: negligible")


_MODELS: dict[str, Callable[[Measurer, Any, Config], StageCost]] = {
    "methods.segmentation.stage.segment_stage": segment_cost,
    "methods.extract.extract_stage": extract_cost,
    "methods.extract.extract_raw_stage": extract_cost,
    "methods.ssl.pretrain.pretrain_stage": pretrain_cost,
    "methods.stages.probe_stage": probe_cost,
    "methods.stages.supervised_stage": supervised_cost,
    "baselines.jang.jang_stage": jang_cost,
    "baselines.hsieh.hsieh_stage": hsieh_cost,
    "baselines.wang.wang_stage": wang_cost,
    "baselines.landmark_detector.landmark_stage": landmarks_cost,
    "baselines.radiogrammetry.radiogrammetry_stage": radiogrammetry_cost,
    "baselines.clinical.fit_clinical": clinical_cost,
}


def builtin_cost_models(device: Any, steps: int = 3, warmup: int = 1, measurer: Measurer | None = None
                        ) -> dict[str, CostModel]:
    """Cost models of the built-in stages sharing one :class:`Measurer` (measurements cached across stages)."""
    m = measurer or Measurer(device, steps, warmup)
    return {fn: (lambda model: lambda stage, config, dev: model(m, stage, config))(model)
            for fn, model in _MODELS.items()}
