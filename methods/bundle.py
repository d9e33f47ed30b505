"""Model bundles (``.osteo``): a trained full-method run packed for `bench predict` (issue 10).

A bundle is a zip archive (written by methods.export):

    bundle.json                metadata (below); written first
    segmentation.safetensors   U-Net weights (MoSE or the single-decoder ablation; methods.segmentation.model)
    encoder.safetensors        the frozen SSL-pretrained encoder (timm, one input channel)
    head.safetensors           the linear probe: weight (2 × F), bias (2), and, when the probe standardised
                               its features, feature_mean and feature_std (1 × F)

An ensemble of the K fold runs of a cross-validation has ``encoder-<j>.safetensors`` (one per
distinct pretraining) and ``head-<k>.safetensors`` (one per fold) instead; ``models`` in
bundle.json says which encoder each head reads.

``bundle.json`` holds: ``format`` ("osteobench-bundle") and ``format_version`` (FORMAT_VERSION),
the package version that wrote it (importlib.metadata), the source run (suite, entry, seed, run
key, stage keys), the segmentation ModelSpec and how the run predicted (seed 0, the spec's S
samples: methods.segmentation.predict), the encoder's timm name and input size
(``multicrop.global_size``, as the probe), ``models`` (per probe model: fold, members, source run,
probe summary), the patch config (``patches``), the class map, the decision rule, the default
screening thresholds (methods.screen.ScreenConfig), the reference segmentation uncertainty (median
and 99th percentile of the per-image mean entropy over the images the run's segment stage
predicted, for the out-of-distribution flag), a description of the preprocessing, the run's whole
resolved config, the SHA-256 of every member, and the pixel digests of the images its models were
fitted on or tested on (``training_images``, methods.training_images; optional: bundles written
before it lack it, and `bench evaluate` then falls back to comparing dataset folders).

Conventions:

* Decision: osteoporosis when the mean of the usable bones' probabilities (eq. 10) exceeds
  ``bench.metrics.DECISION_THRESHOLD`` = 0.5 (argmax of the mean class probabilities; a tie is
  normal), the rule the runner's evaluation applied to the run's own predictions. An ensemble's
  bone probability is the mean of its models' (nnU-Net's fold ensembling averages probabilities).
* Feature statistics: the probe z-scores features with the train-split mean and std
  (methods.probe) and saves them (``feature_stats.pt``); for runs older than that, export
  recomputes them exactly as the probe stage did: the same `cls` patches in the same order through
  the same encoder, on ``device`` (a run probed on CUDA in bf16 gets CPU float32 statistics,
  equal to about 1e-3).
* Compatibility: format version 1 (one model, no ``models``) and 2 are read; anything else, a
  missing member or a checksum mismatch is a BenchError saying what to do. Export is
  deterministic: the same run gives the same bytes (fixed zip timestamps, sorted JSON).
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from bench import __version__
from bench.errors import BenchError, brief
from methods.bones import PatchConfig
from methods.encoders import build_encoder, extract_features
from methods.segmentation.model import ModelSpec, build_model

FORMAT = "osteobench-bundle"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
META, SEGMENTATION, ENCODER, HEAD = "bundle.json", "segmentation.safetensors", "encoder.safetensors", "head.safetensors"
REQUIRED_STAGES = ("segment", "extract", "pretrain", "probe")
LABELS = {0: "normal", 1: "osteoporosis"}   # paper "Hand X-ray datasets": T-score below -2.5
PREPROCESSING = (
    "bench.data.imageio.read_image: bone-bright float32 in [0, 1]; segmentation: fitted onto the working canvas "
    "(aspect kept, centred, zero padded), z-scored per image, mixture-mean probabilities upsampled to native size, "
    "argmax; patches: methods.bones.extract_bones (config `patches`); encoder input: patch / 65535 resized to "
    "encoder.input_size")


# --------------------------------------------------------------------------- loading
def models_of(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The probe models of a bundle (format 1 had one, described by ``head`` and ``source``)."""
    if meta.get("format_version") == 1:
        return [{"fold": None, "holds_out": None, "encoder": ENCODER, "head": HEAD, "source": meta.get("source"),
                 "probe": meta.get("head", {}).get("probe")}]
    models = meta.get("models")
    if not isinstance(models, list) or not models:
        raise ValueError("bundle.json lists no models")
    return models


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
            _check_fields(path, meta)
            wanted = [SEGMENTATION] + list(dict.fromkeys(m for model in models_of(meta)
                                                         for m in (model["encoder"], model["head"])))
            lacking = [m for m in wanted if m not in names]
            if lacking:
                raise BenchError(f"bundle {path} lacks {', '.join(lacking)}; it is incomplete: export it again")
            blobs = {m: zf.read(m) for m in wanted}
    except zipfile.BadZipFile:
        raise BenchError(f"{path} is not an osteobench bundle (not a zip archive, or truncated); "
                         "create one with `bench export`") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"{path} is not a readable osteobench bundle ({exc}); export it again") from None
    for name, blob in blobs.items():
        if hashlib.sha256(blob).hexdigest() != meta.get("files", {}).get(name):
            raise BenchError(f"bundle {path}: {name} does not match its checksum; the file is corrupt: export it again")
    return meta, blobs


