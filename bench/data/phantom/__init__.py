"""Synthetic hand-radiograph phantom (issue 2): ground-truthed PA hand/wrist radiographs.

Physically motivated: adult hand anatomy in millimetres (anatomy), a subject model tying
cortical index and trabecular density of the seven target bones to a DXA-style T-score
(subject), Beer-Lambert line integrals through 3-D tube and ellipsoid cross sections with a
trabecular texture (render, texture), quantum noise, detector blur, log transform and display
(imaging), label-independent clinical nuisance (nuisance), multi-annotator label maps with
multimodal styles (annotators), presets mirroring the paper's datasets (presets) and the
dataset writer (writer).

    from bench.data.phantom import synthesize, PhantomConfig, PRESETS
    synthesize("data/public", preset="public", profile="smoke", seed=0)
"""
from bench.data.phantom.anatomy import Pose, build_hand
from bench.data.phantom.annotators import AnnotatorStyle, annotator_styles, draw_annotations, label_map
from bench.data.phantom.imaging import Rendering, render_subject
from bench.data.phantom.nuisance import Nuisance, clean_nuisance, sample_nuisance
from bench.data.phantom.presets import GENERATOR_VERSION, PRESETS, PROFILES, PhantomConfig
from bench.data.phantom.subject import (Subject, oracle_auc, sample_population, sample_subject,
                                        subjects_from_population)
from bench.data.phantom.writer import Case, dataset_styles, make_case, synthesize

__all__ = [
    "GENERATOR_VERSION", "PRESETS", "PROFILES", "AnnotatorStyle", "Case", "Nuisance", "PhantomConfig",
    "Pose", "Rendering", "Subject", "annotator_styles", "build_hand", "clean_nuisance",
    "dataset_styles", "draw_annotations", "label_map", "make_case", "oracle_auc", "render_subject",
    "sample_nuisance", "sample_population", "sample_subject", "subjects_from_population", "synthesize",
]
