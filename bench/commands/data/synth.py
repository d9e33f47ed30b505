"""`bench data synth`: generate a synthetic hand-radiograph phantom dataset (bench.data.phantom)."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth", help="generate a phantom dataset (public- or clinical-style hand radiographs)",
        description="Generate a ground-truthed synthetic hand-radiograph dataset mirroring the paper's "
                    "public (masks, no labels) or clinical (DXA T-scores and labels) set. "
                    "Same seed -> byte-identical files.")
    parser.add_argument("--preset", choices=("public", "clinical"), default="public",
                        help="dataset mirrored (default: public)")
    parser.add_argument("--profile", choices=("smoke", "quick", "paper"), default="smoke",
                        help="size: smoke (tiny, low resolution), quick, paper (full size) (default: smoke)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="dataset folder to create")
    parser.add_argument("--n", type=int, default=None, metavar="N",
                        help="number of images/subjects (default: the profile's)")
    parser.add_argument("--annotators", type=int, default=None, metavar="M",
                        help="annotator label maps per image, 1-4 (default: 3)")
    parser.add_argument("--head-exclusion", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="annotators' probabilities of leaving the distal heads out, spread over "
                             "LOW..HIGH (default: 0.05 0.35; the phantom-1.0 generator used 0.1 0.7)")
    parser.add_argument("--prevalence", type=float, default=None, metavar="P",
                        help="target fraction with T-score < -2.5 (default: 0.30)")
    parser.add_argument("--signal", type=float, default=None, metavar="S",
                        help="signal strength of the latent bone parameters; 1.0 gives an oracle "
                             "AUC of about 0.90, 0 no bone-density signal (default: 1.0). Age and sex, which "
                             "predict the label, still shape the bones at 0 (a bone's width grows with age), "
                             "so an image model can beat chance there through them")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DIR")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="processes rendering images (default: all cores, one per 32 images at least)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from bench.data.phantom import PhantomConfig, synthesize
    from bench.data.phantom.writer import default_workers

    cfg = PhantomConfig.for_preset(args.preset, args.profile)
    changes = {k: v for k, v in (("n_images", args.n), ("annotators", args.annotators),
                                 ("prevalence", args.prevalence), ("signal", args.signal),
                                 ("head_exclusion", args.head_exclusion and tuple(args.head_exclusion)))
               if v is not None}
    cfg = cfg.replace(**changes)
    workers = default_workers(cfg.n_images) if args.workers is None else args.workers
    out = synthesize(args.out, seed=args.seed, config=cfg, overwrite=args.overwrite, progress=True, workers=workers)
    meta = json.loads((out / "dataset.json").read_text())
    print(f"wrote {meta['n_images']} {cfg.preset} images ({cfg.height}x{cfg.width} px, "
          f"{cfg.pixel_spacing_mm:g} mm/px, {cfg.annotators} annotators) to {out}")
    print(f"oracle AUC (latent bone parameters, {meta['oracle_auc_n_subjects']} subjects): "
          f"{meta['oracle_auc']:.3f} at signal {cfg.signal:g}")
    return 0