def _check_format(path: Path, meta: Any) -> None:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BenchError(f"{path} is not an osteobench bundle ({META} names no format {FORMAT!r})")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS:
        made_by = meta.get("package_version", "an unknown version")
        hint = ("upgrade osteobench" if isinstance(version, int) and version > FORMAT_VERSION
                else "export the run again with this osteobench")
        raise BenchError(f"bundle {path} has format version {version!r} (written by osteobench {made_by}); this "
                         f"osteobench {__version__} reads format versions "
                         f"{', '.join(map(str, READABLE_VERSIONS))}: {hint}")


#: The fields of bundle.json that loading and predicting read, with the type each must have.
REQUIRED_FIELDS: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("source", dict), ("segmentation", dict), ("segmentation.spec", dict), ("encoder", dict),
    ("encoder.name", str), ("encoder.input_size", int), ("patches", dict), ("decision", dict),
    ("decision.threshold", (int, float)))


def _check_fields(path: Path, meta: dict[str, Any]) -> None:
    """Every field of :data:`REQUIRED_FIELDS` present with its type, and a threshold in [0, 1]; a
    bundle edited by hand or damaged otherwise fails here with what is wrong, not deep in predict."""
    for name, kind in REQUIRED_FIELDS:
        value: Any = meta
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None or isinstance(value, bool) or not isinstance(value, kind):
            what = "lacks" if value is None else f"has a {type(value).__name__} as"
            raise BenchError(f"bundle {path} is damaged: its {META} {what} `{name}`; export it again")
    if not 0.0 <= meta["decision"]["threshold"] <= 1.0:
        raise BenchError(f"bundle {path} is damaged: its decision threshold {meta['decision']['threshold']} "
                         "lies outside [0, 1]; export it again")


def refit_hint(meta: dict[str, Any]) -> str:
    """What to do about a bundle whose content this osteobench cannot use: upgrade when the bundle was
    written by a newer osteobench, else export the run again."""
    from packaging.version import InvalidVersion, Version

    made_by = str(meta.get("package_version", ""))
    try:
        newer = Version(made_by) > Version(__version__)
    except InvalidVersion:
        newer = False
    if newer:
        return f"it was written by osteobench {made_by}, newer than this {__version__}: upgrade osteobench"
    return "export the run again with this osteobench"


@dataclass
class ProbeModel:
    """One linear probe on one of the bundle's encoders (an ensemble has one per fold)."""

    encoder: int                             # index into Bundle.encoders
    head: nn.Linear
    feature_mean: torch.Tensor | None
    feature_std: torch.Tensor | None
    fold: int | None = None

    def probability(self, feats: torch.Tensor) -> torch.Tensor:
        if self.feature_mean is not None:
            feats = (feats - self.feature_mean) / self.feature_std
        return torch.softmax(self.head(feats), dim=1)[:, 1]


