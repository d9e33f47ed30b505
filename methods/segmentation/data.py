"""Segmentation data on the device: images, every annotator's label map and beta at the working size.

Conventions:
* Working canvas: ``rows = working_size``; ``cols`` = rows x the canvas aspect (width / height;
  by default the median over up to 32 training images), rounded up to a multiple of 8. An image is
  scaled by min(rows / h, cols / w) - aspect kept - and centred on the canvas; the rest is zero
  (dark, i.e. background). Images are resized with antialiased bilinear interpolation, label maps
  with nearest neighbour. :class:`Placement` remembers where an image went, to map predictions back.
* Annotators: the union of the annotator names (or those named in the config), sorted; an image
  lacking one gets an all-background map with beta 0. beta is renormalised to sum to 1 over the
  annotators used. Images without any used annotation are left out of training.
* Augmentation (:func:`augment`): batched on the device with one affine_grid / grid_sample per
  batch - independent horizontal and vertical flips (probabilities ``flip_p`` and ``vflip_p``;
  class ids are anatomical so flips keep them valid), a rotation uniform in +-``rotate_deg`` about the canvas
  centre and an isotropic scale uniform in 1 +- ``scale_range``; bilinear for the image, nearest for
  labels, zeros (background) outside. No per-sample host work.
* Laterality (``segmentation.canonical_laterality``): when on, an image whose manifest says L (a left
  hand) is mirrored, with its masks, to look like a right hand before it reaches the canvas, and
  only images of unknown laterality are flipped at random; the model then never has to tell a left
  hand from a right one (see methods.segmentation.config). :attr:`SegData.mirrored` records which.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bench.data.format import Dataset
from bench.errors import BenchError
from methods.affine import affine_grid

if TYPE_CHECKING:
    from methods.segmentation.config import SegmentationConfig

ASPECT_SAMPLE = 32   # training images read to choose the canvas aspect
ALIGN = 8            # canvas columns are a multiple of this


@dataclass(frozen=True)
class Placement:
    """Where a native h x w image sits on the canvas: rows top..top+h_c, cols left..left+w_c."""

    native: tuple[int, int]     # (h, w) of the original image
    top: int
    left: int
    size: tuple[int, int]       # (h_c, w_c) on the canvas


def place(shape: tuple[int, int], canvas: tuple[int, int]) -> Placement:
    """Aspect-preserving fit of an image of `shape` into `canvas`, centred."""
    h, w = int(shape[0]), int(shape[1])
    rows, cols = canvas
    scale = min(rows / h, cols / w)
    hc, wc = max(1, min(rows, round(h * scale))), max(1, min(cols, round(w * scale)))
    return Placement((h, w), (rows - hc) // 2, (cols - wc) // 2, (hc, wc))


def choose_canvas(dataset: Dataset, image_ids: Sequence[str], working_size: int, aspect: float = 0.0) -> tuple[int, int]:
    """(rows, cols) of the working canvas (see the module docstring)."""
    if aspect <= 0.0:
        ids = sorted(image_ids)[:ASPECT_SAMPLE]
        if not ids:
            raise BenchError("no training images to size the working canvas from; "
                             "set segmentation.canvas_aspect or add images to the train split")
        aspect = float(np.median([(lambda a: a.shape[1] / a.shape[0])(dataset.image(i)) for i in ids]))
    cols = int(math.ceil(working_size * aspect / ALIGN) * ALIGN)
    return working_size, max(ALIGN, cols)


def side_of(value: object) -> str:
    """A manifest laterality as "L", "R" or "" (unknown: blank, NaN, B, U)."""
    side = str(value).strip().upper() if isinstance(value, str) else ""
    return side if side in ("L", "R") else ""


def manifest_sides(dataset: Dataset) -> dict[str, str]:
    """image_id -> "L", "R" or "" from the manifest's laterality column (:func:`side_of`)."""
    man = dataset.manifest
    return dict(zip(man["image_id"].astype(str), (side_of(v) for v in man["laterality"])))


