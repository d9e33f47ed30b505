"""External validation of a segmenter (methods.segmentation.external, `bench evaluate-seg`): it scores a
dataset exactly as the segment stage scores its own test split."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.data.format import BONES, Dataset, write_manifest
from bench.data.imageio import read_label_map
from bench.errors import BenchError
from bench.stage import derive_seed
from methods.segmentation.evaluate import dice_per_bone
from methods.segmentation.external import Segmenter, annotated_ids, evaluate_segmenter, open_segmenter

TINY_SEG = {"run.device": "cpu", "segmentation.working_size": 64, "segmentation.epochs": 6,
            "segmentation.figures": 0, "segmentation.eval_splits": "test", "segmentation.predict_draws": 3}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny MoSE and single decoder trained by the segment stage, each in a run folder of the results
    layout (results/s/<entry>/seed0/config.json naming its cache/segment/<key>)."""
    import methods.segmentation.config  # noqa: F401  (registers the section)
    from bench.config import resolve
    from bench.data.phantom import synthesize
    from bench.stage import run_stage
    from methods.pipeline import SEGMENT

    root = tmp_path_factory.mktemp("external")
    public = synthesize(root / "public", "public", "smoke", seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {"seg": Dataset.open(public), "root": root}
    try:
        for kind in ("mose", "single"):
            config = resolve("smoke", sets={**TINY_SEG, "segmentation.model": kind})
            key = f"tiny{kind}"
            with warnings.catch_warnings():             # a 6-epoch model has not learnt every bone
                warnings.simplefilter("ignore", UserWarning)
                trained_dir = run_stage(SEGMENT, cache_root=root / "results" / "cache", key=key, material={},
                                        config=config, seed=0, inputs={}, datasets={"seg": out["seg"]},
                                        device=torch.device("cpu"))
                run_stage(SEGMENT.companions[0], cache_root=root / "results" / "cache", key=key, material={},
                          config=config, seed=0, inputs={"segment": trained_dir}, datasets={"seg": out["seg"]},
                          device=torch.device("cpu"))
            run = root / "results" / "s" / f"seg-{kind}" / "seed0"
            run.mkdir(parents=True)
            (run / "config.json").write_text(json.dumps({"suite": "s", "entry": f"seg-{kind}", "seed": 0,
                                                         "stages": {"segment": key, "segment_eval": key},
                                                         "config": config.to_dict()}))
            out[kind] = run
        yield out
    finally:
        torch.set_num_threads(threads)


def stage_dir(run: Path, stage: str = "segment") -> Path:
    key = json.loads((run / "config.json").read_text())["stages"][stage]
    return run.parent.parent.parent / "cache" / stage / key


@pytest.mark.parametrize("kind", ["mose", "single"])
def test_the_stages_test_split_scores_as_its_eval_json(trained, kind):
    seg = open_segmenter(trained[kind])
    assert (seg.draws, seg.eval_samples, seg.source["entry"]) == (3, 0, f"seg-{kind}")
    result = evaluate_segmenter(seg, trained["seg"], split="test", seed=derive_seed(0, "segmentation", "eval", "test"))
    expected = json.loads((stage_dir(trained[kind], "segment_eval") / "eval.json").read_text())["splits"]["test"]
    got = result.summary
    assert got["n_images"] == expected["n_images"] == 4
    for ref in ("dice_truth", "dice_consensus", "dice_consensus_truth"):
        for bone in (*BONES, "mean"):
            assert got[ref][bone] == pytest.approx(expected[ref][bone], abs=1e-12, nan_ok=True), (ref, bone)
    assert set(got["dice_annotators"]) == set(expected["dice_annotators"]) == {"a1", "a2", "a3"}
    for key in ("ged", "ged_cross", "ged_sample_diversity", "ged_annotation_diversity", "hungarian_iou", "ece"):
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key
    assert got["laterality_detection"]["n_images"] == expected["laterality_detection"]["n_images"] == 4
    assert got["laterality_detection"]["wrong"] == expected["laterality_detection"]["wrong"]
    # per image: the stage's own label map against the truth, and the manifest's side given
    images = result.images.set_index("image_id")
    ds = trained["seg"]
    assert list(images.index) == annotated_ids(ds, "test")
    for image_id in images.index:
        labels = read_label_map(stage_dir(trained[kind]) / "labels" / "seg" / f"{image_id}.png")
        truth = read_label_map(ds.root / "truth" / "masks" / f"{image_id}.png")
        for bone, dice in dice_per_bone(labels, truth).items():
            assert images.loc[image_id, f"dice_truth_{bone}"] == pytest.approx(dice, nan_ok=True)
        assert images.loc[image_id, "laterality"] == ds.manifest.set_index("image_id").loc[image_id, "laterality"]
        assert images.loc[image_id, "laterality_source"] == "given"
    assert images["split"].eq("test").all() and (images["ged"] >= 0).all()


def test_chunks_add_up_to_the_whole(trained):
    """Dice and every metric of a deterministic model do not depend on the chunking; a MoSE's Dice neither
    (its label maps come from one latent draw for all images)."""
    ds = trained["seg"]
    single = open_segmenter(trained["single"])
    whole = evaluate_segmenter(single, ds, split="test", chunk=32).summary
    ones = evaluate_segmenter(single, ds, split="test", chunk=1).summary
    for key in ("ged", "hungarian_iou", "ece"):         # batches of 1 and of 4: float rounding only
        assert ones[key] == pytest.approx(whole[key], abs=1e-6)
    assert ones["dice_consensus"] == pytest.approx(whole["dice_consensus"], abs=1e-6)
    mose = open_segmenter(trained["mose"])
    a = evaluate_segmenter(mose, ds, split="test", chunk=32, detect=False)
    b = evaluate_segmenter(mose, ds, split="test", chunk=3, detect=False)
    assert a.summary["dice_truth"] == pytest.approx(b.summary["dice_truth"], abs=1e-12)
    assert "laterality_detection" not in a.summary and (a.images["laterality_detected"] == "").all()


def test_an_unknown_side_is_detected_and_scored_on_the_detected_orientation(trained, tmp_path):
    ds = trained["seg"]
    blank = tmp_path / "blank"
    shutil.copytree(ds.root, blank)
    manifest = ds.manifest.copy()
    manifest["laterality"] = ""
    write_manifest(manifest, blank / "manifest.csv")
    seg = open_segmenter(trained["mose"])
    told = evaluate_segmenter(seg, ds, split="val").images.set_index("image_id")
    untold = evaluate_segmenter(seg, Dataset.open(blank), split="val").images.set_index("image_id")
    assert (untold["laterality_source"] == "detected").all() and set(untold["laterality"]) <= {"L", "R"}
    assert (untold["laterality_detected"] == "").all()                  # nothing to check it against
    same = untold.index[untold["laterality"] == told["laterality"]]
    assert len(same) >= 1
    for column in ("dice_truth_mean", "dice_consensus_mean", "ged", "hungarian_iou"):
        np.testing.assert_allclose(untold.loc[same, column], told.loc[same, column], atol=1e-12)


def test_a_model_file_uses_the_documented_defaults_and_a_folder_without_segmenter_is_refused(trained, tmp_path):
    model_file = stage_dir(trained["single"]) / "model.pt"
    seg = open_segmenter(model_file)
    assert seg.source["kind"] == "model" and (seg.draws, seg.eval_samples, seg.batch_size) == (16, 0, 8)
    assert seg.label == "tinysingle"
    assert isinstance(seg, Segmenter) and seg.model.spec.kind == "single"
    # beside the _stage.json of a real run, the model file takes that stage's prediction settings
    staged = tmp_path / "stage"
    staged.mkdir()
    shutil.copy(model_file, staged / "model.pt")
    (staged / "_stage.json").write_text(json.dumps({"key": "k", "material": {"sections": {"segmentation": {
        "predict_draws": 3, "eval_samples": 2, "predict_batch": 4}}}}))
    assert (lambda s: (s.draws, s.eval_samples, s.batch_size))(open_segmenter(staged / "model.pt")) == (3, 2, 4)
    oracle = tmp_path / "results" / "s" / "simclr" / "seed0"
    oracle.mkdir(parents=True)
    (oracle / "config.json").write_text(json.dumps({"entry": "simclr", "seed": 0, "stages": {"patches": "k"}}))
    with pytest.raises(BenchError, match="trains no segmenter"):
        open_segmenter(oracle)
    with pytest.raises(BenchError, match="does not exist"):
        open_segmenter(tmp_path / "nothing")
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(BenchError, match="cannot read segmentation model .*not a PyTorch archive"):
        open_segmenter(tmp_path / "notes.txt")
    (oracle / "config.json").write_text(json.dumps({"entry": "simclr", "seed": 0, "stages": {"segment": "gone"}}))
    with pytest.raises(BenchError, match="missing from the cache"):
        open_segmenter(oracle)


def test_cli_writes_summary_and_images_and_refuses_bad_input(trained, tmp_path, capsys):
    ds = trained["seg"]
    out = tmp_path / "ev"
    argv = ["evaluate-seg", str(trained["mose"]), "--data", str(ds.root), "--split", "val", "--out", str(out),
            "--device", "cpu", "--no-laterality-check", "--results", str(tmp_path / "results")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    images = pd.read_csv(out / "images.csv")
    assert summary["n_images"] == len(images) == 4 and summary["segmenter"]["kind"] == "run"
    assert summary["predict_draws"] == 3 and summary["canonical_laterality"] is True
    assert "laterality_detection" not in summary
    assert summary["dice_truth"]["mean"] == pytest.approx(images["dice_truth_mean"].mean())   # no bone absent here
    assert "ulna" in printed and "GED" in printed and f"{summary['dice_truth']['mean']:.3f}" in printed
    assert not list(tmp_path.glob(".ev.tmp-*"))
    # one MLflow run in osteobench/segmentation with the eval.json metric names; a rerun reuses it
    assert main(argv) == 0 and "logged to MLflow" in capsys.readouterr().out
    from mlflow import MlflowClient

    from bench.tracking import default_tracking_uri

    client = MlflowClient(tracking_uri=default_tracking_uri(tmp_path / "results"))
    exp = client.get_experiment_by_name("osteobench/segmentation")
    runs = client.search_runs([exp.experiment_id], "tags.`osteobench.run_type` = 'evaluate-seg'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].info.run_name == "evaluate-seg/ev"
    assert runs[0].data.metrics["seg_val_dice_truth_mean"] == pytest.approx(summary["dice_truth"]["mean"])
    assert runs[0].data.metrics["seg_val_ged"] == pytest.approx(summary["ged"])
    assert runs[0].data.params["split"] == "val" and runs[0].data.params["segmenter_kind"] == "run"
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id)} == {"summary.json", "images.csv"}
    # no masks; an unknown split; a bad batch size
    masks_gone = tmp_path / "nomasks"
    shutil.copytree(ds.root, masks_gone)
    shutil.rmtree(masks_gone / "masks")
    (masks_gone / "annotators.csv").write_text("image_id,annotator,weight\n")
    for argv, message in [(["--data", str(masks_gone)], "has a bone mask"),
                          (["--data", str(ds.root), "--split", "holdout"], "has no 'holdout' split"),
                          (["--data", str(ds.root), "--batch-size", "0"], "--batch-size 0 must be >= 1")]:
        assert main(["evaluate-seg", str(trained["single"]), "--out", str(tmp_path / "x"), "--no-mlflow", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_cli_out_replaces_only_its_own_earlier_output(trained, tmp_path, capsys, monkeypatch):
    """--out never deletes a file, a dataset or a folder of other files, and replaces the evaluation of
    another dataset only with --overwrite."""
    ds = trained["seg"]
    base = ["evaluate-seg", str(trained["single"]), "--split", "val", "--device", "cpu", "--no-mlflow",
            "--no-laterality-check"]
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.txt").write_text("important")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    monkeypatch.chdir(victim)
    for out, message in ((victim, "already holds other files"), (Path("."), "already holds other files"),
                         (ds.root, "already holds other files"), (a_file, "is a file")):
        assert main([*base, "--data", str(ds.root), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert (victim / "thesis.txt").read_text() == "important" and a_file.read_text() == "keep"
    assert (ds.root / "manifest.csv").is_file() and not list(tmp_path.rglob("*.tmp-*"))
    out = tmp_path / "ev"
    assert main([*base, "--data", str(ds.root), "--out", str(out)]) == 0
    assert main([*base, "--data", str(ds.root), "--out", str(out)]) == 0          # a rerun replaces its own
    other = tmp_path / "other"
    shutil.copytree(ds.root, other)
    manifest = pd.read_csv(other / "manifest.csv")
    manifest["site"] = "B"                                                      # another dataset's fingerprint
    manifest.to_csv(other / "manifest.csv", index=False)
    assert main([*base, "--data", str(other), "--out", str(out)]) == 2
    assert "holds the evaluation of another dataset" in capsys.readouterr().err
    assert main([*base, "--data", str(other), "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["data"]["path"] == str(other.resolve())


def test_cli_out_of_another_segmenter_is_replaced_only_with_overwrite(trained, tmp_path, capsys):
    ds, out = trained["seg"], tmp_path / "ev"
    tail = ["--data", str(ds.root), "--split", "val", "--device", "cpu", "--no-mlflow", "--no-laterality-check",
            "--out", str(out)]
    assert main(["evaluate-seg", str(trained["single"]), *tail]) == 0
    assert main(["evaluate-seg", str(trained["mose"]), *tail]) == 2
    assert "holds the evaluation of another segmenter" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["segmenter"]["path"] == str(trained["single"].resolve())
    assert main(["evaluate-seg", str(trained["mose"]), *tail, "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["segmenter"]["path"] == str(trained["mose"].resolve())
