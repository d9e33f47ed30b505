"""`bench export`: a finished full-method run, or the folds of a cross-validated one, into a bundle.

The bundle's layout is described in methods.bundle. A plain run gives one probe model. A pooled
cross-validation run (``results/<suite>-cv<K>/<entry>/seed<s>``, bench.cv) gives the ensemble of
its K fold runs, the convention of nnU-Net's five-fold inference: every fold model scores every
bone and the bone probability is their mean. The folds must share the segmentation model and the
patch store (they do: those stages read no `cls` split, bench.cv); the encoders are stored once
per distinct pretraining (SimCLR, SwAV and VICReg: one for all folds; SupCon: one per fold).
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench import __version__
from bench.atomic import atomic_write_bytes
from bench.data.format import BONES, CLASS_NAMES
from bench.errors import BenchError
from bench.metrics import DECISION_THRESHOLD
from bench.predict import json_safe
from methods.bundle import (ENCODER, FORMAT, FORMAT_VERSION, HEAD, LABELS, META, PREPROCESSING, REQUIRED_STAGES,
                            SEGMENTATION)
from methods.encoders import extract_features
from methods.training_images import training_images


@dataclass
class Member:
    """One probe model of the bundle: the run it comes from and its stage folders."""

    run: Path
    config: dict[str, Any]            # the run's config.json
    dirs: dict[str, Path]             # stage name -> cache folder
    fold: int | None = None
    holds_out: str | None = None


def find_run(path: str | Path) -> Path:
    """A run folder ``results/<suite>/<entry>/seed<k>``, or the only seed of an entry folder."""
    path = Path(path)
    if not path.exists():
        raise BenchError(f"{path} does not exist; give a run folder results/<suite>/<entry>/seed<k>")
    if (path / "config.json").is_file():
        return path
    seeds = sorted(p for p in path.iterdir() if p.is_dir() and p.name.startswith("seed")
                   and (p / "config.json").is_file()) if path.is_dir() else []
    if len(seeds) == 1:
        return seeds[0]
    if seeds:
        raise BenchError(f"{path} holds several seeds ({', '.join(p.name for p in seeds)}); "
                         f"export one of them, e.g. {seeds[0]}")
    raise BenchError(f"{path} is not a run folder (no config.json); give results/<suite>/<entry>/seed<k> "
                     "of a finished `bench run`")


def read_run_config(run: Path) -> dict[str, Any]:
    try:
        return json.loads((run / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot read {run / 'config.json'} ({exc}); rerun the run") from None


def stage_dirs(run: Path, run_config: dict[str, Any]) -> dict[str, Path]:
    """The cache folders of the run's segment, extract, pretrain and probe stages."""
    stages = run_config.get("stages") or {}
    entry = run_config.get("entry", run.parent.name)
    if run_config.get("kind") == "external":          # `bench evaluate` wrote it: no model of its own
        bundle = (run_config.get("bundle") or {}).get("path", "its bundle")
        raise BenchError(f"{run} is an external evaluation (`bench evaluate` of {bundle}), not a training run; "
                         "it holds no model: use that bundle, or export the run it came from")
    lacking = [s for s in REQUIRED_STAGES if s not in stages]
    if lacking:
        ran = ", ".join(stages) or "none"
        raise BenchError(f"entry {entry!r} has no {', '.join(lacking)} stage(s) (it ran {ran}); a bundle needs "
                         "segmentation, bone patches, an SSL encoder and a linear probe: export a "
                         "full-method run (simclr, supcon, swav, vicreg) or its single-decoder-/convcrop- ablation, "
                         "run with patches.source=predicted (patches cut from the annotators' or the true masks "
                         "train no segmentation model)")
    cache = run.parent.parent.parent / "cache"
    dirs = {s: cache / s / str(stages[s]) for s in REQUIRED_STAGES}
    for name, folder in dirs.items():
        if not (folder / "_stage.json").is_file():
            raise BenchError(f"the {name} stage output of {run} ({folder}) is missing from the cache; rerun the "
                             "same `bench run` command (it recomputes only what is missing) and export again")
    if not (dirs["probe"] / "bone_predictions.parquet").is_file():
        raise BenchError(f"the probe of {run} scored whole radiographs, not bones; only per-bone probes "
                         "(the full method) can be exported")
    return dirs


