"""Screening radiographs with a bundle (issue 10; paper Fig. 4 and eq. 10).

Per radiograph (bone-bright float image from bench.data.imageio.read_image):

1. segmentation exactly as the run's segment stage predicted (:meth:`methods.bundle.Bundle.segment`):
   native-size label map, per-bone confidence (mean max-probability inside the bone), entropy and
   mutual information of the mixture at the working resolution; a segmenter trained with canonical
   laterality takes the side from the DICOM header (ImageLaterality, else Laterality) and otherwise
   detects it (``laterality`` and ``laterality_source`` of the outputs);
2. the seven bone patches with :func:`methods.bones.extract_bones` and the run's patch config
   (missing bones carry their reason: absent, cut, small, low-confidence);
3. P(osteoporosis) of every usable bone (encoder → feature standardisation → linear head); the
   image's probability is their mean (eq. 10) and the decision is probability > threshold;
4. flags (:class:`ScreenConfig`), so that a hand in an unusual position or a radiograph of
   something else yields a flagged answer rather than a confident one:

   * ``missing-bones``: some of the seven bones are missing (reasons in the notes);
   * ``too-few-bones``: fewer than ``min_bones`` usable bones: the decision is **withheld**;
   * ``no-bones``: no usable bone at all: no probability either;
   * ``low-confidence-segmentation``: the mean segmentation confidence of the usable bones is
     below ``min_confidence``;
   * ``image-too-small``: the short side is below ``min_side_fraction`` × the short side of the
     model's working canvas (the segmentation would upsample it);
   * ``out-of-distribution``: the image's mean segmentation entropy exceeds ``ood_factor`` × the
     99th percentile of the mean entropies of the images the run itself segmented (its `seg` and
     `cls` datasets; ``reference`` of the bundle): the model is unsure where the bones are, as on
     a radiograph of something else or from an unfamiliar device, so the decision is **withheld**
     (the probability is still reported: a QA case, random noise, got 4 "bones" and 0.79);
   * ``models-disagree`` (a fold ensemble only): the fold models' own image probabilities fall on
     both sides of the threshold, so the decision depends on which 80 % of the cohort trained it;
   * ``laterality-mismatch`` (``check_laterality``, a canonical-laterality segmenter): the side the
     header (or ``--laterality``) gives is not the one the model finds when not told: a wrong tag
     mirrors the hand and moves every bone, which can flip the decision, so the result is marked
     low-confidence;
   * ``both-hands``: the DICOM header's ImageLaterality (else Laterality) is B, both hands on one image:
     one hand's bones cannot be cut from it (the import refuses such files), so the decision is
     **withheld**;
   * ``looks-12-bit``: a 16-bit PNG/TIFF whose values all lie below 4096 (bench.data.imageio.looks_12_bit):
     likely 12-bit detector data, shown 16x too dark, on which the model still answers with confidence
     (a QA case: 0.64 and 0.71 "osteoporosis" where the same hand as a 16-bit image scored 0.44); rescale
     it (or import it with `bench data import`, which says so).

   Status: ``withheld`` with too-few-bones, out-of-distribution or both-hands; else ``low-confidence`` with
   low-confidence-segmentation, image-too-small, models-disagree, laterality-mismatch or looks-12-bit; else ``ok``. ``model_probabilities``
   holds each model's image probability (its bones' mean); ``probability_sd`` their standard
   deviation (NaN with one model).

An overlay PNG (:func:`overlay_png`) shows the radiograph with the bone contours, boxes and per-bone
probabilities, and the entropy map (uncertainty) beside it.
"""
from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from bench.data.dicom_fields import header_fields
from bench.data.format import BONES, CLASS_NAMES
from bench.data.imageio import Radiograph, looks_12_bit
from bench.errors import BenchError
from methods.bones import BonePatch, extract_bones

STATUSES = ("ok", "low-confidence", "withheld")


