"""Dataset fingerprints (bench.fingerprint): file contents, external images, truth, split records, the memo."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from bench.fingerprint import MEMO_FILE, Fingerprint, content_fingerprint, dataset_fingerprint


def _dataset(root: Path, external: Path | None = None) -> Path:
    """Two images (one outside the folder when `external` is given), a mask and a truth map."""
    (root / "images").mkdir(parents=True)
    (root / "masks" / "a").mkdir(parents=True)
    (root / "truth").mkdir()
    (root / "images" / "a.png").write_bytes(b"A" * 64)
    (root / "masks" / "a" / "r1.png").write_bytes(b"M" * 32)
    (root / "truth" / "a.png").write_bytes(b"T" * 32)
    second = "images/b.png"
    if external is not None:
        external.write_bytes(b"B" * 64)
        second = str(external)
    else:
        (root / "images" / "b.png").write_bytes(b"B" * 64)
    pd.DataFrame({"image_id": ["a", "b"], "subject_id": ["s1", "s2"], "path": ["images/a.png", second],
                  "split": ["train", "test"]}).to_csv(root / "manifest.csv", index=False)
    (root / "dataset.json").write_text(json.dumps({"name": "d"}))
    return root


def _rewrite_same_size(path: Path, byte: bytes) -> None:
    st = path.stat()
    path.write_bytes(byte * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))   # a later write, however coarse the clock


def test_same_size_rewrites_of_images_masks_and_truth_change_the_fingerprint(tmp_path):
    root = _dataset(tmp_path / "d")
    seen = {dataset_fingerprint(root)}
    for rel, byte in (("images/a.png", b"a"), ("masks/a/r1.png", b"m"), ("truth/a.png", b"t")):
        _rewrite_same_size(root / rel, byte)
        fp = dataset_fingerprint(root)
        assert fp not in seen, rel
        seen.add(fp)


def test_an_image_outside_the_folder_is_hashed_by_content(tmp_path):
    outside = tmp_path / "elsewhere.png"
    root = _dataset(tmp_path / "d", external=outside)
    before = Fingerprint.of(root)
    _rewrite_same_size(outside, b"x")                 # `bench data import` without --copy: the original changed
    after = Fingerprint.of(root)
    assert after.full != before.full and after.content != before.content


def test_the_memo_is_used_while_size_and_time_match_and_a_broken_memo_is_ignored(tmp_path):
    root = _dataset(tmp_path / "d")
    first = dataset_fingerprint(root)
    memo = json.loads((root / MEMO_FILE).read_text())
    assert set(memo) == {"images/a.png", "images/b.png", "masks/a/r1.png", "truth/a.png"}
    entry = memo["images/a.png"]
    entry[2] = "0" * 40                                # a memo entry that matches size and time is trusted
    (root / MEMO_FILE).write_text(json.dumps(memo))
    assert dataset_fingerprint(root) != first
    (root / MEMO_FILE).write_text("{not json")       # unreadable: every file is read again
    assert dataset_fingerprint(root) == first


def test_resplitting_changes_only_the_full_fingerprint(tmp_path):
    root = _dataset(tmp_path / "d")
    before = Fingerprint.of(root)
    manifest = pd.read_csv(root / "manifest.csv")
    manifest["split"] = ["test", "train"]
    manifest.to_csv(root / "manifest.csv", index=False)
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "split": {"seed": 3, "fractions": [0.8, 0.1, 0.1]},
                                                   "kfold": {"seed": 3, "k": 5}}))
    after = Fingerprint.of(root)
    assert after.content == before.content == content_fingerprint(root)
    assert after.full != before.full
    (root / "dataset.json").write_text(json.dumps({**meta, "name": "other"}))
    assert content_fingerprint(root) != before.content   # other metadata still counts


def test_the_device_spelling_is_not_keyed_but_the_device_type_and_threads_are():
    """`run.device` reaches a stage key as the resolved device type only (bench.stage.UNKEYED_OPTIONS)."""
    import methods.segmentation.config  # noqa: F401  (registers the section)
    from bench.config import resolve
    from bench.stage import stage_key
    from methods.pipeline import SEGMENT

    def key(sets: dict, device_type: str) -> str:
        return stage_key(SEGMENT, resolve("smoke", sets=sets), 0, {}, {"seg": "s", "cls": "c"}, device_type)[0]

    assert key({}, "cpu") == key({"run.device": "cpu"}, "cpu")
    assert key({"run.device": "cuda"}, "cuda") == key({"run.device": "cuda:0"}, "cuda") == key({}, "cuda")
    assert key({}, "cpu") != key({}, "cuda")
    assert key({}, "cpu") != key({"run.num_threads": 1}, "cpu")


def test_a_stage_keyed_by_one_option_ignores_the_rest_of_its_section():
    """The supervised stage reads ``ssl.encoder`` only: SSL schedule options do not retrain it."""
    import methods.ssl.config  # noqa: F401  (registers the section)
    import methods.supervised  # noqa: F401
    from bench.config import resolve
    from bench.stage import stage_key
    from methods.pipeline import SUPERVISED

    def key(sets: dict) -> str:
        return stage_key(SUPERVISED, resolve("smoke", sets=sets), 0, {"extract": "e"}, {"cls": "c"}, "cpu")[0]

    assert key({}) == key({"ssl.epochs": 3, "ssl.lr": 0.1})
    assert key({}) != key({"ssl.encoder": "resnet34"})


def test_evaluation_and_figure_options_key_the_companions_alone():
    """segmentation.eval_splits / eval_samples / figures key segment_eval, not the trained model;
    patches.figure_images keys the contact sheet, not the patch store (Stage.unkeyed)."""
    import methods.bones  # noqa: F401  (registers the sections)
    import methods.segmentation.config  # noqa: F401
    from bench.config import resolve
    from bench.stage import stage_key
    from methods.pipeline import EXTRACT, SEGMENT

    def key(stage, sets: dict, inputs: dict) -> str:
        return stage_key(stage, resolve("smoke", sets=sets), 0, inputs, {"seg": "s", "cls": "c"}, "cpu")[0]

    (evaluation,), (sheet,) = SEGMENT.companions, EXTRACT.companions
    for stage, inputs, changes, keyed in ((SEGMENT, {}, {"segmentation.figures": 7, "segmentation.eval_samples": 8,
                                                          "segmentation.eval_splits": "test"},
                                           {"segmentation.epochs": 3}),
                                          (EXTRACT, {"segment": "k"}, {"patches.figure_images": 9},
                                           {"patches.patch_size": 32})):
        (companion,) = stage.companions
        assert key(stage, {}, inputs) == key(stage, changes, inputs) != key(stage, keyed, inputs)
        below = {stage.name: "k"}
        assert key(companion, {}, below) != key(companion, changes, below)
    assert key(evaluation, {}, {"segment": "k"}) != key(evaluation, {}, {"segment": "other"})
    assert sheet.sections == ("patches.figure_images",)
