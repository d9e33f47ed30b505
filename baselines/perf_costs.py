"""Cost models of the baselines' stages for `bench perf suite` (bench.perf_suite; issue 9).

What each counts is listed in methods.perf_suite (which merges these into
:func:`methods.perf_suite.builtin_cost_models`): the supervised loops of jang, hsieh and wang with their
per-image ROI preparation, the landmark detector, the radiogrammetry per image, the clinical model at zero.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from bench.config import Config
from bench.parallel import image_threads
from bench.perf_suite import CostPart, StageCost
from bench.perf_timing import Measurer, seeded_build
from methods.optim import adam
from methods.perf_suite import (ROLE_PRESETS, EncoderClassifier, MeasuredCost, RoleSize, ceil_div, profile_name,
                                role_sizes, supervised_loop_cost)


def radiogrammetry_cost(m: Measurer, stage, config: Config) -> StageCost:
    from baselines.cortical import measure_bone

    cfg, cls = config.section("radiogrammetry"), role_sizes(config)["cls"]

    def work(image, labels, spacing):
        return [measure_bone(image, labels, b, spacing, metacarpal_fraction=cfg.metacarpal_fraction,
                             radius_offset_mm=cfg.radius_offset_mm, profiles=cfg.profiles, window_mm=cfg.window_mm,
                             step_px=cfg.step_px, outer_edge=cfg.outer_edge, margin_mm=cfg.margin_mm,
                             smooth_mm=cfg.smooth_mm)
                for b in cfg.bones]
    s = m.per_image_s(("radiogrammetry", repr(cfg)), "clinical", profile_name(config), work, threads=image_threads())
    return StageCost([CostPart("cls images", cls.n, s)], note="2MCI per image; the logistic fit is negligible")


def _vgg(config: Config) -> Callable[[], nn.Module]:
    from baselines.vgg import build_vgg

    return lambda: EncoderClassifier(build_vgg(config.vgg))


def _with_rois(m: Measurer, config: Config, cost: StageCost, key: Any, crop: Callable) -> StageCost:
    """Add the per-`cls`-image ROI preparation (read + crop(image, labels, spacing)) to a training cost."""
    s = m.per_image_s(key, "clinical", profile_name(config), crop, threads=image_threads())   # the stages' threads
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
    cost = supervised_loop_cost(m, ("vgg", repr(config.vgg)), _vgg(config), (size, size), (1, size, size),
                                patch_prepare(sup), cls.n, cls.train, cls.val, sup.batch_size, config, 128,
                                f"{config.vgg.name}, one ROI per image")

    def crop(image, labels, spacing):   # the box over the annotators' maps (3 in the phantom), jittered, cropped
        box = wrist_box([labels] * 3, spacing, roi.forearm_mm) or (0.0, 0.0, *map(float, image.shape))
        return crop_box(image, jitter_box(box, np.random.default_rng(0), roi.margin, roi.jitter), sup.input_size)
    return _with_rois(m, config, cost, ("jang-roi", repr(roi), sup.input_size), crop)


def hsieh_cost(m: Measurer, stage, config: Config) -> StageCost:
    from methods.supervised import patch_prepare

    sup, cls, k = config.supervised, role_sizes(config)["cls"], len(config.landmarks.bones)
    size = sup.input_size
    cost = supervised_loop_cost(m, ("vgg", repr(config.vgg)), _vgg(config), (size, size), (1, size, size),
                                patch_prepare(sup), cls.n * k, cls.train * k, cls.val * k, sup.batch_size, config,
                                128, f"{config.vgg.name}, {k} landmark ROIs per image")
    return _with_rois(m, config, cost, ("landmark-roi", repr(config.roi), sup.input_size, k), _landmark_crops(config))


def wang_cost(m: Measurer, stage, config: Config) -> StageCost:
    from baselines.vgg import build_vgg
    from baselines.wang import MultiRoiTransformer, roi_prepare

    sup, cfg, cls, k = config.supervised, config.wang, role_sizes(config)["cls"], len(config.landmarks.bones)
    size = sup.input_size
    build = lambda: MultiRoiTransformer(build_vgg(config.vgg), k, cfg)  # noqa: E731
    cost = supervised_loop_cost(m, ("wang", repr(config.vgg), repr(cfg), k), build, (k, size, size),
                                (k, 1, size, size), roi_prepare(sup), cls.n, cls.train, cls.val, cfg.batch_size,
                                config, 16, f"{config.vgg.name} x {k} ROIs + transformer")
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
                      m.per_image_s(("landmark-load", repr(cfg)), ROLE_PRESETS[role], profile_name(config), load,
                                    threads=threads))
             for role in ("seg", "cls")]
    return StageCost([*loads, CostPart("train steps", cfg.epochs * ceil_div(seg.train, cfg.batch_size), step),
                      CostPart("val forward", cfg.epochs * seg.val, fwd_seg),
                      CostPart("detect seg images", seg.n, fwd_seg), CostPart("detect cls images", cls.n, fwd_cls)],
                     note=f"heat-map U-Net at {cfg.mm_per_px} mm/px ({h}x{w} px on seg)")


def clinical_cost(m: Measurer, stage, config: Config) -> StageCost:
    return StageCost([], note="logistic regression on age and sex: negligible")


BASELINE_COSTS: dict[str, MeasuredCost] = {
    "baselines.jang.jang_stage": jang_cost,
    "baselines.hsieh.hsieh_stage": hsieh_cost,
    "baselines.wang.wang_stage": wang_cost,
    "baselines.landmark_detector.landmark_stage": landmarks_cost,
    "baselines.radiogrammetry.radiogrammetry_stage": radiogrammetry_cost,
    "baselines.clinical.fit_clinical": clinical_cost,
}
