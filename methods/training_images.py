"""Which radiographs a bundle's models saw: the pixel digests (bench.data.digests) of its training data.

`bench export` records them in bundle.json (``training_images``) so that `bench evaluate` can tell
an external cohort from a copy of the training data under another folder, which a path check
cannot. An image is ``fit`` when some model of the bundle was fitted or selected on it:

* every image of the `seg` dataset: the segmentation model trains on its train split and selects
  on its val split, and SSL pretraining reads the patches of all its splits (methods.ssl.pretrain);
* the `cls` train and val images (SSL pretraining for SupCon, the probe's fit and its model
  selection), with the split the run used: a cross-validation fold's (bench.data.folds), and for an
  ensemble of folds the union over folds, so every image of a cross-validated cohort is fit.

The `cls` test images are ``held_out``: the run's own test subjects, not external either, but
never fitted on. Each digest maps to where it was seen (``"seg train"``, ``"cls test"``).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable

from bench.data.digests import SCHEME, file_digests
from bench.data.folds import apply_fold
from bench.data.format import Dataset
from bench.errors import BenchError

FIT_SPLITS = ("train", "val")


def is_fit(role: str, split: str) -> bool:
    """Whether a run fits or selects on an image of `role` in `split` (module docstring)."""
    return role == "seg" or split in FIT_SPLITS


def training_images(configs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """``{"pixels": SCHEME, "fit": {digest: where}, "held_out": {digest: where}, "unrecorded": [...]}``
    over the runs whose config.json are `configs` (one, or the folds of an ensemble). A dataset
    folder that is gone is warned about and listed in ``unrecorded``."""
    digests: dict[Path, dict[str, str]] = {}
    fit: dict[str, str] = {}
    held_out: dict[str, str] = {}
    unrecorded: list[str] = []
    for config in configs:
        data_config = (config.get("config") or {}).get("data") or {}
        for role, folder in sorted((config.get("data") or {}).items()):
            if role not in ("seg", "cls") or not folder:
                continue
            try:
                dataset = Dataset.open(folder)
            except BenchError as exc:
                if folder not in unrecorded:
                    unrecorded.append(folder)
                    print(f"bench: warning: the `{role}` dataset the run trained on cannot be read ({exc}); the "
                          "bundle records no digests of its images, so `bench evaluate` will not recognise them",
                          file=sys.stderr)
                continue
            manifest = dataset.manifest
            if role == "cls" and int(data_config.get("folds") or 0):
                manifest = apply_fold(manifest, int(data_config["folds"]), int(data_config.get("fold") or 0),
                                      int(data_config.get("fold_seed") or 0), str(data_config.get("fold_by") or ""))
            ids = manifest["image_id"].astype(str).tolist()
            if dataset.root not in digests:
                digests[dataset.root] = dict(zip(ids, file_digests(dataset.image_path(i) for i in ids)))
            for image_id, split in zip(ids, manifest["split"].astype(str)):
                digest, where = digests[dataset.root][image_id], f"{role} {split}"
                if is_fit(role, split):
                    fit.setdefault(digest, where)
                    held_out.pop(digest, None)
                elif digest not in fit:
                    held_out.setdefault(digest, where)
    return {"pixels": SCHEME, "fit": dict(sorted(fit.items())), "held_out": dict(sorted(held_out.items())),
            "unrecorded": unrecorded}