@dataclass
class ScreenConfig:
    """When a screening result is flagged, marked low-confidence or withheld (module docstring)."""

    min_bones: int = 4                # fewer usable bones (of 7) → decision withheld
    min_confidence: float = 0.6       # mean segmentation confidence of the usable bones below this → low-confidence
    min_side_fraction: float = 0.5    # short side below this × the working canvas's short side → image-too-small
    ood_factor: float = 1.25          # mean entropy above this × the run's 99th percentile → out-of-distribution
    threshold: float | None = None    # decision threshold on the mean probability; None: the bundle's (0.5)
    check_laterality: bool = True     # a given side is checked against the side the model finds (segments twice)

    def validate(self) -> None:
        """Each bound names the option as `bench predict` takes it (NaN fails every check: `not a <= x`)."""
        if not 1 <= self.min_bones <= len(BONES):
            raise BenchError(f"--min-bones must lie in 1..{len(BONES)}, got {self.min_bones}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise BenchError(f"--min-confidence must lie in [0, 1], got {self.min_confidence}")
        if not 0.0 < self.ood_factor < math.inf:
            raise BenchError(f"--ood-factor must be a finite number > 0, got {self.ood_factor}")
        if not 0.0 <= self.min_side_fraction < math.inf:
            raise BenchError(f"the screening option min_side_fraction must be a finite number >= 0, got "
                             f"{self.min_side_fraction}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise BenchError(f"--threshold (the decision threshold) must lie in [0, 1], got {self.threshold}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], **overrides: Any) -> "ScreenConfig":
        known = {k: v for k, v in {**values, **overrides}.items()
                 if k in cls.__dataclass_fields__ and v is not None}
        cfg = cls(**known)
        cfg.validate()
        return cfg


@dataclass
class Screening:
    """The result for one radiograph; :meth:`row` and :meth:`record` are what the outputs hold."""

    name: str
    probability: float                 # mean P(osteoporosis) of the usable bones (eq. 10); NaN without any
    prediction: int | None             # 1 osteoporosis, 0 normal, None when withheld
    decision: str                      # osteoporosis | normal | withheld
    status: str                        # ok | low-confidence | withheld
    flags: list[str]
    notes: list[str]                   # human-readable reasons of the flags
    threshold: float
    bones: list[BonePatch]             # the seven bones in BONES order (patch arrays dropped)
    bone_probability: dict[str, float]  # bone → P(osteoporosis); NaN when missing
    mean_confidence: float             # mean segmentation confidence of the usable bones
    mean_entropy: float                # nats, over the image's area at the working resolution
    mean_mutual_info: float            # nats
    shape: tuple[int, int]
    pixel_spacing_mm: float | None
    image: np.ndarray = field(repr=False, default=None)     # for the overlay
    labels: np.ndarray = field(repr=False, default=None)
    entropy: np.ndarray = field(repr=False, default=None)
    model_probabilities: list[float] = field(default_factory=list)   # each probe model's image probability
    laterality: str = ""               # L | R | "" (the side the segmentation used; methods.segmentation.predict)
    laterality_source: str = ""        # given (DICOM ImageLaterality/Laterality) | detected | ""
    laterality_found: str = ""         # the side the segmenter finds when not told (detected, or checked) | ""

    @property
    def n_bones(self) -> int:
        return sum(not b.missing for b in self.bones)

    @property
    def probability_sd(self) -> float:
        """Standard deviation of the models' image probabilities (population form); NaN with one model."""
        p = [v for v in self.model_probabilities if np.isfinite(v)]
        return float(np.std(p)) if len(p) > 1 else float("nan")

    def row(self) -> dict[str, Any]:
        """One flat CSV row (bone columns p_<bone>, confidence_<bone>, missing_<bone> = reason or '')."""
        out: dict[str, Any] = {
            "name": self.name, "status": self.status, "decision": self.decision, "prediction": self.prediction,
            "probability": self.probability, "probability_sd": self.probability_sd, "threshold": self.threshold,
            "n_bones": self.n_bones,
            "flags": ";".join(self.flags), "mean_confidence": self.mean_confidence,
            "mean_entropy": self.mean_entropy, "mean_mutual_info": self.mean_mutual_info,
            "height": self.shape[0], "width": self.shape[1], "pixel_spacing_mm": self.pixel_spacing_mm,
            "laterality": self.laterality, "laterality_source": self.laterality_source,
            "laterality_found": self.laterality_found}
        out.update({f"p_{b.bone}": self.bone_probability[b.bone] for b in self.bones})
        out.update({f"confidence_{b.bone}": b.confidence for b in self.bones})
        out.update({f"missing_{b.bone}": b.reason if b.missing else "" for b in self.bones})
        return out

    def record(self) -> dict[str, Any]:
        """The nested JSON record (NaN is left to the writer)."""
        keys = ("name", "status", "decision", "prediction", "probability", "threshold", "flags", "notes")
        out: dict[str, Any] = {k: getattr(self, k) for k in keys}
        out["n_bones"] = self.n_bones
        out["models"] = {"probabilities": list(self.model_probabilities), "sd": self.probability_sd}
        out["segmentation"] = {"mean_confidence": self.mean_confidence, "mean_entropy": self.mean_entropy,
                               "mean_mutual_info": self.mean_mutual_info, "laterality": self.laterality,
                               "laterality_source": self.laterality_source, "laterality_found": self.laterality_found}
        out["image"] = {"height": self.shape[0], "width": self.shape[1], "pixel_spacing_mm": self.pixel_spacing_mm}
        out["bones"] = {b.bone: {"probability": self.bone_probability[b.bone], "confidence": b.confidence,
                                 "missing": b.missing, "reason": b.reason, "note": b.note,
                                 "bbox": list(b.bbox) if b.bbox else None, "area_px": b.area_px,
                                 "coverage": b.coverage} for b in self.bones}
        return out

    def overlay_png(self) -> bytes:
        return overlay_png(self)