def members_of(run: Path, run_config: dict[str, Any]) -> list[Member]:
    """The probe models of a run: itself, or the fold runs a pooled cross-validation run was made from."""
    fold_runs = run_config.get("fold_runs")
    if not fold_runs:
        return [Member(run, run_config, stage_dirs(run, run_config))]
    from bench.cv import fold_run_dirs

    suite, folds = str(run_config["suite"]), int(run_config["folds"])
    base = suite[:-len(f"-cv{folds}")]
    holds_out = {int(f["fold"]): f.get("holds_out") for f in fold_runs}
    members = []
    for fold, fold_run, key in fold_run_dirs(run, run_config):
        if not (fold_run / "config.json").is_file():
            raise BenchError(f"fold {fold} of {run} ({fold_run}) is missing; rerun `bench run --suite {base} "
                             f"--folds {folds}` with the same options and export again")
        config = read_run_config(fold_run)
        if config.get("run_key") != key:
            raise BenchError(f"fold {fold}'s run ({fold_run}) changed after the folds were pooled; rerun "
                             f"`bench run --suite {base} --folds {folds}` with its options (it pools again) and export")
        members.append(Member(fold_run, config, stage_dirs(fold_run, config), fold, holds_out[fold]))
    for shared in ("segment", "extract"):
        if len({m.dirs[shared] for m in members}) > 1:
            raise BenchError(f"the folds of {run} used different {shared} stages; an ensemble shares one "
                             "segmentation model and patch store: rerun all folds with the same options")
    return members


