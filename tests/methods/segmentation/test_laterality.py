"""Canonical laterality: left hands mirrored to right hands for training and prediction, detection of
an unknown side (methods.segmentation.data / predict, segmentation.canonical_laterality)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench.data.format import Dataset, write_manifest
from bench.data.imageio import write_label_map, write_png16
from methods.segmentation.data import augment, load_split, side_of
from methods.segmentation.model import ModelSpec, build_model
from methods.segmentation.predict import orientation_score, predict, predict_many


def asymmetric_dataset(root: Path) -> Path:
    """Four 30 x 20 images with a bar left of centre (label 1) and a dot right of it (label 2);
    laterality L, R, blank, L; one annotator."""
    (root / "images").mkdir(parents=True)
    rows, ann = [], []
    for i, side in enumerate(["L", "R", "", "L"]):
        img = np.zeros((30, 20), np.float32)
        img[5:25, 3:6] = 0.9
        img[10:13, 14:17] = 0.5 + 0.1 * i
        lab = np.zeros((30, 20), np.uint8)
        lab[5:25, 3:6] = 1
        lab[10:13, 14:17] = 2
        write_png16(root / "images" / f"img{i}.png", img)
        (root / "masks" / f"img{i}").mkdir(parents=True)
        write_label_map(root / "masks" / f"img{i}" / "a.png", lab)
        rows.append({"image_id": f"img{i}", "subject_id": f"s{i}", "path": f"images/img{i}.png", "split": "train",
                     "laterality": side, "pixel_spacing_mm": 1.0, "site": "A"})
        ann.append({"image_id": f"img{i}", "annotator": "a", "weight": 1.0})
    write_manifest(pd.DataFrame(rows), root / "manifest.csv")
    pd.DataFrame(ann).to_csv(root / "annotators.csv", index=False)
    return root


def test_side_of_normalises_the_manifest_values():
    assert [side_of(v) for v in ["L", " r ", "l", "B", "U", "", None, float("nan"), 3]] == \
        ["L", "R", "L", "", "", "", "", "", ""]


def test_load_split_mirrors_left_hands_and_flips_only_unknown_sides(tmp_path):
    ds = Dataset.open(asymmetric_dataset(tmp_path / "d"))
    plain = load_split(ds, ["train"], (30, 20))
    canon = load_split(ds, ["train"], (30, 20), canonical=True)
    assert plain.mirrored.tolist() == [False] * 4 and plain.flippable.tolist() == [True] * 4
    assert canon.mirrored.tolist() == [True, False, False, True]
    assert canon.flippable.tolist() == [False, False, True, False]      # only the blank side may be flipped
    for i, mirrored in enumerate(canon.mirrored.tolist()):
        expect_img = plain.images[i].flip(-1) if mirrored else plain.images[i]
        expect_lab = plain.labels[i].flip(-1) if mirrored else plain.labels[i]
        assert torch.equal(canon.images[i], expect_img) and torch.equal(canon.labels[i], expect_lab)
    # the bar (label 1) of a left hand is now right of centre: image and masks moved together
    assert canon.labels[0, 0, 10, 15] == 1 and canon.images[0, 0, 10, 15] > 0.8


def test_augment_flips_only_the_flippable_images_with_the_same_draws():
    img = torch.rand(3, 1, 12, 8)
    lab = torch.randint(0, 8, (3, 1, 12, 8), dtype=torch.uint8)
    args = dict(flip_p=1.0, vflip_p=0.0, rotate_deg=0.0, scale_range=0.0)
    i1, l1 = augment(img, lab, generator=torch.Generator().manual_seed(0),
                     flippable=torch.tensor([True, False, True]), **args)
    assert torch.allclose(i1[0], img[0].flip(-1), atol=1e-5) and torch.allclose(i1[1], img[1], atol=1e-5)
    assert torch.equal(l1[2], lab[2].flip(-1)) and torch.equal(l1[1], lab[1])
    a = augment(img, lab, flip_p=0.5, rotate_deg=10.0, generator=torch.Generator().manual_seed(3))
    b = augment(img, lab, flip_p=0.5, rotate_deg=10.0, generator=torch.Generator().manual_seed(3),
                flippable=torch.ones(3, dtype=torch.bool))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # a vertical flip is a reflection too: an image of known side is never turned upside down
    v_img, v_lab = augment(img, lab, flip_p=0.0, vflip_p=1.0, rotate_deg=0.0, scale_range=0.0,
                           generator=torch.Generator().manual_seed(0), flippable=torch.tensor([True, False, True]))
    assert torch.allclose(v_img[0], img[0].flip(-2), atol=1e-5) and torch.allclose(v_img[1], img[1], atol=1e-5)
    assert torch.equal(v_lab[2], lab[2].flip(-2)) and torch.equal(v_lab[1], lab[1])


def make_model(canonical: bool, kind: str = "mose") -> torch.nn.Module:
    spec = ModelSpec(kind=kind, widths=(6, 8, 10), experts=3, samples=2, latent=2, canvas=(40, 24),
                     bn_momentum=0.1, canonical_laterality=canonical)
    model = build_model(spec, seed=2)
    if kind == "mose":
        with torch.no_grad():
            model.mu.mul_(3.0)
    return model.eval()


def hand(h: int = 57, w: int = 35, seed: int = 0) -> np.ndarray:
    """An image that is not its own mirror."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w), 0.1, np.float32)
    img[8:50, 4:11] = 0.9
    img[20:30, 22:30] = 0.6
    return np.clip(img + rng.normal(0, 0.05, (h, w)), 0, 1).astype(np.float32)


