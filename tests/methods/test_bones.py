"""Bone patches (methods.bones): geometry, masking, angle, missing bones, raw patches, the premise."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from bench.config import resolve
from bench.data.format import BONES, Dataset
from bench.data.imageio import read_label_map
from bench.errors import BenchError
from methods.bones import (PatchConfig, crop_padded, extract_bones, principal_angle, random_patches,
                           square_crop)

U16 = 65535


def _image(shape=(100, 100), seed=0) -> np.ndarray:
    """A textured image in [0.2, 1] so that no bone pixel is zero."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    return rng.uniform(0.2, 1.0, shape).astype(np.float32)


def _by_bone(patches):
    return {p.bone: p for p in patches}


def _u16(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0, 1) * U16).astype(np.uint16)


# --------------------------------------------------------------------------- geometry
def test_crop_geometry_and_hadamard_exact_on_a_rectangle():
    image = _image()
    labels = np.zeros((100, 100), np.uint8)
    labels[20:60, 30:50] = BONES["M2"]                     # bbox x [30, 50), y [20, 60): 20 × 40
    cfg = PatchConfig(patch_size=48, margin=0.1)          # pad = round(0.1·40) = 4, side 48: no resize
    p = _by_bone(extract_bones(image, labels, None, cfg, pixel_spacing_mm=0.5))["M2"]
    assert not p.missing and p.bbox == (30, 20, 50, 60)
    assert p.crop == (16, 16, 64, 64)                     # top = 20-4; left = 30 - (48-20)//2
    expected = np.zeros((48, 48), np.uint16)
    expected[4:44, 14:34] = _u16(image[20:60, 30:50])
    np.testing.assert_array_equal(p.patch, expected)      # image ⊙ mask, zero outside the bone
    assert p.coverage == pytest.approx(800 / 48 ** 2)
    assert p.area_px == 800 and p.area_mm2 == pytest.approx(800 * 0.25)
    assert p.component_fraction == 1.0 and not p.touches_border
    assert p.angle_deg == pytest.approx(0.0, abs=1e-9)    # an upright bone


def test_square_crop_odd_extra_pixel_and_zero_margin():
    assert square_crop((10, 10, 15, 20), 0.0) == (8, 10, 18, 20)   # w 5 → 10: 2 left, 3 right
    assert square_crop((0, 0, 7, 7), 0.5) == (-4, -4, 11, 11)       # pad round(3.5) = 4 (half up)


def test_square_past_the_image_is_zero_padded():
    image = np.ones((100, 100), np.float32)
    labels = np.zeros((100, 100), np.uint8)
    labels[1:41, 2:12] = BONES["radius"]                   # near the top-left corner, not touching it
    cfg = PatchConfig(patch_size=60, margin=0.25, dilation_px=200)  # mask grown over all background
    p = _by_bone(extract_bones(image, labels, None, cfg))["radius"]
    assert p.crop == (-23, -9, 37, 51)                    # pad 10, side 60
    expected = np.zeros((60, 60), np.uint16)
    expected[9:, 23:] = U16                               # image inside, zeros where the square leaves it
    np.testing.assert_array_equal(p.patch, expected)
    padded = crop_padded(np.arange(12, dtype=np.int32).reshape(3, 4) + 1, (-1, -2, 2, 2))
    np.testing.assert_array_equal(padded, [[0, 0, 0], [0, 0, 0], [0, 1, 2], [0, 5, 6]])


def test_largest_component_wins_over_a_spurious_blob():
    image = _image()
    labels = np.zeros((100, 100), np.uint8)
    labels[20:60, 30:50] = BONES["M3"]
    labels[22:27, 52:57] = BONES["M3"]                    # 25-px blob inside the crop square
    cfg = PatchConfig(patch_size=48, margin=0.1)
    p = _by_bone(extract_bones(image, labels, None, cfg))["M3"]
    assert p.bbox == (30, 20, 50, 60) and p.area_px == 800
    assert p.component_fraction == pytest.approx(800 / 825)
    assert p.patch[6:11, 36:41].max() == 0                # the blob is masked out (crop origin 16, 16)
    assert np.count_nonzero(p.patch) == 800


