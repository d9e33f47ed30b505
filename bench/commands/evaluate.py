"""`bench evaluate BUNDLE --data DATASET`: external validation of an exported model (bench.external)."""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="external validation: an exported bundle on a labelled dataset, as a run folder",
        description="Screen every labelled radiograph of a dataset with a bundle (`bench export`), aggregate per "
                    "subject as the benchmark does (eq. 10) and write the run folder results/<name>/<entry>/seed<k> "
                    "(metrics, subject predictions, images.csv), so bench show and bench compare read it.")
    p.add_argument("bundle", type=Path, help="a .osteo file written by `bench export`")
    p.add_argument("--data", type=Path, required=True, help="a labelled dataset folder (bench data import / synth)")
    p.add_argument("--name", default="external", help="results sub-folder, like a suite (default: external)")
    p.add_argument("--entry", default=None, help="entry folder name (default: the bundle's source entry)")
    p.add_argument("--split", default="all", help="all: every labelled subject is a test subject (default); or one "
                   "split of the dataset's manifest, e.g. test")
    p.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the bundle's, 0.5)")
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: ./results)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--batch-size", type=int, default=8, help="radiographs per forward pass (default: 8)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite under --results)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--overwrite", action="store_true", help="replace a run folder holding an evaluation on another "
                   "dataset (a rerun on the same dataset replaces it anyway)")
    p.add_argument("--exclude-seen", action="store_true", help="leave out every subject with an image the bundle's "
                   "models were fitted on (recognised by its pixels wherever it lies; bench.data.digests)")
    p.set_defaults(func=evaluate_command)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def training_folders(meta: dict) -> dict[Path, str]:
    """The dataset folders a bundle was trained on (its source's `data`; older bundles: the config's
    ``data.seg``/``data.cls``), resolved, with their role."""
    recorded = (meta.get("source") or {}).get("data") or (meta.get("config") or {}).get("data") or {}
    return {Path(path).resolve(): role for role, path in recorded.items()
            if role in ("seg", "cls") and isinstance(path, str) and path}


def warn_seen(images, data: Path, excluded: bool) -> None:
    """Say how many of the evaluated radiographs the bundle's models had seen, and where (images.csv
    lists them: columns seen, seen_as, excluded)."""
    def counts(kind: str) -> str:
        where = images.loc[images["seen"] == kind, "seen_as"].value_counts()
        return ", ".join(f"{place} {n}" for place, n in sorted(where.items()))

    n_fit, n_test = int((images["seen"] == "fit").sum()), int((images["seen"] == "held_out").sum())
    if n_fit:
        subjects = images.loc[images["seen"] == "fit", "subject_id"].nunique()
        what = (f"bench: warning: {n_fit} of {len(images)} radiographs of {data} are, pixel for pixel, images the "
                f"bundle's models were fitted on ({counts('fit')}): ")
        print(what + (f"their {subjects} subject(s) are left out (--exclude-seen)" if excluded else
                      f"their {subjects} subject(s) are not external; --exclude-seen leaves them out"), file=sys.stderr)
    if n_test:
        print(f"bench: note: {n_test} of {len(images)} radiographs of {data} are the source run's own test images "
              f"({counts('held_out')}): never fitted on, but not an external cohort", file=sys.stderr)