def same(a, b, mirror: bool = False) -> bool:
    flip = (lambda m: m[:, ::-1]) if mirror else (lambda m: m)
    return (np.array_equal(a.labels, flip(b.labels)) and np.allclose(a.entropy, flip(b.entropy), atol=1e-6)
            and np.allclose(a.mutual_info, flip(b.mutual_info), atol=1e-6)
            and all(a.confidence[k] == pytest.approx(b.confidence[k], abs=1e-6) for k in a.confidence)
            and a.area_px == b.area_px)


@pytest.mark.parametrize("kind", ["mose", "single"])
def test_a_canonical_model_predicts_a_left_hand_on_its_mirror_and_maps_back(kind):
    model = make_model(True, kind)
    image = hand()
    left = predict(model, image, seed=1, laterality="L")
    as_right = predict(model, image[:, ::-1].copy(), seed=1, laterality="R")
    assert same(left, as_right, mirror=True) and left.labels.shape == image.shape
    assert (left.laterality, left.laterality_source) == ("L", "given")
    right = predict(model, image, seed=1, laterality="R")
    assert not np.array_equal(right.labels, left.labels)            # the side matters to this model


def test_an_unknown_side_is_detected_by_the_orientation_score():
    model = make_model(True)
    for seed in range(4):
        image = hand(seed=seed)
        right = predict(model, image, seed=1, laterality="R")
        left = predict(model, image, seed=1, laterality="L")
        found = predict(model, image, seed=1, laterality=None)
        assert found.laterality_source == "detected"
        expect = "L" if orientation_score(left) > orientation_score(right) else "R"
        assert found.laterality == expect and same(found, left if expect == "L" else right)
        mirrored = predict(model, image[:, ::-1].copy(), seed=1, laterality=None)     # the other hand
        assert mirrored.laterality == {"L": "R", "R": "L"}[found.laterality] and same(mirrored, found, mirror=True)


def test_batches_mixing_given_and_unknown_sides_equal_one_at_a_time():
    model = make_model(True)
    images = [hand(50 + 3 * i, 30 + 2 * i, seed=i) for i in range(5)]
    sides = ["L", None, "R", "B", "l"]
    batched = list(predict_many(model, images, batch_size=3, seed=4, laterality=sides))
    for image, side, b in zip(images, sides, batched):
        one = predict(model, image, seed=4, laterality=side)
        assert same(one, b) and (one.laterality, one.laterality_source) == (b.laterality, b.laterality_source)
    assert [b.laterality_source for b in batched] == ["given", "detected", "given", "detected", "given"]