def image_to_canvas(image: np.ndarray, canvas: tuple[int, int]) -> tuple[torch.Tensor, Placement]:
    """float32 H x W in [0, 1] -> (1 x rows x cols tensor, placement)."""
    if image.ndim != 2:
        raise BenchError(f"expected a single-channel H x W image, got shape {image.shape}")
    pl = place(image.shape, canvas)
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    t = F.interpolate(t, size=pl.size, mode="bilinear", align_corners=False, antialias=True)
    out = torch.zeros(1, *canvas)
    out[:, pl.top:pl.top + pl.size[0], pl.left:pl.left + pl.size[1]] = t[0].clamp(0.0, 1.0)
    return out, pl


def labels_to_canvas(labels: np.ndarray, pl: Placement) -> torch.Tensor:
    """uint8 label map (native) -> rows x cols uint8 tensor on the canvas (nearest neighbour)."""
    if tuple(labels.shape) != pl.native:
        raise BenchError(f"label map of shape {labels.shape} does not match its image {pl.native}")
    t = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.uint8))[None, None].float()
    t = F.interpolate(t, size=pl.size, mode="nearest-exact")[0, 0].to(torch.uint8)
    return t


@dataclass
class SegData:
    """One split of the `seg` dataset at the working size, resident on a device."""

    image_ids: list[str]
    images: torch.Tensor        # n x 1 x rows x cols float32 in [0, 1]
    labels: torch.Tensor        # n x M x rows x cols uint8 (annotator order = `annotators`)
    beta: torch.Tensor          # n x M float32, rows sum to 1 (0 for a missing annotation)
    annotators: list[str]
    placements: list[Placement]
    canvas: tuple[int, int]
    mirrored: torch.Tensor | None = None    # n bool: stored mirrored (a left hand, canonical laterality)
    flippable: torch.Tensor | None = None   # n bool: may be flipped left-right by augmentation

    def __len__(self) -> int:
        return len(self.image_ids)


def load_split(dataset: Dataset, splits: Sequence[str], canvas: tuple[int, int], device: torch.device | str = "cpu",
               annotators: Sequence[str] = (), allow_empty: bool = False, canonical: bool = False,
               image_ids: Sequence[str] | None = None, sides: Mapping[str, str] | None = None) -> SegData:
    """Annotated images of `splits` (or the manifest's `image_ids`, in their order), resized to `canvas`
    and moved to `device`; `sides`: image id -> L / R, where known otherwise than from the manifest.

    Images without a used annotation are skipped; finding none raises BenchError unless `allow_empty`.
    `canonical`: left hands are stored mirrored and only images of unknown side are flippable
    (module docstring); otherwise every image is stored as it is and flippable.
    """
    man = dataset.manifest
    ids = (man.loc[man["split"].isin(list(splits)), "image_id"].astype(str).tolist() if image_ids is None
           else [str(i) for i in image_ids])
    sides = manifest_sides(dataset) if sides is None else sides
    known = sorted(set(dataset.annotators["annotator"].astype(str))) if len(dataset.annotators) else []
    if annotators:
        missing = [a for a in annotators if a not in known]
        if missing:
            raise BenchError(f"segmentation.annotators names {', '.join(missing)}, which "
                             f"{dataset.root / 'annotators.csv'} does not list (it has: {', '.join(known) or 'none'})")
        names = list(annotators)
    else:
        names = known
    images, labels, betas, kept, places, mirrored, flippable = [], [], [], [], [], [], []
    for image_id in ids:
        weights = {a: w for a, w in dataset.annotator_weights(image_id).items() if a in names}
        total = sum(weights.values())
        if total <= 0:
            continue
        side = sides.get(image_id, "")
        mirror = canonical and side == "L"
        image = dataset.image(image_id)
        img, pl = image_to_canvas(image[:, ::-1] if mirror else image, canvas)
        masks = dataset.masks(image_id)
        lab = torch.zeros(len(names), *canvas, dtype=torch.uint8)
        beta = torch.zeros(len(names))
        for j, a in enumerate(names):
            if a in weights:
                mask = masks[a][:, ::-1] if mirror else masks[a]
                lab[j, pl.top:pl.top + pl.size[0], pl.left:pl.left + pl.size[1]] = labels_to_canvas(mask, pl)
                beta[j] = weights[a] / total
        mirrored.append(mirror)
        flippable.append(not canonical or not side)
        images.append(img)
        labels.append(lab)
        betas.append(beta)
        kept.append(image_id)
        places.append(pl)
    if not kept and not allow_empty:
        raise BenchError(f"no image of split(s) {', '.join(splits)} in {dataset.root} has an annotation "
                         f"by {', '.join(names) or 'any annotator'}; the segmentation model needs masks "
                         "(masks/<image_id>/<annotator>.png listed in annotators.csv)")
    m = len(names)
    rows, cols = canvas
    stack = (lambda xs, shape, dt: torch.stack(xs) if xs else torch.zeros(0, *shape, dtype=dt))
    return SegData(kept, stack(images, (1, rows, cols), torch.float32).to(device),
                   stack(labels, (m, rows, cols), torch.uint8).to(device),
                   stack(betas, (m,), torch.float32).to(device), names, places, canvas,
                   torch.tensor(mirrored, dtype=torch.bool, device=device),
                   torch.tensor(flippable, dtype=torch.bool, device=device))


