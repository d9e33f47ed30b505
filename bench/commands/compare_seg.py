"""`bench compare-seg A... --vs B...`: two segmenters (one or more seeds each) on the same images, from
`bench evaluate-seg` folders, with the paired image bootstrap of bench.stats.per_image."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DEFAULT_METRICS = ("ged", "hungarian_iou", "dice_truth_mean", "dice_consensus_mean")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare-seg", help="paired bootstrap of two segmenters' per-image GED, IoU and Dice (bench evaluate-seg "
                            "outputs)",
        description="Compare segmenter A (the evaluate-seg folders of its seeds) with segmenter B on the same "
                    "images: per metric, the mean over images of A's seed mean minus B's, with a bootstrap that "
                    "resamples the images (paired) and each side's seeds, its percentile 95%% CI and p-value.")
    p.add_argument("a", nargs="+", type=Path, metavar="A", help="bench evaluate-seg output folders of A (its seeds)")
    p.add_argument("--vs", nargs="+", type=Path, required=True, metavar="B", help="the folders of B")
    p.add_argument("--metric", nargs="+", default=None, metavar="M",
                   help="images.csv columns (default: ged hungarian_iou dice_truth_mean dice_consensus_mean, those "
                        "present)")
    p.add_argument("--per-bone", action="store_true", help="also each bone's Dice (against the truth, else the "
                   "annotators' consensus)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap replicates (default: 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    p.add_argument("--out", type=Path, default=None, help="also write the table as JSON here")
    p.set_defaults(func=compare_seg_command)


def read_evaluation(folder: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    from bench.errors import BenchError

    try:
        summary = json.loads((folder / "summary.json").read_text())
        images = pd.read_csv(folder / "images.csv", dtype={"image_id": str}).set_index("image_id")
    except (OSError, ValueError) as exc:
        raise BenchError(f"{folder} is not a `bench evaluate-seg` output folder ({exc}); give the --out folders "
                         "of bench evaluate-seg") from None
    lacking = [k for k in ("segmenter", "data", "split") if not isinstance(summary, dict) or k not in summary]
    if lacking:
        raise BenchError(f"{folder / 'summary.json'} lacks {', '.join(lacking)}: not written by bench evaluate-seg; "
                         "run it again")
    return summary, images


def _side(folders: list[Path]) -> tuple[list[dict[str, Any]], list[pd.DataFrame]]:
    pairs = [read_evaluation(f) for f in folders]
    return [s for s, _ in pairs], [i for _, i in pairs]


def compare_seg_command(args: argparse.Namespace) -> int:
    from bench.data.format import BONES
    from bench.errors import BenchError
    from bench.stats.per_image import per_image_bootstrap

    summaries_a, images_a = _side(args.a)
    summaries_b, images_b = _side(args.vs)
    summaries, tables = summaries_a + summaries_b, images_a + images_b
    data = {(s["data"]["fingerprint"], s["split"]) for s in summaries}
    if len(data) > 1:
        raise BenchError("the folders evaluate different datasets or splits "
                         f"({', '.join(sorted(s['data']['path'] + ' ' + s['split'] for s in summaries))}); "
                         "compare evaluations of the same images")
    ids = set(tables[0].index)
    if any(set(t.index) != ids for t in tables):
        raise BenchError("the folders scored different images; rerun bench evaluate-seg with the same --data and "
                         "--split for all")
    order = sorted(ids)
    metrics = list(args.metric or [m for m in DEFAULT_METRICS if all(m in t.columns for t in tables)])
    if args.per_bone:
        ref = "truth" if all(f"dice_truth_{b}" in t.columns for t in tables for b in BONES) else "consensus"
        metrics += [f"dice_{ref}_{b}" for b in BONES]
    missing = [m for m in metrics if not all(m in t.columns for t in tables)]
    if missing:
        raise BenchError(f"{', '.join(missing)} not in every images.csv (columns: "
                         f"{', '.join(c for c in tables[0].columns if c not in ('split', 'laterality'))})")
    rows = []
    for metric in metrics:
        va = np.stack([t.loc[order, metric].to_numpy(dtype=float) for t in images_a], axis=1)
        vb = np.stack([t.loc[order, metric].to_numpy(dtype=float) for t in images_b], axis=1)
        r = per_image_bootstrap(metric, va, vb, n_boot=args.n_boot, seed=args.seed)
        rows.append({"metric": metric, "a": r.value_a, "b": r.value_b, "delta": r.delta, "ci_low": r.ci_low,
                     "ci_high": r.ci_high, "p_value": r.p_value,
                     "n_images": int((np.isfinite(va).all(1) & np.isfinite(vb).all(1)).sum())})
    def label(ss: list[dict[str, Any]]) -> str:
        return ", ".join(f"{s['segmenter'].get('entry') or Path(s['segmenter']['path']).parent.name}"
                         f"-seed{s['segmenter'].get('seed', 0)}" for s in ss)

    print(f"A: {label(summaries_a)}\nB: {label(summaries_b)}\n{len(order)} images ({summaries[0]['split']}) of "
          f"{summaries[0]['data']['path']}; delta = A - B, bootstrap over images and seeds ({args.n_boot} replicates)")
    print(f"{'metric':<22}{'A':>8}{'B':>8}{'delta':>9}   95% CI               p       n")
    for r in rows:
        print(f"{r['metric']:<22}{r['a']:8.4f}{r['b']:8.4f}{r['delta']:+9.4f}   [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]"
              f"  {r['p_value']:6.4f}  {r['n_images']}")
    if args.out:
        from bench.atomic import atomic_write_text
        from bench.predict import json_safe

        atomic_write_text(args.out, json.dumps(json_safe({"a": [str(f) for f in args.a], "b": [str(f) for f in args.vs],
                                                          "n_boot": args.n_boot, "seed": args.seed, "rows": rows}),
                                               indent=2))
    return 0