def evaluate_command(args: argparse.Namespace) -> int:
    from bench import results as store
    from bench.atomic import writable
    from bench.data.format import Dataset
    from bench.executors.locking import file_lock
    from bench.external import check_replaceable, evaluate_dataset
    from bench.fingerprint import dataset_fingerprint
    from bench.hardware import resolve_device
    from bench.predict import screening_options
    from bench.predict_journal import Journal, journal_key
    from methods.bundle import load_bundle

    dataset = Dataset.open(args.data)                    # BenchError when it is not a dataset
    bundle = load_bundle(args.bundle, resolve_device(args.device))
    source = bundle.meta["source"]
    entry = args.entry or str(source.get("entry") or "bundle")
    seed = int(source.get("seed") or 0)
    fingerprint = dataset_fingerprint(Path(args.data))
    run_dir = store.run_dir(args.results, args.name, entry, seed)
    check_replaceable(run_dir, fingerprint, args.overwrite)
    training = bundle.meta.get("training_images")
    role = training_folders(bundle.meta).get(Path(args.data).resolve())
    unrecorded = {Path(f).resolve() for f in training.get("unrecorded", [])} if isinstance(training, dict) else None
    if role and args.split != "test" and (unrecorded is None or Path(args.data).resolve() in unrecorded):
        print(f"bench: warning: {args.data} is the `{role}` dataset the bundle was trained on; its train and val "
              "subjects are not external: --split test scores its held-out subjects alone", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\r{done}/{total} radiographs", end="" if done < total else "\n", file=sys.stderr)

    journal = Journal(run_dir, journal_key(bundle, {"kind": "evaluate", "screening": screening_options(bundle)}))
    writable(journal.root, lambda: None, run_dir)
    with file_lock(journal.lock, waiting=f"evaluating into {run_dir}"):
        journal.open()
        result = evaluate_dataset(bundle, dataset, split=args.split, threshold=args.threshold,
                                  batch_size=args.batch_size, exclude_seen=args.exclude_seen, progress=progress,
                                  journal=journal)
        warn_seen(result.images, args.data, args.exclude_seen)
        path = write_result(args, result, bundle, entry, seed, fingerprint)
        journal.remove()
    summarise(args, result, entry, path)
    return 0


def write_result(args: argparse.Namespace, result, bundle, entry: str, seed: int, fingerprint: str) -> Path:
    """The run folder (and its MLflow run) of an evaluation."""
    from bench import __version__
    from bench import results as store
    from bench.external import images_csv
    from bench.fingerprint import stable_hash
    from methods.bundle import models_of

    source = bundle.meta["source"]
    bundle_sha = _sha256(args.bundle)
    config = {"suite": args.name, "entry": entry, "seed": seed, "version": __version__, "kind": "external",
              "bundle": {"path": str(Path(args.bundle).resolve()), "sha256": bundle_sha, "source": source,
                         "models": len(models_of(bundle.meta)), "format_version": bundle.meta["format_version"]},
              "data": {"cls": str(Path(args.data).resolve()), "fingerprint": fingerprint},
              "split": args.split, "threshold": result.threshold, "exclude_seen": args.exclude_seen,
              "config": bundle.meta.get("config", {})}
    config["run_key"] = stable_hash({k: config[k] for k in ("bundle", "data", "split", "threshold")
                                     + (("exclude_seen",) if args.exclude_seen else ())})[:16]
    path = store.write_run(args.results, args.name, entry, seed, config=config, metrics=result.metrics,
                           predictions=result.subjects, extra_files={"images.csv": images_csv(result)})
    if not args.no_mlflow:
        from bench.tracking import Tracker

        tracker = Tracker(args.results, uri=args.tracking_uri)
        tracker.entry_run(args.name, entry)
        tracker.log_seed_run(args.name, entry, seed, params=config, metrics=result.metrics,
                             config_hash=config["run_key"], artifacts=[path / store.CONFIG_FILE,
                                                                       path / store.METRICS_FILE,
                                                                       path / store.PREDICTIONS_FILE])
    return path


def summarise(args: argparse.Namespace, result, entry: str, path: Path) -> None:
    """The evaluation's numbers, on stdout."""
    from bench.operating import rates
    from bench.subgroups import auc_interval

    split = next(k for k in result.metrics if k != "extra")
    m, extra = result.metrics[split], result.metrics["extra"]
    ci = auc_interval(result.subjects[result.subjects["split"] == split])
    print(f"{entry} (bundle {args.bundle}) on {args.data}: {int(m['n'])} subjects ({int(m['n_pos'])} positive, "
          f"{int(m['n_unscored'])} without a usable bone) from {int(extra['images'])} radiographs "
          + (f"({int(extra['subjects_excluded'])} subject(s) the bundle was fitted on left out) "
             if extra["subjects_excluded"] else "") +
          f"({int(extra['images_withheld'])} withheld, {int(extra['images_low_confidence'])} low-confidence by the "
          "screening flags; every usable bone counts)")
    scored = result.subjects[(result.subjects["split"] == split) & result.subjects["p_pos"].notna()]
    r = rates(scored["y_true"].astype(int).to_numpy(), scored["p_pos"].to_numpy() > result.threshold)
    print(f"  AUC {m['auc']:.3f} (DeLong 95% CI {ci}), at threshold {result.threshold:g}: sensitivity "
          f"{m['recall']:.3f} ({r['sensitivity 95% CI']}), specificity {m['specificity']:.3f} "
          f"({r['specificity 95% CI']}), F1 {m['f1']:.3f}, accuracy {m['accuracy']:.3f}; "
          f"calibration slope {m['calibration_slope']:.2f}, intercept {m['calibration_intercept']:.2f}")
    print(f"  run folder {path}; `bench show {path}` (--by sex, --metrics ...)")