def training_splits(seg: Dataset, cfg: "SegmentationConfig", device: torch.device | str = "cpu"
                    ) -> tuple[tuple[int, int], SegData, SegData]:
    """(canvas, train, val) as a segmentation training reads them: the canvas chosen on the train
    images, the configured annotators and laterality. The one loader of the segment stage and of
    `bench tune --target seg`, so a trial trains exactly as the stage does (val may be empty)."""
    train_ids = seg.manifest.loc[seg.manifest["split"] == "train", "image_id"].astype(str).tolist()
    canvas = choose_canvas(seg, train_ids, cfg.working_size, cfg.canvas_aspect)
    kw = dict(annotators=cfg.annotator_list, canonical=cfg.canonical_laterality)
    train = load_split(seg, ["train"], canvas, device, **kw)
    val = load_split(seg, ["val"], canvas, device, allow_empty=True, **kw)
    return canvas, train, val


def one_hot(labels: torch.Tensor, classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """B x M x H x W integer labels -> B x M x C x H x W one-hot."""
    return F.one_hot(labels.long(), classes).permute(0, 1, 4, 2, 3).to(dtype)


def augment(images: torch.Tensor, labels: torch.Tensor, *, flip_p: float = 0.5, vflip_p: float | None = None,
            rotate_deg: float = 10.0, scale_range: float = 0.1, generator: torch.Generator | None = None,
            flippable: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips, rotation and scale of a batch (B x 1 x H x W float, B x M x H x W uint8).

    `flippable` (B bool): only these images may be flipped (default: all), left-right or upside down: a
    vertical flip is a reflection too (a right hand upside down is a left hand), so an image of known
    side under canonical laterality keeps its chirality. The random draws do not depend on it."""
    b, _, h, w = images.shape
    dev = images.device
    u = torch.rand(b, 4, generator=generator, device=dev)
    hflip = u[:, 0] < flip_p
    fx = torch.where(hflip if flippable is None else hflip & flippable, -1.0, 1.0)
    vflip = u[:, 1] < (flip_p if vflip_p is None else vflip_p)
    fy = torch.where(vflip if flippable is None else vflip & flippable, -1.0, 1.0)
    ang = (2 * u[:, 2] - 1) * math.radians(rotate_deg)
    sc = 1.0 + (2 * u[:, 3] - 1) * scale_range
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    # output pixel (x, y) samples input pixel A @ (x, y) (pixel units about the centre),
    # A = R(ang) diag(fx, fy) / sc, converted to normalised coordinates (x / (W/2), y / (H/2)).
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0] = cos * fx
    theta[:, 0, 1] = -sin * fy * (h / w)
    theta[:, 1, 0] = sin * fx * (w / h)
    theta[:, 1, 1] = cos * fy
    grid = affine_grid(theta, h, w)
    img = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    lab = F.grid_sample(labels.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return img, lab.round().to(torch.uint8)
