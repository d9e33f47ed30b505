"""The landmark rule, the reference landmarks, heat-map targets/loss/decoding and the mm error, by hand."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from bench.data.format import BONES
from baselines.axis import bone_axis
from baselines.landmarks import (LandmarkConfig, decode, gaussian_targets, heatmap_loss, landmark,
                                 landmark_errors, reference_landmarks, to_native, to_working)


def _hand() -> np.ndarray:
    """M2: rows 10-49 × cols 20-25 (+ a 4-pixel island); radius: rows 60-99 × cols 10-15 (runs off the bottom)."""
    lab = np.zeros((100, 40), np.uint8)
    lab[10:50, 20:26] = BONES["M2"]
    lab[0:2, 0:2] = BONES["M2"]            # annotator's stray island: not the largest component
    lab[60:100, 10:16] = BONES["radius"]
    return lab


def test_axis_and_landmark_rule_by_hand():
    lab = _hand()
    m2 = bone_axis(lab, "M2")
    assert m2.pixels == 240
    np.testing.assert_allclose(m2.centre, [29.5, 22.5])
    assert (m2.t_min, m2.t_max) == pytest.approx((-19.5, 19.5))
    np.testing.assert_allclose(m2.direction, [-1.0, 0.0], atol=1e-12)   # distal: away from the radius (up)
    cfg = LandmarkConfig(forearm_offset_mm=10.0)
    np.testing.assert_allclose(landmark(lab, "M2", 0.5, cfg), [29.5, 22.5])    # mid-shaft
    radius = bone_axis(lab, "radius")
    np.testing.assert_allclose(radius.direction, [-1.0, 0.0], atol=1e-12)  # distal: towards the metacarpals
    # distal end at row 60; 10 mm at 0.5 mm/px = 20 px proximal of it
    np.testing.assert_allclose(landmark(lab, "radius", 0.5, cfg), [80.0, 12.5])
    # an offset beyond the visible shaft is clipped to the proximal end (row 99)
    np.testing.assert_allclose(landmark(lab, "radius", 0.1, cfg), [99.0, 12.5])
    assert landmark(lab, "M3", 0.5, cfg) is None


def test_oblique_bone_mid_shaft():
    lab = np.zeros((80, 80), np.uint8)
    for i in range(50):                    # a 45-degree bar of 3-pixel-wide rows
        lab[15 + i, 10 + i:13 + i] = BONES["M3"]
    axis = bone_axis(lab, "M3")
    assert abs(abs(axis.direction[0]) - math.sqrt(0.5)) < 0.02
    np.testing.assert_allclose(landmark(lab, "M3", 1.0, LandmarkConfig()), [39.5, 35.5], atol=0.05)


def test_reference_landmarks_weighted_by_beta_and_nan_for_undrawn_bones():
    a = _hand()
    b = np.roll(_hand(), 4, axis=1)         # annotator b draws everything 4 px to the right
    cfg = LandmarkConfig(bones=("M2", "radius", "M5"), forearm_offset_mm=10.0)
    ref = reference_landmarks({"a": a, "b": b}, {"a": 0.75, "b": 0.25}, 0.5, cfg)
    np.testing.assert_allclose(ref[0], [29.5, 22.5 + 0.25 * 4])
    np.testing.assert_allclose(ref[1], [80.0, 12.5 + 0.25 * 4])
    assert np.isnan(ref[2]).all()


def test_landmark_error_in_millimetres_by_hand():
    truth = pd.DataFrame({"image_id": ["i", "i", "j"], "bone": ["M2", "M3", "M2"], "row": [10.0, np.nan, 0.0],
                          "col": [10.0, np.nan, 0.0], "pixel_spacing_mm": [0.2, 0.2, 0.5]})
    pred = pd.DataFrame({"image_id": ["i", "i", "j"], "bone": ["M2", "M3", "M2"], "row": [13.0, 5.0, 6.0],
                         "col": [14.0, 5.0, 8.0]})
    err = landmark_errors(pred, truth).set_index(["image_id", "bone"])["error_mm"]
    assert len(err) == 2                     # the undrawn M3 is not scored
    assert err[("i", "M2")] == pytest.approx(5 * 0.2)
    assert err[("j", "M2")] == pytest.approx(10 * 0.5)


def test_working_coordinates_use_pixel_centres():
    native = np.array([[0.0, 0.0], [9.0, 3.0]])
    work = to_working(native, (0.5, 0.25))
    np.testing.assert_allclose(work, [[-0.25, -0.375], [4.25, 0.375]])
    np.testing.assert_allclose(to_native(work, (0.5, 0.25)), native)


def test_targets_loss_and_decoding():
    pts = torch.tensor([[[10.3, 7.6], [20.0, 30.0], [float("nan"), float("nan")]]])
    t = gaussian_targets(pts, (40, 50), 2.0)
    assert torch.allclose(t[0, :2].sum(dim=(1, 2)), torch.ones(2)) and t[0, 2].sum() == 0
    assert t[0, 1].argmax() == 20 * 50 + 30
    found, score = decode(torch.log(t[:, :2] + 1e-30), radius_px=4.0)
    np.testing.assert_allclose(found[0, 1], [20.0, 30.0], atol=1e-5)
    np.testing.assert_allclose(found[0, 0], [10.3, 7.6], atol=0.15)   # window truncation biases < 0.15 px
    assert score[0, 1] == pytest.approx(float(t[0, 1].max()), rel=1e-4)
    # uniform logits: cross-entropy log(H·W) for each present target; the missing one is ignored
    logits = torch.zeros(1, 3, 40, 50)
    assert heatmap_loss(logits, t).item() == pytest.approx(math.log(40 * 50), rel=1e-5)
    logits[0, 0] = torch.log(t[0, 0] + 1e-30)
    logits[0, 1] = torch.log(t[0, 1] + 1e-30)
    entropy = -(t[0, :2] * torch.log(t[0, :2] + 1e-30)).sum(dim=(1, 2)).mean()
    assert heatmap_loss(logits, t).item() == pytest.approx(entropy.item(), rel=1e-4)   # minimum: the entropy


def test_images_load_the_same_in_threads(tmp_path):
    """load_images in 3 threads gives, image by image and in order, what one thread gives."""
    from bench.config import resolve
    from bench.data.format import Dataset
    from bench.data.phantom import PhantomConfig, synthesize
    from baselines.landmark_detector import load_images

    cfg = PhantomConfig.for_preset("public", "smoke").replace(n_images=7)
    ds = Dataset.open(synthesize(tmp_path / "pub", config=cfg, seed=2))
    lm = resolve("smoke").section("landmarks")
    one, three = load_images(ds, "seg", lm, threads=1), load_images(ds, "seg", lm, threads=3)
    assert [i["image_id"] for i in one] == [i["image_id"] for i in three] == list(ds.manifest["image_id"])
    for a, b in zip(one, three):
        assert torch.equal(a["tensor"], b["tensor"]) and a["scale"] == b["scale"] and a["mirror"] == b["mirror"]
        np.testing.assert_array_equal(a["truth"], b["truth"])
    assert np.isfinite(np.stack([i["truth"] for i in one])).mean() > 0.8
    # left hands (as the segmenter reads the manifest: methods.segmentation.data.side_of) are mirrored
    assert [i["mirror"] for i in one] == [s == "L" for s in ds.manifest["laterality"]] and any(i["mirror"] for i in one)
    ds.manifest["laterality"] = ["l", "LEFT", "B", "", "R", " L ", None]
    assert [i["mirror"] for i in load_images(ds, "seg", lm, threads=1)] == [True, False, False, False, False, True, False]


def test_zero_padding_of_a_training_batch_does_not_move_the_inputs_z_values():
    """Training pads images of other sizes to a common one, detection sees each alone (unclipped z-score)."""
    import torch

    from baselines.landmark_detector import LandmarkNet

    torch.manual_seed(0)
    net = LandmarkNet(7, (4, 8, 16), 1).eval()
    image = torch.rand(1, 1, 40, 32) * 0.8 + 0.1
    padded = torch.zeros(1, 1, 64, 48)
    padded[..., :40, :32] = image
    with torch.no_grad():
        alone, in_batch = net(image), net(padded)[..., :40, :32]
    assert (alone - in_batch)[..., :24, :16].abs().max() < 1e-5      # away from the padding's border
