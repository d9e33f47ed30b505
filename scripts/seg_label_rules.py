"""Which label map should a trained MoSE U-Net hand on? Dice of several label rules on a phantom split.

    python scripts/seg_label_rules.py SEGMENT_DIR DATASET_DIR [--split test] [--device cuda]

SEGMENT_DIR is a `segment` stage folder (its model.pt), DATASET_DIR the `seg` phantom it was trained
on (truth/ masks needed). For every image of the split the model runs once, as `predict_many` does
(one latent draw shared by the images, the compact form: K x D samples weighted pi_k / D, D the
stage's `predict_draws` from the eval.json of its companion `segment_eval` (found in the same cache by
its input key); a canonical-laterality model sees left hands mirrored and
its maps are mirrored back, images of unknown side are left out); each rule's
canvas probabilities go through `predict._finish`, the stage's own crop, upsampling to native size and
argmax. Rules:

    mean        the mixture mean sum_n w_n p_n (what the segment stage writes; its Dice vs truth must
                equal eval.json's, printed beside it as a check)
    top-expert  the mean of the samples of the expert with the largest pi_k(x)
    expert-k    the mean of expert k's samples, whatever pi says (one row per expert)
    vote        the weighted vote of the samples' hard maps

Printed per rule: mean Dice per bone against the exact truth, against each annotator and the
annotators' beta-weighted consensus; and the mean routing weights pi_k over the split (a collapsed
mixture has one pi_k near 1). A diagnostic for issue 4 (the quick MoSE's label maps scored 0.85-0.93
Dice against the truth where the single decoder's scored 0.97-0.98).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.data.format import Dataset
from bench.errors import BenchError
from methods.segmentation.agreement import consensus
from methods.segmentation.data import image_to_canvas, manifest_sides
from methods.segmentation.evaluate import dice_per_bone
from methods.segmentation.predict import _autocast, _finish, load_model
from methods.segmentation.scoring import truth_mask


def native_labels(probs: torch.Tensor, pl, log_pi: torch.Tensor, mirrored: bool) -> np.ndarray:
    """C x H x W canvas probabilities -> native uint8 labels, as the stage labels the mixture mean
    (`mirrored`: the canvas held the image's mirror, a left hand for a canonical-laterality model)."""
    no_map = torch.zeros_like(probs[0])              # the uncertainty maps play no part in the labels
    return _finish(probs, no_map, no_map, pl, log_pi, mirrored).labels


def rule_probs(probs: torch.Tensor, weights: torch.Tensor, log_pi: torch.Tensor, experts: int) -> dict[str, torch.Tensor]:
    """N x C x H x W sample probabilities of one image -> C x H x W probabilities per rule."""
    n, c = probs.shape[:2]
    s = n // experts
    per_expert = probs.reshape(experts, s, *probs.shape[1:]).mean(dim=1)            # K x C x H x W
    out = {"mean": torch.einsum("n,nchw->chw", weights, probs),
           "top-expert": per_expert[int(log_pi.argmax())],
           "vote": torch.einsum("n,nchw->chw", weights, F.one_hot(probs.argmax(1), c).permute(0, 3, 1, 2).float())}
    out.update({f"expert-{k}": per_expert[k] for k in range(experts)})
    return out


def companion_eval_json(segment_dir: Path) -> Path | None:
    """The eval.json that the `segment_eval` stage wrote for this segment stage folder (None: none yet)."""
    for marker in sorted((segment_dir.parent.parent / "segment_eval").glob("*/_stage.json")):
        if json.loads(marker.read_text())["material"].get("inputs", {}).get("segment") == segment_dir.name:
            found = marker.parent / "eval.json"
            return found if found.is_file() else None
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("segment_dir", type=Path)
    ap.add_argument("dataset_dir", type=Path)
    ap.add_argument("--split", default="test")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    device = torch.device(args.device)
    model = load_model(args.segment_dir / "model.pt", device=device)
    if model.spec.kind != "mose":
        raise SystemExit(f"{args.segment_dir} holds a {model.spec.kind} model; the rules compare MoSE samples")
    ds = Dataset.open(args.dataset_dir)
    ids = [i for i in ds.image_ids if ds.row(i)["split"] == args.split]
    sides = manifest_sides(ds)
    canonical = bool(getattr(model.spec, "canonical_laterality", False))
    unsided = [i for i in ids if canonical and not sides.get(i)]
    ids = [i for i in ids if i not in unsided]      # the stage would detect their side; left out here
    spec, canvas = model.spec, tuple(model.spec.canvas)
    gen = torch.Generator().manual_seed(args.seed)
    stage_eval = companion_eval_json(args.segment_dir)
    report = json.loads(stage_eval.read_text()) if stage_eval else {}
    draws = int(report.get("predict_draws") or spec.samples)     # the stage's draws per expert
    eps = torch.randn(spec.experts, draws, spec.latent, generator=gen).to(device)          # as predict_many
    model.eval()
    rows: dict[str, dict[str, list[dict]]] = {}
    pis = []
    for image_id in ids:
        truth = truth_mask(ds, image_id)
        if truth is None:
            raise SystemExit(f"{args.dataset_dir} has no truth mask for {image_id}: a phantom is needed")
        mirrored = canonical and sides[image_id] == "L"     # left hands reach the model mirrored (predict_many)
        image = ds.image(image_id)
        x, pl = image_to_canvas(image[:, ::-1] if mirrored else image, canvas)
        with torch.no_grad(), _autocast(device):
            out = model(x[None].to(device), eps=eps)
        with torch.no_grad():
            probs, w, log_pi = out.probs[0], out.weights[0].float(), out.log_pi[0].float()
        pis.append(log_pi.exp().cpu().numpy())
        masks = ds.masks(image_id)
        refs = {"truth": truth, **masks, "consensus": consensus(masks, ds.annotator_weights(image_id))}
        for rule, p in rule_probs(probs, w, log_pi, spec.experts).items():
            labels = native_labels(p, pl, log_pi, mirrored)
            for ref, mask in refs.items():
                rows.setdefault(rule, {}).setdefault(ref, []).append(dice_per_bone(labels, mask))
    print(f"{args.segment_dir.name}: {len(ids)} {args.split} images, canvas {canvas[0]}x{canvas[1]}, "
          f"K={spec.experts}, S={spec.samples}, {draws} draws per expert; "
          f"mean pi_k {np.round(np.mean(pis, axis=0, dtype=np.float64), 3).tolist()}, "
          f"mean max_k pi_k {np.mean(np.max(pis, axis=1)):.3f}"
          + (f"; {len(unsided)} images of unknown side left out" if unsided else ""))
    if report:
        split = report["splits"].get(args.split, {})
        print(f"  eval.json dice_truth (the 'mean' rule must match): "
              f"{ {k: round(v, 3) for k, v in (split.get('dice_truth') or {}).items()} }")
    for rule, refs in rows.items():
        for ref, table in refs.items():
            bones = table[0].keys()
            means = {b: round(float(np.nanmean([r[b] for r in table])), 3) for b in bones}
            means["mean"] = round(float(np.nanmean(list(means.values()))), 3)
            print(f"  {rule:11s} vs {ref:9s} {means}")


if __name__ == "__main__":
    try:
        main()
    except BenchError as exc:       # bad input: the message, exit 2, no traceback (as the bench CLI)
        print(f"seg_label_rules: error: {exc}", file=sys.stderr)
        sys.exit(2)