def test_dilation_grows_onto_background_only():
    image = np.ones((100, 100), np.float32)
    labels = np.zeros((100, 100), np.uint8)
    labels[20:60, 30:50] = BONES["M2"]
    labels[20:60, 51:60] = BONES["M3"]                    # a neighbour one pixel to the right
    cfg = PatchConfig(patch_size=48, margin=0.1, dilation_mm=1.0)
    p = _by_bone(extract_bones(image, labels, None, cfg, pixel_spacing_mm=0.5))["M2"]   # radius 2 px
    grown = ndi.binary_dilation(labels == BONES["M2"], structure=np.hypot(*np.mgrid[-2:3, -2:3]) <= 2)
    grown &= labels != BONES["M3"]
    np.testing.assert_array_equal(p.patch > 0, grown[16:64, 16:64])
    # without a spacing dilation_px applies (0 here): the exact mask
    q = _by_bone(extract_bones(image, labels, None, cfg))["M2"]
    assert np.count_nonzero(q.patch) == 800


def test_zero_outside_the_bone_after_resizing():
    image = _image((200, 160), seed=3)
    labels = np.zeros((200, 160), np.uint8)
    yy, xx = np.mgrid[:200, :160]
    labels[((yy - 100) / 60.0) ** 2 + ((xx - 80) / 14.0) ** 2 <= 1] = BONES["M4"]
    p = _by_bone(extract_bones(image, labels, None, PatchConfig(patch_size=64)))["M4"]
    side = p.crop[2] - p.crop[0]
    mask = crop_padded(labels == BONES["M4"], p.crop)

    def sample(m):
        return F.interpolate(torch.from_numpy(m.astype(np.float32))[None, None], size=(64, 64),
                             mode="nearest")[0, 0].numpy() > 0
    small = sample(mask)
    # the antialiased kernel of an output pixel reaches side/64 source pixels from its centre, and
    # nearest sampling reads up to half an output pixel away from that centre
    reach = math.ceil(1.5 * side / 64) + 1
    near = sample(ndi.binary_dilation(mask, structure=np.ones((3, 3), bool), iterations=reach))
    assert p.patch[~near].max() == 0 and (~near).mean() > 0.6
    assert p.patch[small].min() > 0
    assert p.coverage == pytest.approx(np.count_nonzero(p.patch) / 64 ** 2)
    assert abs(p.coverage - small.mean()) < 0.05


@pytest.mark.parametrize("theta", [-75.0, -40.0, -10.0, 0.0, 15.0, 35.0, 60.0, 89.0])
def test_principal_angle_of_a_rotated_ellipse(theta):
    """Ellipse with its major axis tilted theta degrees clockwise from vertical (top to the right)."""
    t = math.radians(theta)
    yy, xx = np.mgrid[:200, :200].astype(np.float64)
    px, py = xx - 100.3, yy - 99.6
    along = px * math.sin(t) - py * math.cos(t)           # unit axis (sin t, -cos t): up, leaning right
    across = px * math.cos(t) + py * math.sin(t)
    labels = np.zeros((200, 200), np.uint8)
    labels[(along / 60) ** 2 + (across / 15) ** 2 <= 1] = BONES["M1"]
    p = _by_bone(extract_bones(_image((200, 200)), labels, None, PatchConfig(patch_size=32)))["M1"]
    diff = (p.angle_deg - theta + 90) % 180 - 90          # axes are undirected
    assert abs(diff) < 2.0
    assert -90 < p.angle_deg <= 90
    ys, xs = np.nonzero(labels)
    assert principal_angle(ys, xs) == pytest.approx(p.angle_deg)


# --------------------------------------------------------------------------- missing bones
def _hand_labels() -> np.ndarray:
    """Seven plausible bones on a 200 × 200 map (ulna/radius reach the bottom edge, as on film)."""
    labels = np.zeros((200, 200), np.uint8)
    labels[150:200, 60:75] = BONES["ulna"]
    labels[150:200, 80:100] = BONES["radius"]
    for k, x in enumerate((40, 65, 90, 115, 140)):
        labels[60:120, x:x + 12] = BONES[f"M{k + 1}"]
    return labels


