"""The stages of the paper's pipeline, declared by name (paper Fig. 4; DESIGN.md "Entries, suites, profiles").

    segment (+ segment_eval) ─▶ extract (+ patch_sheet) ─▶ pretrain ─▶ probe | supervised
    extract_raw (+ patch_sheet) ─▶ pretrain ─▶ probe(whole image)          (Table 4, no segmentation)

Each stage names its function "module:function" (bench.function_ref), imported when it runs, so the
entries of methods.entries and baselines.entries load without torch; the config sections those
functions read are declared the same way (bench.config.declare_section_modules). The functions live
beside their ideas: methods.segmentation.stage, methods.segmentation.eval_stage, methods.extract,
methods.ssl.pretrain, methods.stages. The same Stage object wherever it appears (the baselines reuse
`segment` and `extract`) makes a suite compute it once per seed.
"""
from __future__ import annotations

from bench.config import declare_section_modules
from bench.registry import Stage

declare_section_modules("methods.segmentation.config", "methods.bones", "methods.ssl.config", "methods.probe",
                        "methods.supervised")

#: options only `segment_eval` uses: they do not key the trained model (bench.registry.Stage.unkeyed)
EVAL_ONLY = ("segmentation.eval_splits", "segmentation.eval_samples", "segmentation.figures")

SEGMENT_EVAL = Stage("segment_eval", "methods.segmentation.eval_stage:segment_eval_stage",
                     sections=("segmentation", "run"), inputs=("segment",), datasets=("seg",), splits=("seg",),
                     version=2)   # 2: a background-bone tie of the consensus is bone
SEGMENT = Stage("segment", "methods.segmentation.stage:segment_stage", sections=("segmentation", "run"),
                datasets=("seg", "cls"),
                splits=("seg",),   # trained on the `seg` splits; predicts every `cls` image
                version=2,         # 2: the evaluation and figures moved to the companion segment_eval
                companions=(SEGMENT_EVAL,), unkeyed=EVAL_ONLY)


def _sheet(of: str) -> Stage:
    """The contact-sheet companion of stage `of` (deterministic given its input and the images)."""
    return Stage("patch_sheet", "methods.extract:patch_sheet_stage", sections=("patches.figure_images",),
                 inputs=(of,), datasets=("seg", "cls"), seeded=False, splits=())


# Neither reads a split: the stages that do take it from their datasets (PatchStore.with_splits).
# version 2: the contact sheet moved to the companion patch_sheet
EXTRACT = Stage("extract", "methods.extract:extract_stage", sections=("patches",), inputs=("segment",),
                datasets=("seg", "cls"),
                seeded=False,  # deterministic given its inputs (the segment key carries the seed)
                needs=lambda config: ("segment",) if config.patches.source == "predicted" else (), splits=(),
                version=2, companions=(_sheet("extract"),), unkeyed=("patches.figure_images",))
EXTRACT_RAW = Stage("extract_raw", "methods.extract:extract_raw_stage", sections=("patches",),
                    datasets=("seg", "cls"), splits=(),
                    version=2, companions=(_sheet("extract_raw"),), unkeyed=("patches.figure_images",))

PRETRAIN_SECTIONS = ("ssl", "multicrop", "augment", "heads", "run")


def pretrain_splits(config) -> tuple[str, ...]:
    """Pretraining reads every `seg` patch, and the `cls` train split only when it adds its labelled patches."""
    return ("cls",) if config.ssl.uses_cls_train else ()


PRETRAIN = Stage("pretrain", "methods.ssl.pretrain:pretrain_stage", sections=PRETRAIN_SECTIONS, inputs=("extract",),
                 datasets=("seg", "cls"), splits=pretrain_splits)
PRETRAIN_RAW = Stage("pretrain", "methods.ssl.pretrain:pretrain_stage", sections=PRETRAIN_SECTIONS,
                     inputs=("extract_raw",), options={"patches": "extract_raw"}, datasets=("seg", "cls"),
                     splits=pretrain_splits)
PROBE = Stage("probe", "methods.stages:probe_stage", sections=("probe", "multicrop", "run"),
              inputs=("extract", "pretrain"), datasets=("cls",))
PROBE_WHOLE = Stage("probe", "methods.stages:probe_stage", sections=("probe", "multicrop", "patches.patch_size", "run"),
                    inputs=("pretrain",), options={"whole_image": True}, datasets=("cls",))
SUPERVISED = Stage("supervised", "methods.stages:supervised_stage", sections=("supervised", "ssl.encoder", "run"),
                   inputs=("extract",), datasets=("cls",))
FULL = (SEGMENT, EXTRACT, PRETRAIN, PROBE)