def assess(bones: Sequence[BonePatch], shape: tuple[int, int], canvas: tuple[int, int], cfg: ScreenConfig,
           mean_entropy: float = float("nan"), reference_entropy: float | None = None,
           model_probabilities: Sequence[float] = (), threshold: float = 0.5,
           sides: tuple[str, str] = ("", ""), twelve_bit: bool = False,
           both_hands: bool = False) -> tuple[list[str], list[str], str]:
    """(flags, notes, status) of one radiograph from its bones, size and mean segmentation entropy
    (`reference_entropy`: the 99th percentile on the run's own images; None skips the check); `sides`:
    the side given and the side the segmenter found when not told ("" where there is none);
    `twelve_bit`: the file looks like 12-bit data in a 16-bit container; `both_hands`: the header says B."""
    flags: list[str] = []
    notes: list[str] = []
    usable = [b for b in bones if not b.missing]
    missing = [b for b in bones if b.missing]
    if missing:
        flags.append("missing-bones")
        notes.append("missing: " + ", ".join(f"{b.bone} ({b.reason})" for b in missing))
    if len(usable) < cfg.min_bones:
        flags.append("too-few-bones")
        notes.append(f"{len(usable)} usable bone(s) < {cfg.min_bones}: not a hand radiograph in the expected "
                     "position, or the segmentation failed; decision withheld")
    if not usable:
        flags.append("no-bones")
    conf = [b.confidence for b in usable if np.isfinite(b.confidence)]
    mean_conf = float(np.mean(conf)) if conf else float("nan")
    if usable and not mean_conf >= cfg.min_confidence:
        flags.append("low-confidence-segmentation")
        notes.append(f"mean segmentation confidence {mean_conf:.3f} < {cfg.min_confidence:g}")
    limit = cfg.min_side_fraction * min(canvas)
    if min(shape) < limit:
        flags.append("image-too-small")
        notes.append(f"short side {min(shape)} px < {limit:g} px ({cfg.min_side_fraction:g} × the model's "
                     f"working canvas {canvas[0]}×{canvas[1]})")
    if reference_entropy is not None and mean_entropy > cfg.ood_factor * reference_entropy:
        flags.append("out-of-distribution")
        notes.append(f"mean segmentation entropy {mean_entropy:.4f} nats > {cfg.ood_factor:g} × "
                     f"{reference_entropy:.4f} (99th percentile on the images the model was built with)")
    votes = {p > threshold for p in model_probabilities if np.isfinite(p)}
    if len(votes) > 1:
        flags.append("models-disagree")
        notes.append("the fold models disagree: image probabilities " +
                     ", ".join(f"{p:.3f}" for p in model_probabilities) + f" around the threshold {threshold:g}")
    given, found = sides
    if given and found and given != found:
        flags.append("laterality-mismatch")
        notes.append(f"the image is tagged as a {'left' if given == 'L' else 'right'} hand, but the model finds a "
                     f"{'left' if found == 'L' else 'right'} one when not told: check the tag (segmented as tagged)")
    if twelve_bit:
        flags.append("looks-12-bit")
        notes.append("a 16-bit file whose values all lie below 4096: likely 12-bit data, 16x too dark as read; "
                     "rescale it to the 16-bit range (x16) and screen it again")
    if both_hands:
        flags.append("both-hands")
        notes.append("the header's laterality is B (both hands on one image): one hand's bones cannot be cut "
                     "from it; decision withheld (export each hand as its own image)")
    if {"too-few-bones", "out-of-distribution", "both-hands"} & set(flags):
        status = "withheld"
    elif {"low-confidence-segmentation", "image-too-small", "models-disagree",
          "laterality-mismatch", "looks-12-bit"} & set(flags):
        status = "low-confidence"
    else:
        status = "ok"
    return flags, notes, status