def test_missing_and_implausible_bones_are_marked_not_raised():
    image = _image((200, 200))
    labels = _hand_labels()
    labels[labels == BONES["M5"]] = 0                    # absent
    labels[labels == BONES["M4"]] = 0
    labels[90:98, 115:123] = BONES["M4"]                 # 64 mm²: above the floors, far below the others
    labels[labels == BONES["M1"]] = 0
    labels[0:40, 40:52] = BONES["M1"]                    # touches the top border: cut
    conf = {b: 0.9 for b in BONES} | {"M3": 0.3}
    cfg = PatchConfig(patch_size=32)
    got = _by_bone(extract_bones(image, labels, conf, cfg, pixel_spacing_mm=1.0))
    assert [got[b].reason for b in BONES] == ["", "", "cut", "", "low-confidence", "small", "absent"]
    for b in ("M1", "M3", "M4", "M5"):
        assert got[b].missing and got[b].patch is None and got[b].note
    assert "median bone area" in got["M4"].note and got["M4"].area_px == 64
    # the forearm bones run off the film by design: touching the border is fine for them
    assert got["ulna"].touches_border and not got["ulna"].missing and got["ulna"].patch is not None
    assert got["M3"].confidence == pytest.approx(0.3)
    # absolute floors: px always, mm² with a spacing
    assert _by_bone(extract_bones(image, labels, None, PatchConfig(min_area_px=2000)))["M2"].reason == "small"
    tiny_mm = extract_bones(image, _hand_labels(), None, PatchConfig(min_area_mm2=50.0), pixel_spacing_mm=0.05)
    assert all(p.reason == "small" for p in tiny_mm)      # 720 px × 0.0025 mm² = 1.8 mm²
    # nothing at all: seven missing bones, no exception
    empty = extract_bones(image, np.zeros((200, 200), np.uint8), None, cfg)
    assert len(empty) == 7 and all(p.missing and p.reason == "absent" for p in empty)


def test_bad_inputs_raise_bench_error():
    with pytest.raises(BenchError, match="native resolution"):
        extract_bones(np.zeros((10, 10)), np.zeros((10, 11), np.uint8), None, PatchConfig())
    with pytest.raises(BenchError, match="source"):
        PatchConfig(source="magic").validate()        # type: ignore[arg-type]
    with pytest.raises(BenchError, match="cut_bones"):
        PatchConfig(cut_bones=("M9",)).validate()


def test_config_section_and_profiles():
    assert resolve("smoke").patches.patch_size == 64
    assert resolve("quick").patches.patch_size == 128
    assert resolve("paper").patches.patch_size == 256
    cfg = resolve("smoke", sets=["patches.cut_bones=M1,M2", "patches.source=truth"]).patches
    assert cfg.cut_bones == ("M1", "M2") and cfg.source == "truth"
    with pytest.raises(BenchError):
        resolve("smoke", sets=["patches.source=oracle"])


# --------------------------------------------------------------------------- raw patches
def test_random_patches_in_bounds_seeded_and_faithful():
    image = _image((120, 90), seed=5)
    a = random_patches(image, 7, rng=np.random.default_rng(np.random.SeedSequence([1, 2])), patch_size=32)
    b = random_patches(image, 7, rng=np.random.default_rng(np.random.SeedSequence([1, 2])), patch_size=32)
    c = random_patches(image, 7, rng=np.random.default_rng(np.random.SeedSequence([1, 3])), patch_size=32)
    assert [p.bone for p in a] == [f"raw{k}" for k in range(1, 8)]
    assert all(np.array_equal(p.patch, q.patch) and p.crop == q.crop for p, q in zip(a, b))
    assert [p.crop for p in a] != [p.crop for p in c]
    for p in a:
        x0, y0, x1, y1 = p.crop
        side = x1 - x0
        assert 0 <= x0 and 0 <= y0 and x1 <= 90 and y1 <= 120 and y1 - y0 == side
        assert round(0.2 * 90) <= side <= round(0.4 * 90)
        assert p.patch.shape == (32, 32) and p.patch.dtype == np.uint16 and not p.missing
        # an antialiased resize keeps the crop's mean intensity
        assert p.patch.mean() / U16 == pytest.approx(image[y0:y1, x0:x1].mean(), rel=0.02)


