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
"""
from __future__ import annotations

from baselines.clinical import fit_clinical
from baselines.hsieh import hsieh_stage
from baselines.jang import jang_stage
from baselines.landmark_detector import LANDMARKS
from baselines.radiogrammetry import radiogrammetry_stage
from baselines.wang import wang_stage
from bench.registry import Entry, Stage, register
from methods.extract import EXTRACT
from methods.segmentation.stage import SEGMENT
from methods.stages import supervised_stage

VGG_SECTIONS = ("roi", "vgg", "supervised", "run")

DEEPDXA = Stage("deepdxa", supervised_stage, sections=("supervised", "run"), inputs=("extract",),
                options={"encoder": "resnet18"}, datasets=("cls",))
JANG = Stage("jang", jang_stage, sections=VGG_SECTIONS, inputs=("segment",), datasets=("cls",),
             needs=lambda config: () if config.roi.source in ("annotator", "truth") else ("segment",))
HSIEH = Stage("hsieh", hsieh_stage, sections=VGG_SECTIONS, inputs=("landmarks",), datasets=("cls",))
WANG = Stage("wang", wang_stage, sections=(*VGG_SECTIONS, "wang"), inputs=("landmarks",), datasets=("cls",))
RADIOGRAMMETRY = Stage("radiogrammetry", radiogrammetry_stage, sections=("radiogrammetry",), inputs=("segment",),
                       datasets=("cls",), seeded=False,  # deterministic given its inputs (segment carries the seed)
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
    stages=(Stage("clinical", fit_clinical, datasets=("cls",), seeded=False),),
    kind="reference",
    table="table8",
    row="Clinical covariates (age, sex)",
    tags=("baseline", "beyond-paper"),
    info={"roi": "none (covariates only)", "architecture": "logistic regression"},
))