def _header_side(rad: Any) -> str:
    """The DICOM header's ImageLaterality, else Laterality, as written (upper case; "" without one)."""
    header = getattr(rad, "header", None) or {}
    return str(header.get("ImageLaterality") or header.get("Laterality") or "").strip().upper()


def screen_radiographs(bundle: Any, radiographs: Sequence[Any], names: Sequence[str] | None = None, *,
                       batch_size: int = 8, config: ScreenConfig | None = None) -> list[Screening]:
    """Screen `radiographs` (objects with .pixels and .pixel_spacing_mm) with a loaded bundle."""
    cfg = config or ScreenConfig.from_dict(bundle.meta.get("screening", {}))
    cfg.validate()
    threshold = bundle.threshold if cfg.threshold is None else float(cfg.threshold)
    names = list(names) if names is not None else [f"image{i + 1}" for i in range(len(radiographs))]
    if len(names) != len(radiographs):
        raise BenchError(f"{len(names)} names for {len(radiographs)} radiographs")
    patch_cfg = bundle.patch_config
    reference = bundle.meta.get("reference", {}).get("mean_entropy", {}).get("q99")
    sides = [header_fields(getattr(r, "header", None) or {}).get("laterality") or "" for r in radiographs]
    preds = list(bundle.segment((r.pixels for r in radiographs), batch_size=batch_size, laterality=sides,
                                detect=[bool(s) and cfg.check_laterality for s in sides]))
    per_image: list[list[BonePatch]] = []
    patches: list[np.ndarray] = []
    for rad, pred in zip(radiographs, preds):
        bones = extract_bones(rad.pixels, pred.labels, pred.confidence, patch_cfg, rad.pixel_spacing_mm)
        patches += [b.patch for b in bones if not b.missing]
        per_image.append(bones)
    rows = iter(bundle.model_probabilities(np.stack(patches)) if patches else [])
    out = []
    for name, rad, pred, bones in zip(names, radiographs, preds, per_image):
        scored = {b.bone: next(rows) for b in bones if not b.missing}
        p_bone = {b.bone: float(scored[b.bone].mean()) if b.bone in scored else float("nan") for b in bones}
        for b in bones:
            b.patch = None
        model_p = [float(v) for v in np.mean(list(scored.values()), axis=0)] if scored else []
        flags, notes, status = assess(bones, rad.pixels.shape, bundle.canvas, cfg, float(pred.entropy.mean()),
                                      reference, model_p if len(model_p) > 1 else (), threshold,
                                      (pred.laterality if pred.laterality_source == "given" else "",
                                       getattr(pred, "detected", "") or ""),
                                      twelve_bit=isinstance(rad, Radiograph) and looks_12_bit(rad),
                                      both_hands=_header_side(rad) == "B")
        used = [p_bone[b.bone] for b in bones if not b.missing]
        prob = float(np.mean(used)) if used else float("nan")
        prediction = None if status == "withheld" or not used else int(prob > threshold)
        decision = "withheld" if prediction is None else ("osteoporosis" if prediction else "normal")
        conf = [b.confidence for b in bones if not b.missing and np.isfinite(b.confidence)]
        out.append(Screening(
            name=name, probability=prob, prediction=prediction, decision=decision, status=status, flags=flags,
            notes=notes, threshold=threshold, bones=bones, bone_probability=p_bone,
            mean_confidence=float(np.mean(conf)) if conf else float("nan"),
            mean_entropy=float(pred.entropy.mean()), mean_mutual_info=float(pred.mutual_info.mean()),
            shape=tuple(rad.pixels.shape), pixel_spacing_mm=rad.pixel_spacing_mm, image=rad.pixels,
            labels=pred.labels, entropy=pred.entropy, model_probabilities=model_p,
            laterality=pred.laterality, laterality_source=pred.laterality_source,
            laterality_found=getattr(pred, "detected", "") or ""))
    return out