# --------------------------------------------------------------------------- the phantom
@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from bench.data.phantom import PhantomConfig, synthesize

    cfg = PhantomConfig.for_preset("clinical", "smoke").replace(n_images=12, missing_rate=0.3)
    return Dataset.open(synthesize(tmp_path_factory.mktemp("ph") / "clinical", config=cfg, seed=1))


def _truth(ds: Dataset, image_id: str) -> np.ndarray:
    return read_label_map(ds.root / "truth" / "masks" / f"{image_id}.png")


def test_phantom_missing_bones_match_the_generator(phantom):
    truth = pd.read_csv(phantom.root / "truth" / "bones.csv")
    assert (~truth["present"]).sum() >= 1                 # the fixture has occluded bones
    cfg = PatchConfig(patch_size=64)
    for image_id in phantom.image_ids:
        spacing = float(phantom.row(image_id)["pixel_spacing_mm"])
        got = _by_bone(extract_bones(phantom.image(image_id), _truth(phantom, image_id), None, cfg, spacing))
        expected = truth[truth["image_id"] == image_id].set_index("bone")["present"]
        for bone in BONES:
            assert got[bone].missing == (not expected[bone]), (image_id, bone, got[bone].note)
            if not got[bone].missing:
                assert 0.05 < got[bone].coverage < 0.6
                assert got[bone].patch[0].max() == 0 or bone in ("ulna", "radius")  # margin: the bone is inside


def test_premise_metacarpal_patch_keeps_the_cortex_thicker_than_a_224px_whole_image(phantom):
    """Paper §"Multi-crop data augmentation": resizing the whole radiograph loses bone structure.

    At the paper patch size (256) a metacarpal patch spans its crop square (~70 mm) while a whole
    image downsized to 224 px spans the 359 mm field. Cortical thickness (phantom truth,
    (outer - inner diameter) / 2) in pixels: patch = t · 256 / side_mm, whole image = t · 224 /
    long_side_mm. The paper's native 0.1 mm pixels (10 px/mm) are finer than either, so these are
    the thicknesses the pixels can carry. The scale actually realised is cross-checked on the
    stored patch against the downsized mask (largest inscribed disk of the bone in both).
    """
    truth = pd.read_csv(phantom.root / "truth" / "bones.csv").set_index(["image_id", "bone"])
    cfg = PatchConfig(patch_size=256)
    checked = 0
    for image_id in phantom.image_ids[:4]:
        labels, image = _truth(phantom, image_id), phantom.image(image_id)
        spacing = float(phantom.row(image_id)["pixel_spacing_mm"])
        h, w = labels.shape
        f = 224 / max(h, w)
        for p in extract_bones(image, labels, None, cfg, spacing):
            if p.missing or not p.bone.startswith("M"):
                continue
            row = truth.loc[(image_id, p.bone)]
            cortex_mm = (row["outer_diameter_mm"] - row["inner_diameter_mm"]) / 2
            side_mm = (p.crop[2] - p.crop[0]) * spacing
            patch_px = cortex_mm * 256 / side_mm
            whole_px = cortex_mm * 224 / (max(h, w) * spacing)
            assert 256 / side_mm < 1 / 0.1                # below the paper's native sampling
            assert patch_px >= 4.0 and whole_px < 1.5 and patch_px > 4 * whole_px, (image_id, p.bone)
            mask = torch.from_numpy((labels == p.bone_id).astype(np.float32))[None, None]
            small = F.interpolate(mask, size=(round(h * f), round(w * f)), mode="bilinear",
                                  antialias=True)[0, 0].numpy() > 0.5
            width_patch = 2 * ndi.distance_transform_edt(p.patch > 0).max()
            width_whole = 2 * ndi.distance_transform_edt(small).max()
            assert width_patch / width_whole == pytest.approx((256 / side_mm) / (f / spacing), rel=0.3)
            checked += 1
    assert checked >= 15
