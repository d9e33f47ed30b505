"""`bench predict` without a trained run: the screening flag logic (methods.screen.assess), option and
output-folder checks, and an export that cannot be made."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.data.format import BONES
from bench.errors import BenchError
from bench.predict import run_predictions
from methods.bones import BonePatch
from methods.screen import ScreenConfig, assess


def _bone(name: str, missing: bool = False, confidence: float = 0.9, reason: str = "") -> BonePatch:
    return BonePatch(name, BONES[name], None, missing=missing, reason=reason if missing else "",
                     bbox=None if missing else (0, 0, 10, 10), confidence=confidence)


def test_flags_withhold_or_lower_confidence_as_documented():
    cfg = ScreenConfig()                      # min_bones 4, min_confidence 0.6, min_side_fraction 0.5
    canvas = (512, 384)
    whole = [_bone(b) for b in BONES]
    assert assess(whole, (2000, 1500), canvas, cfg) == ([], [], "ok")
    three = [_bone(b, missing=i >= 3, reason="absent") for i, b in enumerate(BONES)]
    flags, notes, status = assess(three, (2000, 1500), canvas, cfg)
    assert status == "withheld" and flags == ["missing-bones", "too-few-bones"]
    assert "M2 (absent)" in notes[0] and "3 usable bone(s) < 4" in notes[1]
    none = [_bone(b, missing=True, reason="absent") for b in BONES]
    assert assess(none, (2000, 1500), canvas, cfg)[0] == ["missing-bones", "too-few-bones", "no-bones"]
    vague = [_bone(b, confidence=0.4) for b in BONES]
    assert assess(vague, (2000, 1500), canvas, cfg)[::2] == (["low-confidence-segmentation"], "low-confidence")
    flags, notes, status = assess(whole, (150, 400), canvas, cfg)   # 150 < 0.5 * 384
    assert (flags, status) == (["image-too-small"], "low-confidence") and "150 px < 192 px" in notes[0]
    five = [_bone(b, missing=i == 0, reason="cut") for i, b in enumerate(BONES)]
    assert assess(five, (2000, 1500), canvas, cfg)[::2] == (["missing-bones"], "ok")
    ref = 0.04                                # the run's 99th percentile of the mean entropy
    assert assess(whole, (2000, 1500), canvas, cfg, 0.0499, ref) == ([], [], "ok")        # < 1.25 × 0.04
    flags, notes, status = assess(whole, (2000, 1500), canvas, cfg, 0.0501, ref)
    assert (flags, status) == (["out-of-distribution"], "withheld") and "0.0501 nats > 1.25 × 0.0400" in notes[0]
    assert assess(whole, (2000, 1500), canvas, cfg, model_probabilities=[0.55, 0.9], threshold=0.5) == ([], [], "ok")
    flags, notes, status = assess(whole, (2000, 1500), canvas, cfg, model_probabilities=[0.45, 0.9], threshold=0.5)
    assert (flags, status) == (["models-disagree"], "low-confidence") and "0.450, 0.900 around the threshold 0.5" in notes[0]
    assert assess(whole, (2000, 1500), canvas, cfg, model_probabilities=[0.45, 0.9], threshold=0.4)[2] == "ok"
    assert assess(whole, (2000, 1500), canvas, cfg, sides=("L", "L")) == ([], [], "ok")
    assert assess(whole, (2000, 1500), canvas, cfg, sides=("", "R")) == ([], [], "ok")     # detected, not given
    flags, notes, status = assess(whole, (2000, 1500), canvas, cfg, sides=("L", "R"))
    assert (flags, status) == (["laterality-mismatch"], "low-confidence") and "tagged as a left hand" in notes[0]
    flags, notes, status = assess(whole, (2000, 1500), canvas, cfg, twelve_bit=True)
    assert (flags, status) == (["looks-12-bit"], "low-confidence") and "below 4096" in notes[0]
    flags, notes, status = assess(whole, (2000, 1500), canvas, cfg, both_hands=True)
    assert (flags, status) == (["both-hands"], "withheld") and "laterality is B" in notes[0]
    with pytest.raises(BenchError, match="--min-bones must lie in"):
        ScreenConfig.from_dict({}, min_bones=9)


def test_a_run_on_oracle_patches_cannot_be_exported(tmp_path):
    """simclr with patches.source=truth ran no segment stage: the export says why and what to do."""
    from methods.export import stage_dirs

    run_dir = tmp_path / "results" / "s" / "simclr" / "seed0"
    config = {"entry": "simclr", "stages": {"extract": "a", "pretrain": "b", "probe": "c"}}
    with pytest.raises(BenchError, match="no segment stage.*it ran extract, pretrain, probe.*patches.source=predicted"):
        stage_dirs(run_dir, config)


@pytest.mark.parametrize("spacing", ["-1", "0", "nan"])
def test_non_positive_pixel_spacing_is_refused_before_anything_runs(tmp_path, capsys, spacing):
    from bench.data.imageio import write_png16

    write_png16(tmp_path / "a.png", np.zeros((8, 8)))
    code = main(["predict", str(tmp_path / "no-bundle.osteo"), str(tmp_path / "a.png"), "--out",
                 str(tmp_path / "out"), "--pixel-spacing", spacing, "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "--pixel-spacing must be a positive number" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(BenchError, match="--pixel-spacing"):
        run_predictions(object(), [tmp_path / "a.png"], tmp_path / "out", pixel_spacing_mm=float(spacing))


def test_unwritable_out_names_the_folder(tmp_path):
    (tmp_path / "afile").write_text("in the way")

    class Nothing:
        def describe(self) -> dict:
            return {}

    with pytest.raises(BenchError, match=r"cannot write .*afile/out: cannot create files in .*afile"):
        run_predictions(Nothing(), [], tmp_path / "afile" / "out")


def test_out_is_replaced_whole_and_only_when_it_holds_an_earlier_prediction(tmp_path):
    """A rerun into the same --out leaves no overlay of the earlier run; a folder of other files is refused."""
    class Nothing:
        def describe(self) -> dict:
            return {}

    out = tmp_path / "out"
    (out / "overlays").mkdir(parents=True)
    (out / "overlays" / "stale.png").write_bytes(b"old")
    (out / "predictions.json").write_text("{}")
    run_predictions(Nothing(), [], out)
    assert sorted(p.name for p in out.iterdir()) == ["predictions.csv", "predictions.json"]   # stale overlay gone
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "scan.dcm").write_bytes(b"data")
    with pytest.raises(BenchError, match="already holds other files"):
        run_predictions(Nothing(), [], mine)
    assert (mine / "scan.dcm").read_bytes() == b"data" and not list(tmp_path.glob(".*tmp-*"))


@pytest.mark.parametrize("options, message", [
    ({"ood_factor": float("nan")}, "--ood-factor must be a finite number > 0, got nan"),
    ({"ood_factor": float("inf")}, "--ood-factor must be a finite number > 0"),
    ({"ood_factor": -1.0}, "--ood-factor must be a finite number > 0, got -1.0"),
    ({"min_confidence": float("nan")}, "--min-confidence must lie in"),
    ({"threshold": float("nan")}, "--threshold"),
])
def test_screening_options_that_would_switch_a_check_off_are_refused(options, message):
    with pytest.raises(BenchError, match=message.replace("[", "\\[")):
        ScreenConfig(**options).validate()


def test_a_file_given_twice_is_screened_once_and_said(tmp_path, monkeypatch):
    from bench.predict import collect_inputs

    (tmp_path / "scans").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "scans" / name).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="2 input\\(s\\) name a file already given"):
        files, skipped = collect_inputs(["scans/a.png", str(tmp_path / "scans" / "a.png"), "scans"])
    assert [f.name for f in files] == ["a.png", "b.png"] and not skipped


class _Screening:
    def __init__(self, name: str, value: float):
        self.name, self.value = name, value

    def row(self) -> dict:
        return {"probability": float("nan") if 0.2 < self.value < 0.3 else self.value, "status": "ok", "flags": "",
                "decision": "normal", "n_bones": np.int64(7)}

    def record(self) -> dict:
        return {"probability": self.value, "bones": {"ulna": np.float32(self.value)}}

    def overlay_png(self) -> bytes:
        return f"png of {self.name}".encode()


class _Counting:
    """Screens an image to its mean grey; counts what it screened; interrupts after `stop_after` images."""

    meta = {"files": {"a": "1"}}

    def __init__(self, stop_after: int | None = None):
        self.screened: list[str] = []
        self.stop_after = stop_after

    def describe(self) -> dict:
        return {"model": "counting"}

    def predict(self, rads, names, batch_size=8):
        if self.stop_after is not None and len(self.screened) >= self.stop_after:
            raise KeyboardInterrupt
        self.screened += names
        return [_Screening(n, float(r.pixels.mean())) for r, n in zip(rads, names)]


def test_an_interrupted_prediction_resumes_with_the_images_it_had_screened(tmp_path, capsys):
    """The rerun screens only the rest, and its outputs equal those of an uninterrupted run; a changed
    file, or other screening options, are screened again; the journal is gone when done."""
    from bench.data.imageio import write_png16

    scans = tmp_path / "scans"
    scans.mkdir()
    for k in range(7):
        write_png16(scans / f"s{k}.png", np.full((8, 8), 0.1 * k + 0.05, np.float32))
    whole = _Counting()
    run_predictions(whole, [scans], tmp_path / "whole", batch_size=2)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_predictions(_Counting(stop_after=4), [scans], out, batch_size=2)
    assert not out.exists() and len(list((tmp_path / ".out.partial" / "done").glob("*.json"))) == 4
    again = _Counting()
    run_predictions(again, [scans], out, batch_size=3)
    assert again.screened == ["s4", "s5", "s6"] and "4 of 7 image(s) were screened by an interrupted run" in capsys.readouterr().err
    for name in ("predictions.csv", "predictions.json"):
        assert (out / name).read_text().replace(str(out), "") == (tmp_path / "whole" / name).read_text().replace(
            str(tmp_path / "whole"), "").replace('"batch_size": 2', '"batch_size": 3')
    assert [(out / "overlays" / f"s{k}.png").read_bytes() for k in range(7)] == \
        [f"png of s{k}".encode() for k in range(7)]
    assert not (tmp_path / ".out.partial").exists()
    assert pd.read_csv(out / "predictions.csv")["seen"].isna().all()        # the model records no training images
    with pytest.raises(KeyboardInterrupt):                              # interrupted again, then a file changes
        run_predictions(_Counting(stop_after=4), [scans], out, batch_size=2)
    write_png16(scans / "s1.png", np.full((8, 8), 0.9, np.float32))
    changed = _Counting()
    run_predictions(changed, [scans], out, batch_size=2)
    assert changed.screened == ["s1", "s4", "s5", "s6"]
    with pytest.raises(KeyboardInterrupt):
        run_predictions(_Counting(stop_after=4), [scans], out, batch_size=2)
    other = _Counting()
    run_predictions(other, [scans], out, batch_size=2, pixel_spacing_mm=0.2)   # other options: from scratch
    assert len(other.screened) == 7 and sorted(p.name for p in tmp_path.iterdir()) == ["out", "scans", "whole"]


def test_predictions_say_which_images_the_model_was_fitted_on(tmp_path):
    from bench.data.digests import file_digests
    from bench.data.imageio import write_png16

    for k in range(3):
        write_png16(tmp_path / f"s{k}.png", np.full((8, 8), 0.1 * k + 0.05, np.float32))
    fit, test = file_digests([tmp_path / "s0.png", tmp_path / "s2.png"])
    model = _Counting()
    model.meta = {**model.meta, "training_images": {"fit": {fit: "seg train"}, "held_out": {test: "cls test"}}}
    run_predictions(model, [tmp_path], tmp_path / "out")
    frame = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False).set_index("name")
    assert frame["seen"].to_dict() == {"s0": "fit", "s1": "", "s2": "held_out"}
    assert frame.loc["s0", "seen_as"] == "seg train"
