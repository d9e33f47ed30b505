"""Phantom datasets on disk: layout, masks on bones, annotator disagreement, missing bones,
determinism, the CLI (`bench data synth`, `bench perf phantom`)."""
from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import binary_dilation

from bench import BenchError
from bench.cli import main
from bench.data.format import MANIFEST_COLUMNS, Dataset
from bench.data.imageio import read_label_map
from bench.data.phantom import PhantomConfig, dataset_styles, make_case, synthesize


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory) -> dict[str, Path]:
    """The smoke public (40 images) and clinical (60 subjects) phantoms, seed 0."""
    root = tmp_path_factory.mktemp("phantom")
    return {preset: synthesize(root / preset, preset=preset, profile="smoke", seed=0)
            for preset in ("public", "clinical")}


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_dataset_layout_follows_the_format(phantoms):
    for preset, root in phantoms.items():
        ds = Dataset.open(root)
        cfg = PhantomConfig.for_preset(preset, "smoke")
        m = ds.manifest
        assert list(m.columns[:len(MANIFEST_COLUMNS)]) == list(MANIFEST_COLUMNS)
        assert len(m) == cfg.n_images and m["image_id"].is_unique
        assert set(m["split"]) == {"train", "val", "test"}
        assert set(m["site"]) <= {"A", "B"} and set(m["laterality"]) <= {"L", "R"}
        assert (m["pixel_spacing_mm"] == cfg.pixel_spacing_mm).all()
        meta = ds.meta
        for key in ("name", "kind", "preset", "profile", "seed", "generator_version", "pixel_spacing_mm",
                    "image_size", "signal", "oracle_auc", "class_names"):
            assert key in meta, key
        assert meta["kind"] == "phantom" and meta["preset"] == preset
        assert meta["image_size"] == {"height": cfg.height, "width": cfg.width}
        assert 0.85 <= meta["oracle_auc"] <= 0.95
        weights = ds.annotators.groupby("image_id")["weight"].sum()
        assert np.allclose(weights, 1.0) and len(weights) == len(m)
        iid = ds.image_ids[0]
        img = ds.image(iid)
        assert img.shape == (cfg.height, cfg.width) and img.dtype == np.float32
        masks = ds.masks(iid)
        assert sorted(masks) == ["a1", "a2", "a3"]
        assert all(mk.shape == img.shape and mk.max() <= 7 for mk in masks.values())
        for name in ("masks", "bones.csv", "subjects.csv", "annotations.csv"):
            assert (root / "truth" / name).exists()
        bones = pd.read_csv(root / "truth" / "bones.csv")
        assert len(bones) == 7 * len(m)
        assert {"cortical_index", "trabecular_density", "outer_diameter_mm", "present"} <= set(bones.columns)
    pub, cli = (Dataset.open(phantoms[p]).manifest for p in ("public", "clinical"))
    assert pub["label"].isna().all() and pub["sex"].isna().all() and pub["t_score"].isna().all()
    assert not set(pub["subject_id"]) & set(cli["subject_id"])
    assert pub["subject_id"].str.startswith("pub-").all() and cli["subject_id"].str.startswith("cli-").all()


def test_clinical_manifest_has_labels_sex_and_age(phantoms):
    m = Dataset.open(phantoms["clinical"]).manifest
    assert set(m["sex"]) <= {"F", "M"} and (m["sex"] == "F").mean() > 0.7
    assert m["age"].between(10, 99).all()
    assert (m["label"] == (m["t_score"] < -2.5).astype(int)).all()
    assert 0.1 <= m["label"].mean() <= 0.55                         # 30 % +- sampling noise, n=60


def test_masks_sit_on_bones(phantoms):
    """Mean intensity inside each target-bone mask exceeds the soft tissue around it."""
    for root in phantoms.values():
        ds = Dataset.open(root)
        diffs = []
        for iid in ds.image_ids:
            img = ds.image(iid)
            truth = read_label_map(root / "truth" / "masks" / f"{iid}.png")
            masks = ds.masks(iid)
            for c in range(1, 8):
                bone = truth == c
                if not bone.any():
                    continue
                ring = binary_dilation(bone, iterations=3) & ~binary_dilation(bone, iterations=1) & (truth == 0)
                diffs.append(img[bone].mean() - img[ring].mean())
                for mk in masks.values():                          # annotators too
                    if (mk == c).any():
                        assert img[mk == c].mean() > img[ring].mean()
        diffs = np.array(diffs)
        assert (diffs > 0).all() and np.median(diffs) > 0.15


def test_annotators_disagree_realistically(phantoms):
    ious = []
    for root in phantoms.values():
        ds = Dataset.open(root)
        for iid in ds.image_ids:
            masks = ds.masks(iid)
            for c in range(1, 8):
                for a, b in itertools.combinations(sorted(masks), 2):
                    A, B = masks[a] == c, masks[b] == c
                    if A.any() or B.any():
                        ious.append((A & B).sum() / (A | B).sum())
    ious = np.array(ious)
    assert ((ious >= 0.7) & (ious <= 0.97)).mean() >= 0.8
    assert 0.75 <= np.median(ious) <= 0.95 and ious.max() < 1.0


