"""Registers the baselines (paper Table 8 and the extra reference baselines).

    segment ─▶ extract ─▶ deepdxa (ResNet-18 end to end on the bone patches)    deepdxa   (Ho et al.)
    segment ─▶ jang (VGG16 on one jittered wrist box per radiograph)          jang      (Jang et al.)
    landmarks ─▶ hsieh (VGG16 per landmark ROI, ROIs averaged)                hsieh     (Hsieh et al.)
    landmarks ─▶ wang (VGG16 ROI tokens + transformer)                        wang      (Wang et al.)
    segment ─▶ radiogrammetry (automatic 2MCI + logistic regression)          radiogrammetry
    clinical (age + sex logistic regression)                                  clinical

Every supervised baseline trains end to end without SSL or enhanced augmentation, on the same
splits, selected by subject validation macro-F1 (methods.supervised). `segment`, `extract` and
`landmarks` are the same Stage objects wherever they appear, so a suite computes each once per seed.
Stages name their functions "module:function" (bench.function_ref): importing this module imports no torch.
"""
from __future__ import annotations

from bench.config import declare_section_modules
from bench.registry import Entry, Stage, register
from methods.pipeline import EXTRACT, SEGMENT

declare_section_modules("baselines.roi", "baselines.vgg", "baselines.wang", "baselines.landmarks",
                        "baselines.radiogrammetry", "methods.supervised")

VGG_SECTIONS = ("roi", "vgg", "supervised", "run")

LANDMARKS = Stage("landmarks", "baselines.landmark_detector:landmark_stage", sections=("landmarks", "run"),
                  datasets=("seg", "cls"),
                  splits=("seg",))   # trained on the `seg` splits; detects on (and scores) every `cls` image

DEEPDXA = Stage("deepdxa", "methods.stages:supervised_stage", sections=("supervised", "run"), inputs=("extract",),
                options={"encoder": "resnet18"}, datasets=("cls",))
JANG = Stage("jang", "baselines.jang:jang_stage", sections=VGG_SECTIONS, inputs=("segment",), datasets=("cls",),
             needs=lambda config: () if config.roi.source in ("annotator", "truth") else ("segment",))
HSIEH = Stage("hsieh", "baselines.hsieh:hsieh_stage", sections=VGG_SECTIONS, inputs=("landmarks",), datasets=("cls",))
WANG = Stage("wang", "baselines.wang:wang_stage", sections=(*VGG_SECTIONS, "wang"), inputs=("landmarks",),
             datasets=("cls",))
RADIOGRAMMETRY = Stage("radiogrammetry", "baselines.radiogrammetry:radiogrammetry_stage", sections=("radiogrammetry",),
                       inputs=("segment",), datasets=("cls",),
                       seeded=False,  # deterministic given its inputs (segment carries the seed)
                       needs=lambda config: ("segment",) if config.radiogrammetry.source == "predicted" else ())

register(Entry(
    name="deepdxa",
    description="DeepDXA: ResNet-18 trained end to end on the segmentation-based bone patches",
    stages=(SEGMENT, EXTRACT, DEEPDXA), kind="baseline", table="table8", row="Ho et al. (DeepDXA)",
    citation="Ho et al., Arch. Osteoporos. 2021",
    info={"roi": "Segmentation-based", "architecture": "ResNet18"},
))
register(Entry(
    name="jang",
    description="VGG16 on one box around the wrist and metacarpals per radiograph, drawn with human-like jitter",
    stages=(SEGMENT, JANG), kind="baseline", table="table8", row="Jang et al.",
    citation="Jang et al., Sci. Rep. 2021",
    info={"roi": "Manual cropping", "architecture": "VGG16"},
))
register(Entry(
    name="hsieh",
    description="heat-map landmark detector trained on `seg`; VGG16 on a square ROI per landmark, averaged",
    stages=(LANDMARKS, HSIEH), kind="baseline", table="table8", row="Hsieh et al.",
    citation="Hsieh et al., Nat. Commun. 2021",
    info={"roi": "Landmark-based cropping", "architecture": "VGG16"},
))
register(Entry(
    name="wang",
    description="landmark ROIs embedded by VGG16, a transformer encoder across the ROI tokens, one prediction",
    stages=(LANDMARKS, WANG), kind="baseline", table="table8", row="Wang et al.",
    citation="Wang et al., IEEE Trans. Med. Imag. 2022",
    info={"roi": "Landmark-based cropping", "architecture": "VGG16 + Transformer"},
))
register(Entry(
    name="radiogrammetry",
    description="automatic radiogrammetry: 2MCI of M2-M4 and the distal radius from intensity profiles, "
                "logistic regression",
    stages=(SEGMENT, RADIOGRAMMETRY), kind="reference", table="table8", row="Radiogrammetry (2MCI)",
    tags=("baseline", "beyond-paper"),
    info={"roi": "Segmentation-based (mid-shaft profiles)", "architecture": "logistic regression"},
))
register(Entry(
    name="clinical",
    description="logistic regression on age and sex alone: the floor any image model must beat",
    stages=(Stage("clinical", "baselines.clinical:fit_clinical", datasets=("cls",), seeded=False),),
    kind="reference",
    table="table8",
    row="Clinical covariates (age, sex)",
    tags=("baseline", "beyond-paper"),
    info={"roi": "none (covariates only)", "architecture": "logistic regression"},
))