def test_detect_returns_the_given_side_and_the_side_it_would_have_found():
    """detect=: one extra (mirrored) view, not an untold second prediction; the same outputs as without."""
    model = make_model(True)
    images = [hand(50 + 3 * i, 30 + 2 * i, seed=i) for i in range(5)]
    sides = ["L", "R", None, "L", "R"]
    plain = list(predict_many(model, images, batch_size=2, seed=4, laterality=sides))
    told = list(predict_many(model, images, batch_size=2, seed=4, laterality=sides, detect=True))
    untold = list(predict_many(model, images, batch_size=2, seed=4))
    some = list(predict_many(model, images, batch_size=2, seed=4, laterality=sides,
                             detect=[True, False, False, False, True]))
    for p, t, u, s in zip(plain, told, untold, some):
        assert same(p, t) and same(p, s)
        assert (t.laterality, t.laterality_source) == (p.laterality, p.laterality_source)
        assert t.detected == u.laterality                      # what it chooses when not told
    assert [s.detected for s in some] == [untold[0].laterality, "", untold[2].laterality, "", untold[4].laterality]
    assert {u.laterality for u in untold} == {"L", "R"}        # the check can fail either way
    as_is = make_model(False)
    assert [p.detected for p in predict_many(as_is, images, laterality=sides, detect=True)] == [""] * 5


def test_a_model_trained_as_is_ignores_the_side_and_old_specs_load():
    model = make_model(False)
    image = hand()
    plain = predict(model, image, seed=1)
    left = predict(model, image, seed=1, laterality="L")
    assert same(plain, left) and (left.laterality, left.laterality_source) == ("L", "given")
    assert (plain.laterality, plain.laterality_source) == ("", "")
    old = {k: v for k, v in model.spec.to_dict().items() if k != "canonical_laterality"}
    assert ModelSpec.from_dict(old).canonical_laterality is False


def test_training_records_the_convention_in_the_model_spec():
    import methods.segmentation.config  # noqa: F401  (registers the section)
    from bench.config import resolve
    from methods.segmentation.train import make_spec

    for value in (False, True):
        cfg = resolve("smoke", sets={"segmentation.canonical_laterality": value}).segmentation
        spec = make_spec(cfg, (64, 40), 8)
        assert spec.canonical_laterality is value
        assert dataclasses.asdict(ModelSpec.from_dict(spec.to_dict())) == dataclasses.asdict(spec)


def test_a_detected_left_hand_is_scored_on_the_mirrored_canvas(tmp_path):
    """An image of unknown side that a canonical model segments as a left hand: its sample metrics (GED)
    in `bench evaluate-seg` and the segment_eval stage are taken on the mirrored canvas, where its
    label map came from."""
    from methods.segmentation.data import manifest_sides
    from methods.segmentation.external import Segmenter, evaluate_segmenter
    from methods.segmentation.predict import predict_many
    from methods.segmentation.scoring import score_images

    ds = Dataset.open(asymmetric_dataset(tmp_path / "d"))
    spec = ModelSpec(kind="mose", widths=(6, 8, 10), experts=3, samples=2, latent=2, canvas=(32, 24),
                     head="shared", bn_momentum=0.1, canonical_laterality=True)
    before = load_split(ds, ["train"], spec.canvas, canonical=True)
    sides = manifest_sides(ds)

    def geds(model, data, labels):
        scores, _ = score_images(model, ds, data, labels, batch_size=4, eval_samples=0, seed=0)
        return {s.image_id: s.sample_metrics["ged"] for s in scores}

    for seed in range(80):   # a random model that takes the blank-side img2 for a left hand, where it matters
        model = build_model(spec, seed=seed).eval()
        preds = dict(zip(ds.image_ids, predict_many(model, (ds.image(i) for i in ds.image_ids), batch_size=4,
                                                    laterality=[sides[i] for i in ds.image_ids])))
        labels = {i: p.labels for i, p in preds.items()}
        used = {i: p.laterality for i, p in preds.items()}
        after = load_split(ds, [], spec.canvas, canonical=True, image_ids=ds.image_ids, sides=used)
        if used["img2"] == "L" and abs(geds(model, after, labels)["img2"] - geds(model, before, labels)["img2"]) > 1e-6:
            break
    else:
        pytest.fail("no random model detected img2 as a left hand")
    assert used == {"img0": "L", "img1": "R", "img2": "L", "img3": "L"}
    assert before.mirrored.tolist() == [True, False, False, True]
    assert after.mirrored.tolist() == [True, False, True, True]
    ev = evaluate_segmenter(Segmenter(model, draws=0, eval_samples=0, batch_size=4, source={"path": "m.pt"}),
                            ds, seed=0)
    expected = dict(zip(ev.images["image_id"], ev.images["ged"]))
    assert geds(model, after, labels) == pytest.approx(expected, abs=1e-9)