def test_discrete_head_mode_occurs_and_removes_the_head(phantoms):
    root = phantoms["clinical"]
    notes = pd.read_csv(root / "truth" / "annotations.csv")
    assert notes["exclude_head"].any() and not notes["exclude_head"].all()
    cfg = PhantomConfig.for_preset("clinical", "smoke")
    styles = dataset_styles(cfg, 0)
    checked = 0
    for i in range(6):
        case = make_case(cfg, 0, i, styles)
        for a in case.annotations:
            mk = read_label_map(root / "masks" / case.image_id / f"{a.style.name}.png")
            for b in case.rendering.bones:
                sub = mk[b.rows, b.cols] == b.class_id
                head = b.u > b.head_start + 1.5                     # beyond smoothing reach
                inside = b.sd < -1.0
                if not (head & inside).any():
                    continue
                covered = sub[head & inside].mean()
                assert covered < 0.05 if a.exclude_head else covered > 0.95
                checked += 1
    assert checked > 20


def test_head_exclusion_is_the_minority_mode_so_the_majority_draws_the_truth(tmp_path, capsys):
    from bench.data.provision import phantom_dir
    from bench.data.phantom.presets import GENERATOR_VERSION
    from methods.segmentation.agreement import dataset_agreement

    cfg = PhantomConfig.for_preset("public", "smoke").replace(n_images=16)
    p_head = sorted(s.p_exclude_head for s in dataset_styles(cfg, 0))
    assert p_head == pytest.approx([0.05, 0.2, 0.35])
    assert [s.p_exclude_head for s in dataset_styles(cfg.replace(annotators=1), 0)] == pytest.approx([0.2])
    old = cfg.replace(head_exclusion=(0.1, 0.7))                       # the phantom-1.0 generator
    assert sorted(s.p_exclude_head for s in dataset_styles(old, 0)) == pytest.approx([0.1, 0.4, 0.7])
    majority = {}
    for name, c in (("new", cfg), ("old", old)):
        root = synthesize(tmp_path / name, config=c, seed=0, workers=1)
        notes = pd.read_csv(root / "truth" / "annotations.csv")
        included = notes.assign(w=notes["weight"] * ~notes["exclude_head"]).groupby("image_id")["w"].sum()
        majority[name] = (float(included.mean()), dataset_agreement(Dataset.open(root)).loc["consensus~truth"])
    inclusion, agreement = majority["new"]
    assert inclusion > 0.7 and agreement.min() > 0.96               # the weighted vote draws the exact bone
    old_inclusion, old_agreement = majority["old"]
    assert old_inclusion < 0.65 and old_agreement.mean() < agreement.mean() - 0.02
    meta = json.loads((tmp_path / "old" / "dataset.json").read_text())
    assert meta["config"]["head_exclusion"] == [0.1, 0.7] and meta["generator_version"] == GENERATOR_VERSION
    assert phantom_dir(tmp_path, "public", "smoke", 0).name.endswith(GENERATOR_VERSION)
    with pytest.raises(BenchError, match="head-exclusion"):
        cfg.replace(head_exclusion=(0.5, 0.2))
    args = ["data", "synth", "--n", "2", "--out", str(tmp_path / "bad"), "--head-exclusion", "0.2", "1.5"]
    assert main(args) == 2 and "0 <= LOW <= HIGH <= 1" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_generated_missing_bones_are_absent_from_every_mask(tmp_path):
    cfg = PhantomConfig.for_preset("clinical", "smoke").replace(n_images=6, missing_rate=1.0, annotators=2)
    root = synthesize(tmp_path / "miss", config=cfg, seed=3)
    ds = Dataset.open(root)
    bones = pd.read_csv(root / "truth" / "bones.csv")
    assert (ds.manifest["n_bones"] < 7).all()
    absent = bones[~bones["present"]]
    assert len(absent) >= 6 and set(absent["missing_reason"]) <= {"collimation", "occluder"}
    for _, row in absent.iterrows():
        truth = read_label_map(root / "truth" / "masks" / f"{row.image_id}.png")
        assert not (truth == row.class_id).any()
        for mk in ds.masks(row.image_id).values():
            assert not (mk == row.class_id).any()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    cfg = PhantomConfig.for_preset("clinical", "smoke").replace(n_images=3, annotators=2)
    a = _hashes(synthesize(tmp_path / "a", config=cfg, seed=5))
    b = _hashes(synthesize(tmp_path / "b", config=cfg, seed=5, workers=2))       # rendered in 2 processes
    c = _hashes(synthesize(tmp_path / "c", config=cfg, seed=6))
    assert a == b and len(a) > 10
    images = [k for k in a if k.startswith("images/")]
    assert all(a[k] != c[k] for k in images)


def test_synth_cli_overrides_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["data", "synth", "--preset", "clinical", "--profile", "smoke", "--seed", "1", "--out", str(out),
            "--n", "4", "--annotators", "2", "--prevalence", "0.4", "--signal", "0.8",
            "--head-exclusion", "0.1", "0.7"]
    assert main(args) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["n_images"] == 4 and meta["signal"] == 0.8 and meta["prevalence"] == 0.4
    assert sorted(a["p_exclude_head"] for a in meta["annotators"]) == pytest.approx([0.1, 0.7])
    assert len(meta["annotators"]) == 2 and "oracle AUC" in capsys.readouterr().out
    assert main(args) == 2                                         # exists: refused
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--annotators", "5"]) == 2
    assert not (tmp_path / "x").exists()
    with pytest.raises(BenchError):
        synthesize(out, preset="clinical")
    with pytest.raises(BenchError):
        PhantomConfig.for_preset("hospital", "smoke")


def test_perf_phantom_prints_images_per_second(capsys):
    assert main(["perf", "phantom", "--profile", "smoke", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("images/s") >= 4 and "public" in out and "clinical" in out
