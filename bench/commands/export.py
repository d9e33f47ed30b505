"""`bench export RESULTS_PATH --out model.osteo`: pack a trained full-method run for `bench predict`."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="bundle a trained run (segmentation, encoder, probe) into one .osteo file",
                              description="Bundle a trained full-method run for `bench predict`. A pooled "
                              "cross-validation run (results/<suite>-cv<K>/<entry>/seed<k>) gives the ensemble of "
                              "its K fold models: each scores every bone, and their probabilities are averaged.")
    p.add_argument("run", type=Path, metavar="RESULTS_PATH",
                   help="a run folder results/<suite>/<entry>/seed<k> (or an entry folder with one seed); "
                   "results/<suite>-cv<K>/... for the fold ensemble")
    p.add_argument("--out", type=Path, default=None, help="bundle file to write (default: <entry>-seed<k>.osteo)")
    p.add_argument("--device", default="cpu",
                   help="cpu | cuda | auto: where the probe's feature statistics are recomputed (default: cpu)")
    p.set_defaults(func=export_command)


def export_command(args: argparse.Namespace) -> int:
    from bench.hardware import resolve_device
    from methods.bundle import models_of, read_meta
    from methods.export import export_bundle, find_run

    run = find_run(args.run)
    out = args.out or Path(f"{run.parent.name}-{run.name}.osteo")
    path = export_bundle(run, out, resolve_device(args.device))
    meta, _ = read_meta(path)
    src = meta["source"]
    models = models_of(meta)
    folds = f", ensemble of {len(models)} fold models" if len(models) > 1 else ""
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): entry {src['entry']} seed {src['seed']} "
          f"(suite {src['suite']}){folds}, encoder {meta['encoder']['name']}, bundle format {meta['format_version']}, "
          f"osteobench {meta['package_version']}")
    print(f"screen radiographs with: bench predict {path} IMAGES_OR_FOLDERS... --out predictions/")
    return 0