def overlay_png(s: Screening, max_side: int = 1024, dpi: int = 100) -> bytes:
    """Radiograph with bone contours, boxes and per-bone probabilities | entropy map; PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    h, w = s.shape
    step = max(1, math.ceil(max(h, w) / max_side))          # display stride for large radiographs
    ys, xs = np.arange(0, h, step), np.arange(0, w, step)
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(11, 6.2))
    axes[0].imshow(s.image[::step, ::step], cmap="gray", vmin=0, vmax=1, extent=extent)
    shown = axes[1].imshow(s.entropy, cmap="magma", vmin=0, vmax=math.log(len(CLASS_NAMES)), extent=extent)
    labels = s.labels[::step, ::step]
    for rec in s.bones:
        colour = cmap(BONES[rec.bone] - 1)
        mask = labels == BONES[rec.bone]
        if mask.any() and not mask.all():
            for ax, c in ((axes[0], colour), (axes[1], "white")):
                ax.contour(xs, ys, mask.astype(np.float32), levels=[0.5], colors=[c], linewidths=0.8)
        if rec.bbox is not None and not rec.missing:
            x0, y0, x1, y1 = rec.bbox
            axes[0].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=0.9, ec=colour))
            axes[0].text(x0, y0 - 2, f"{rec.bone} {s.bone_probability[rec.bone]:.2f}", color="white", fontsize=7,
                         va="bottom", bbox={"facecolor": colour, "alpha": 0.7, "pad": 1, "lw": 0})
    prob = "n/a" if not np.isfinite(s.probability) else f"{s.probability:.3f}"
    axes[0].set_title(f"P(osteoporosis) {prob} (threshold {s.threshold:g}): {s.decision} [{s.status}]", fontsize=9)
    axes[1].set_title(f"segmentation uncertainty (entropy, mean {s.mean_entropy:.3f} nats)", fontsize=9)
    fig.colorbar(shown, ax=axes[1], fraction=0.046, label="nats")
    for ax in axes:
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.axis("off")
    text = [f"{s.name}: {s.n_bones}/7 bones, mean confidence {s.mean_confidence:.3f}"] + s.notes
    fig.text(0.01, 0.01, "\n".join(text), fontsize=7, va="bottom", family="monospace")
    fig.tight_layout(rect=(0, 0.04 + 0.025 * len(s.notes), 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
