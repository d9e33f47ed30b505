"""Model bundles (``.osteo``): a trained full-method run packed for `bench predict` (issue 10).

A bundle is a zip archive with four members:

    bundle.json               metadata (below); written first
    segmentation.safetensors  U-Net weights (MoSE or the single-decoder ablation; methods.segmentation.model)
    encoder.safetensors       the frozen SSL-pretrained encoder (timm, one input channel)
    head.safetensors          the linear probe: weight (2 × F), bias (2), and, when the probe standardised
                              its features, feature_mean and feature_std (1 × F)

``bundle.json`` holds: ``format`` ("osteobench-bundle") and ``format_version`` (FORMAT_VERSION),
the package version that wrote it (importlib.metadata), the source run (suite, entry, seed, run
key, stage keys), the segmentation ModelSpec and how the run predicted (seed 0, the spec's S
samples: methods.segmentation.predict), the encoder's timm name and input size
(``multicrop.global_size``, as the probe), the patch config (``patches``), the class map, the
decision rule, the default screening thresholds (methods.screen.ScreenConfig), the reference
segmentation uncertainty (median and 99th percentile of the per-image mean entropy over the images
the run's segment stage predicted, for the out-of-distribution flag), a description of the
preprocessing, the run's whole resolved config, and the SHA-256 of every member.

Conventions:

* Decision: osteoporosis when the mean of the usable bones' probabilities (eq. 10) exceeds
  ``bench.metrics.DECISION_THRESHOLD`` = 0.5 (argmax of the mean class probabilities; a tie is
  normal), the rule the runner's evaluation applied to the run's own predictions.
* Feature statistics: the probe z-scores features with the train-split mean and std
  (methods.probe) but saves only the linear layer (``head.pt``). When the probe folder has no
  ``feature_stats.pt`` (``{"mean", "std"}``), export recomputes them exactly as the probe stage
  did: the same `cls` patches in the same order through the same encoder, on ``device`` (CPU by
  default; a run probed on CUDA in bf16 gets CPU float32 statistics, equal to about 1e-3).
* Compatibility: a bundle is loaded only when its format and format_version equal this code's;
  anything else, a missing member or a checksum mismatch is a BenchError saying what to do.
  Export is deterministic: the same run gives the same bytes (fixed zip timestamps, sorted JSON).
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from bench import __version__
from bench.atomic import atomic_write_bytes
from bench.data.format import BONES, CLASS_NAMES
from bench.errors import BenchError
from bench.metrics import DECISION_THRESHOLD
from bench.predict import json_safe
from methods.bones import PatchConfig
from methods.encoders import build_encoder, extract_features
from methods.segmentation.model import ModelSpec, build_model

FORMAT = "osteobench-bundle"
FORMAT_VERSION = 1
META, SEGMENTATION, ENCODER, HEAD = "bundle.json", "segmentation.safetensors", "encoder.safetensors", "head.safetensors"
MEMBERS = (META, SEGMENTATION, ENCODER, HEAD)
REQUIRED_STAGES = ("segment", "extract", "pretrain", "probe")
LABELS = {0: "normal", 1: "osteoporosis"}   # paper "Hand X-ray datasets": T-score below -2.5
PREPROCESSING = (
    "bench.data.imageio.read_image: bone-bright float32 in [0, 1]; segmentation: fitted onto the working canvas "
    "(aspect kept, centred, zero padded), z-scored per image, mixture-mean probabilities upsampled to native size, "
    "argmax; patches: methods.bones.extract_bones (config `patches`); encoder input: patch / 65535 resized to "
    "encoder.input_size")


# --------------------------------------------------------------------------- export
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


def stage_dirs(run: Path, run_config: dict[str, Any]) -> dict[str, Path]:
    """The cache folders of the run's segment, extract, pretrain and probe stages."""
    stages = run_config.get("stages") or {}
    entry = run_config.get("entry", run.parent.name)
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