@dataclass
class Bundle:
    """A loaded bundle: the networks on `device` and the metadata; see :meth:`predict`."""

    meta: dict[str, Any]
    segmenter: nn.Module
    encoders: list[nn.Module]
    models: list[ProbeModel]
    device: torch.device
    path: Path | None = None
    screen: Any = None                       # methods.screen.ScreenConfig used by predict; None: the bundle's

    @property
    def patch_config(self) -> PatchConfig:
        unknown = sorted(set(self.meta["patches"]) - set(PatchConfig.__dataclass_fields__))
        if unknown:      # a patch option this version does not know would change the patches silently
            raise BenchError(f"bundle {self.path} cuts its bone patches with options this osteobench does not "
                             f"know ({', '.join(unknown)}); {refit_hint(self.meta)}")
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in self.meta["patches"].items()}
        return PatchConfig(**fields)

    @property
    def threshold(self) -> float:
        return float(self.meta["decision"]["threshold"])

    @property
    def canvas(self) -> tuple[int, int]:
        return tuple(self.segmenter.spec.canvas)

    def segment(self, images: Iterable[np.ndarray], batch_size: int = 8,
                laterality: Iterable[str | None] | None = None,
                detect: bool | Iterable[bool] = False) -> Iterator[Any]:
        """Segmentation of float images in [0, 1], as the run's segment stage predicted them; `laterality`
        per image (L, R, unknown) for a canonical-laterality segmenter, `detect` to also find the side of
        an image whose side is given (methods.segmentation.predict)."""
        from methods.segmentation.predict import predict_many

        seg = self.meta["segmentation"]
        return predict_many(self.segmenter, images, batch_size=batch_size, samples=seg.get("samples"),
                            seed=int(seg.get("seed", 0)), laterality=laterality, detect=detect)

    @torch.no_grad()
    def model_probabilities(self, patches: np.ndarray, batch_size: int = 128) -> np.ndarray:
        """P(osteoporosis) of uint16 N × P × P bone patches by each probe model: N × models (float64)."""
        if len(patches) == 0:
            return np.zeros((0, len(self.models)), dtype=np.float64)
        x = torch.from_numpy(np.ascontiguousarray(patches).astype(np.float32) / 65535.0)
        size = int(self.meta["encoder"]["input_size"])
        feats = {i: extract_features(encoder, x, size, self.device, batch_size=batch_size).float()
                 for i, encoder in enumerate(self.encoders) if any(m.encoder == i for m in self.models)}
        probs = [m.probability(feats[m.encoder]) for m in self.models]
        return torch.stack(probs, dim=1).double().cpu().numpy()

    def bone_probabilities(self, patches: np.ndarray, batch_size: int = 128) -> np.ndarray:
        """P(osteoporosis) of uint16 N × P × P bone patches: the mean over the probe models."""
        return self.model_probabilities(patches, batch_size).mean(axis=1)

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
                "threshold": self.threshold, "encoder": self.meta["encoder"]["name"],
                "models": len(self.models), "folds": [m.fold for m in self.models if m.fold is not None]}


def bundle_segmenter(path: str | Path, meta: dict[str, Any], blobs: dict[str, bytes]) -> nn.Module:
    """The segmentation network of a bundle read by :func:`read_meta` (on the CPU, eval mode)."""
    from safetensors.torch import load

    try:
        seg = build_model(ModelSpec.from_dict(meta["segmentation"]["spec"]))
        seg.load_state_dict(load(blobs[SEGMENTATION]))
    except (KeyError, RuntimeError, TypeError) as exc:
        raise BenchError(f"bundle {path} does not fit this osteobench's networks ({brief(exc)}); "
                         f"{refit_hint(meta)}") from None
    return seg.eval()


def load_bundle(path: str | Path, device: torch.device | str = "cpu") -> Bundle:
    """Read a bundle written by methods.export onto `device` (eval mode)."""
    from safetensors.torch import load

    meta, blobs = read_meta(path)
    device = torch.device(device)
    seg = bundle_segmenter(path, meta, blobs)
    try:
        encoder_names: list[str] = []
        encoders: list[nn.Module] = []
        models = []
        for described in models_of(meta):
            if described["encoder"] not in encoder_names:
                encoder = build_encoder(meta["encoder"]["name"])
                encoder.load_state_dict(load(blobs[described["encoder"]]))
                encoder_names.append(described["encoder"])
                encoders.append(encoder.to(device).eval())
            tensors = load(blobs[described["head"]])
            head = nn.Linear(tensors["weight"].shape[1], tensors["weight"].shape[0])
            head.load_state_dict({"weight": tensors["weight"], "bias": tensors["bias"]})
            mean, std = tensors.get("feature_mean"), tensors.get("feature_std")
            models.append(ProbeModel(encoder_names.index(described["encoder"]), head.to(device).eval(),
                                     None if mean is None else mean.to(device), None if std is None else std.to(device),
                                     described.get("fold")))
    except (KeyError, RuntimeError, TypeError) as exc:
        raise BenchError(f"bundle {path} does not fit this osteobench's networks ({brief(exc)}); "
                         f"{refit_hint(meta)}") from None
    return Bundle(meta=meta, segmenter=seg.to(device).eval(), encoders=encoders, models=models, device=device,
                  path=Path(path))