def feature_stats(member: Member, encoder: nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Train-split feature mean and std of the probe (saved, or recomputed as methods.stages.probe_stage)."""
    dirs, config = member.dirs, member.config.get("config") or {}
    saved = dirs["probe"] / "feature_stats.pt"
    if saved.is_file():
        stats = torch.load(saved, map_location="cpu", weights_only=True)
        return stats["mean"].float().reshape(1, -1), stats["std"].float().reshape(1, -1)
    if member.fold is not None:
        raise BenchError(f"the probe of {member.run} saved no feature statistics, and those of a fold's train "
                         "split cannot be recomputed from the patch store: rerun the folds with this osteobench")
    from methods.patch_store import PatchStore
    from methods.stages import cls_patches

    store = PatchStore.open(dirs["extract"])
    index, rows = cls_patches(store)
    train = ((index["split"] == "train") & index["label"].notna()).to_numpy(dtype=bool)
    if not train.any():
        raise BenchError(f"the patch store {dirs['extract']} has no usable train-split `cls` patch; "
                         "cannot recompute the probe's feature statistics")
    # every usable patch in store order, as the probe batched them, then the train rows
    images = torch.from_numpy(np.ascontiguousarray(store.array[rows]).astype(np.float32) / 65535.0)
    x = extract_features(encoder, images, int(config["multicrop"]["global_size"]), device).float()
    x = x[torch.from_numpy(train.copy()).to(x.device)]
    return x.mean(0, keepdim=True).cpu(), x.std(0, keepdim=True).clamp_min(1e-6).cpu()


def reference_uncertainty(segment_dir: Path) -> dict[str, Any]:
    """Median and 99th percentile of the per-image mean entropy the segment stage measured (nats)."""
    import pandas as pd

    files = sorted((segment_dir / "uncertainty").glob("*.parquet"))
    values = np.concatenate([pd.read_parquet(f)["mean_entropy"].to_numpy(dtype=float) for f in files]) \
        if files else np.zeros(0)
    values = values[np.isfinite(values)]
    if not len(values):
        return {}
    return {"mean_entropy": {"median": float(np.median(values)), "q99": float(np.quantile(values, 0.99)),
                             "n_images": int(len(values))}}


def _safetensors(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def _source(config: dict[str, Any]) -> dict[str, Any]:
    """What the bundle came from: the run's identity and the dataset folders it trained on (`data`)."""
    return {k: config.get(k) for k in ("suite", "entry", "seed", "profile", "run_key", "stages", "version", "data")}


def export_bundle(run_path: str | Path, out: str | Path, device: torch.device | str = "cpu") -> Path:
    """Pack the run (or cross-validation) at `run_path` into the bundle file `out`, atomically; return `out`."""
    from methods.screen import ScreenConfig
    from methods.segmentation.predict import load_model
    from methods.ssl.pretrain import load_encoder

    run = find_run(run_path)
    run_config = read_run_config(run)
    config = run_config.get("config") or {}
    if config.get("patches", {}).get("source", "predicted") != "predicted":
        raise BenchError(f"{run} cut its patches from {config['patches']['source']} masks, not from the segmentation "
                         "model; its probe would not match what `bench predict` feeds it: export a run with "
                         "patches.source=predicted")
    device = torch.device(device)
    members = members_of(run, run_config)
    ensemble = len(members) > 1
    first = members[0].dirs
    seg = load_model(first["segment"] / "model.pt", "cpu")
    blobs = {SEGMENTATION: _safetensors(seg.state_dict())}
    standardize = bool(config.get("probe", {}).get("standardize", True))
    encoders: dict[Path, str] = {}
    models = []
    for i, member in enumerate(members):
        pretrain = member.dirs["pretrain"]
        encoder = load_encoder(pretrain, "cpu")
        if pretrain not in encoders:
            encoders[pretrain] = f"encoder-{len(encoders)}.safetensors" if ensemble else ENCODER
            blobs[encoders[pretrain]] = _safetensors(encoder.state_dict())
        head = torch.load(member.dirs["probe"] / "head.pt", map_location="cpu", weights_only=True)
        tensors = {"weight": head["weight"].float(), "bias": head["bias"].float()}
        if standardize:
            tensors["feature_mean"], tensors["feature_std"] = feature_stats(member, encoder, device)
        num_features = int(tensors["weight"].shape[1])
        head_name = f"head-{i}.safetensors" if ensemble else HEAD
        blobs[head_name] = _safetensors(tensors)
        models.append({"fold": member.fold, "holds_out": member.holds_out, "encoder": encoders[pretrain],
                       "head": head_name, "source": _source(member.config),
                       "probe": json.loads((member.dirs["probe"] / "probe.json").read_text())})
    saved_encoder = torch.load(first["pretrain"] / "encoder.pt", map_location="cpu", weights_only=True)
    seg_cfg = config.get("segmentation", {})
    rule = ("osteoporosis when the mean probability of the usable bones (paper eq. 10) > threshold; a tie is normal"
            + ("; a bone's probability is the mean over the fold models" if ensemble else ""))
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "package": "osteobench", "package_version": __version__,
        "source": _source(run_config if ensemble else members[0].config),
        "segmentation": {"spec": {**seg.spec.to_dict(), "extra": {}}, "training": seg.spec.extra,
                         "seed": 0, "samples": int(seg_cfg.get("predict_draws", 0)) or None,     # None: S
                         "batch_size": int(seg_cfg.get("predict_batch", 8))},
        "encoder": {"name": saved_encoder["encoder"], "input_size": int(config["multicrop"]["global_size"]),
                    "num_features": num_features},
        "head": {"standardize": standardize, "classes": LABELS},
        "models": models,
        "patches": config.get("patches", {}),
        "class_map": dict(enumerate(CLASS_NAMES)), "bones": BONES,
        "decision": {"threshold": DECISION_THRESHOLD, "rule": rule},
        "screening": ScreenConfig().to_dict(),
        "reference": reference_uncertainty(first["segment"]),
        "preprocessing": PREPROCESSING,
        "config": config,
        "files": {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()},
        "training_images": training_images(m.config for m in members),
    }
    atomic_write_bytes(Path(out), _zip(meta, blobs))
    return Path(out)


def _zip(meta: dict[str, Any], blobs: dict[str, bytes]) -> bytes:
    """bundle.json first (deflated), then the weights (stored), with fixed timestamps: deterministic bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        text = json.dumps(json_safe(meta), indent=2, sort_keys=True, allow_nan=False)   # NaN -> null
        members = [(META, text.encode("utf-8"), zipfile.ZIP_DEFLATED)]
        members += [(name, blobs[name], zipfile.ZIP_STORED) for name in blobs]
        for name, data, compression in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = compression
            zf.writestr(info, data)
    return buf.getvalue()