def feature_stats(dirs: dict[str, Path], config: dict[str, Any], encoder: nn.Module,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Train-split feature mean and std of the probe (saved, or recomputed as methods.stages.probe_stage)."""
    saved = dirs["probe"] / "feature_stats.pt"
    if saved.is_file():
        stats = torch.load(saved, map_location="cpu", weights_only=True)
        return stats["mean"].float().reshape(1, -1), stats["std"].float().reshape(1, -1)
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


def export_bundle(run_path: str | Path, out: str | Path, device: torch.device | str = "cpu") -> Path:
    """Pack the run at `run_path` into the bundle file `out` (written atomically); return `out`."""
    from methods.segmentation.predict import load_model
    from methods.ssl.pretrain import load_encoder

    run = find_run(run_path)
    try:
        run_config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot read {run / 'config.json'} ({exc}); rerun the run") from None
    config = run_config.get("config") or {}
    if config.get("patches", {}).get("source", "predicted") != "predicted":
        raise BenchError(f"{run} cut its patches from {config['patches']['source']} masks, not from the segmentation "
                         "model; its probe would not match what `bench predict` feeds it: export a run with "
                         "patches.source=predicted")
    device = torch.device(device)
    dirs = stage_dirs(run, run_config)
    seg = load_model(dirs["segment"] / "model.pt", "cpu")
    encoder = load_encoder(dirs["pretrain"], "cpu")
    head = torch.load(dirs["probe"] / "head.pt", map_location="cpu", weights_only=True)
    standardize = bool(config.get("probe", {}).get("standardize", True))
    head_tensors = {"weight": head["weight"].float(), "bias": head["bias"].float()}
    if standardize:
        head_tensors["feature_mean"], head_tensors["feature_std"] = feature_stats(dirs, config, encoder, device)
    saved_encoder = torch.load(dirs["pretrain"] / "encoder.pt", map_location="cpu", weights_only=True)
    blobs = {SEGMENTATION: _safetensors(seg.state_dict()), ENCODER: _safetensors(encoder.state_dict()),
             HEAD: _safetensors(head_tensors)}
    seg_cfg = config.get("segmentation", {})
    from methods.screen import ScreenConfig

    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "package": "osteobench", "package_version": __version__,
        "source": {k: run_config.get(k) for k in ("suite", "entry", "seed", "profile", "run_key", "stages", "version")},
        "segmentation": {"spec": {**seg.spec.to_dict(), "extra": {}}, "training": seg.spec.extra,
                         "seed": 0, "samples": None, "batch_size": int(seg_cfg.get("predict_batch", 8))},
        "encoder": {"name": saved_encoder["encoder"], "input_size": int(config["multicrop"]["global_size"]),
                    "num_features": int(head_tensors["weight"].shape[1])},
        "head": {"standardize": standardize, "classes": LABELS,
                 "probe": json.loads((dirs["probe"] / "probe.json").read_text())},
        "patches": config.get("patches", {}),
        "class_map": dict(enumerate(CLASS_NAMES)), "bones": BONES,
        "decision": {"threshold": DECISION_THRESHOLD, "rule": "osteoporosis when the mean probability of the usable "
                     "bones (paper eq. 10) > threshold; a tie is normal"},
        "screening": ScreenConfig().to_dict(),
        "reference": reference_uncertainty(dirs["segment"]),
        "preprocessing": PREPROCESSING,
        "config": config,
        "files": {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()},
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        text = json.dumps(json_safe(meta), indent=2, sort_keys=True, allow_nan=False)   # NaN → null
        members = [(META, text.encode("utf-8"), zipfile.ZIP_DEFLATED)]
        members += [(name, blobs[name], zipfile.ZIP_STORED) for name in (SEGMENTATION, ENCODER, HEAD)]
        for name, data, compression in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = compression
            zf.writestr(info, data)
    out = Path(out)
    atomic_write_bytes(out, buf.getvalue())
    return out


# --------------------------------------------------------------------------- loading
def read_meta(path: str | Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """bundle.json and the weight members of a bundle, checked (module docstring: compatibility)."""
    path = Path(path)
    if path.is_dir():
        raise BenchError(f"bundle {path} is a folder; give the .osteo file written by `bench export`")
    if not path.is_file():
        raise BenchError(f"bundle {path} does not exist; create one with `bench export RESULTS_PATH --out {path.name}`")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if META not in names:
                raise BenchError(f"{path} is not an osteobench bundle (no {META}); create one with `bench export`")
            meta = json.loads(zf.read(META).decode("utf-8"))
            _check_format(path, meta)
            lacking = [m for m in MEMBERS if m not in names]
            if lacking:
                raise BenchError(f"bundle {path} lacks {', '.join(lacking)}; it is incomplete: export it again")
            blobs = {m: zf.read(m) for m in MEMBERS if m != META}
    except zipfile.BadZipFile:
        raise BenchError(f"{path} is not an osteobench bundle (not a zip archive, or truncated); "
                         "create one with `bench export`") from None
    except (ValueError, KeyError) as exc:
        raise BenchError(f"{path} is not a readable osteobench bundle ({exc}); export it again") from None
    for name, blob in blobs.items():
        if hashlib.sha256(blob).hexdigest() != meta.get("files", {}).get(name):
            raise BenchError(f"bundle {path}: {name} does not match its checksum; the file is corrupt: export it again")
    return meta, blobs


def _check_format(path: Path, meta: Any) -> None:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BenchError(f"{path} is not an osteobench bundle ({META} names no format {FORMAT!r})")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        made_by = meta.get("package_version", "an unknown version")
        hint = ("upgrade osteobench" if isinstance(version, int) and version > FORMAT_VERSION
                else "export the run again with this osteobench")
        raise BenchError(f"bundle {path} has format version {version!r} (written by osteobench {made_by}); this "
                         f"osteobench {__version__} reads format version {FORMAT_VERSION}: {hint}")


@dataclass
class Bundle:
    """A loaded bundle: the three networks on `device` and the metadata; see :meth:`predict`."""

    meta: dict[str, Any]
    segmenter: nn.Module
    encoder: nn.Module
    head: nn.Linear
    feature_mean: torch.Tensor | None
    feature_std: torch.Tensor | None
    device: torch.device
    path: Path | None = None
    screen: Any = None                       # methods.screen.ScreenConfig used by predict; None: the bundle's

    @property
    def patch_config(self) -> PatchConfig:
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in self.meta["patches"].items()
                  if k in PatchConfig.__dataclass_fields__}
        return PatchConfig(**fields)

    @property
    def threshold(self) -> float:
        return float(self.meta["decision"]["threshold"])

    @property
    def canvas(self) -> tuple[int, int]:
        return tuple(self.segmenter.spec.canvas)

    def segment(self, images: Iterable[np.ndarray], batch_size: int = 8) -> Iterator[Any]:
        """Segmentation of float images in [0, 1], as the run's segment stage predicted them."""
        from methods.segmentation.predict import predict_many

        seg = self.meta["segmentation"]
        return predict_many(self.segmenter, images, batch_size=batch_size, samples=seg.get("samples"),
                            seed=int(seg.get("seed", 0)))

    @torch.no_grad()
    def bone_probabilities(self, patches: np.ndarray, batch_size: int = 128) -> np.ndarray:
        """P(osteoporosis) of uint16 N × P × P bone patches: encoder, standardisation, linear head."""
        if len(patches) == 0:
            return np.zeros(0, dtype=np.float64)
        x = torch.from_numpy(np.ascontiguousarray(patches).astype(np.float32) / 65535.0)
        feats = extract_features(self.encoder, x, int(self.meta["encoder"]["input_size"]), self.device,
                                 batch_size=batch_size).float()
        if self.feature_mean is not None:
            feats = (feats - self.feature_mean) / self.feature_std
        return torch.softmax(self.head(feats), dim=1)[:, 1].double().cpu().numpy()

    def predict(self, radiographs: Sequence[Any], names: Sequence[str] | None = None, *, batch_size: int = 8,
                screen: Any = None) -> list[Any]:
        """Screen radiographs (bench.data.imageio.Radiograph) → methods.screen.Screening, in order."""
        from methods.screen import screen_radiographs

        return screen_radiographs(self, radiographs, names, batch_size=batch_size, config=screen or self.screen)

    def predict_file(self, path: str | Path, pixel_spacing_mm: float | None = None, screen: Any = None) -> Any:
        """Screen one image file (PNG, TIFF, JPEG, DICOM); the spacing fills in when the file states none."""
        from bench.data.imageio import read_image

        rad = read_image(Path(path))
        if rad.pixel_spacing_mm is None:
            rad.pixel_spacing_mm = pixel_spacing_mm
        return self.predict([rad], [Path(path).stem], screen=screen)[0]

    def describe(self) -> dict[str, Any]:
        """What predictions.json records about the model."""
        return {"bundle": str(self.path) if self.path else None, "format_version": self.meta["format_version"],
                "package_version": self.meta["package_version"], "source": self.meta["source"],
                "threshold": self.threshold, "encoder": self.meta["encoder"]["name"]}


def load_bundle(path: str | Path, device: torch.device | str = "cpu") -> Bundle:
    """Read a bundle written by :func:`export_bundle` onto `device` (eval mode)."""
    from safetensors.torch import load

    meta, blobs = read_meta(path)
    device = torch.device(device)
    try:
        seg = build_model(ModelSpec.from_dict(meta["segmentation"]["spec"]))
        seg.load_state_dict(load(blobs[SEGMENTATION]))
        encoder = build_encoder(meta["encoder"]["name"])
        encoder.load_state_dict(load(blobs[ENCODER]))
        tensors = load(blobs[HEAD])
        head = nn.Linear(tensors["weight"].shape[1], tensors["weight"].shape[0])
        head.load_state_dict({"weight": tensors["weight"], "bias": tensors["bias"]})
    except (KeyError, RuntimeError, TypeError) as exc:
        raise BenchError(f"bundle {path} does not fit this osteobench's networks ({type(exc).__name__}: {exc}); "
                         "export the run again with this version") from None
    mean, std = tensors.get("feature_mean"), tensors.get("feature_std")
    return Bundle(meta=meta, segmenter=seg.to(device).eval(), encoder=encoder.to(device).eval(),
                  head=head.to(device).eval(), feature_mean=None if mean is None else mean.to(device),
                  feature_std=None if std is None else std.to(device), device=device, path=Path(path))
