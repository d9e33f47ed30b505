"""Config layering, validation and coercion (bench.config)."""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import pytest

from bench import config
from bench.errors import BenchError


@dataclass
class _Toy:
    gamma0: float = 0.5        # start of the relaxation
    schedule: str = "plateau"  # plateau | linear
    epochs: int = 10           # training epochs
    widths: tuple[int, ...] = (8, 16)  # channels
    bias: bool = True          # use a bias


@pytest.fixture(autouse=True)
def toy_section():
    config.register_section("toysec", _Toy, {"smoke": {"epochs": 2}, "paper": {"epochs": 200}})
    yield
    config._SECTIONS.pop("toysec", None)


def test_profile_then_file_then_set_then_entry(tmp_path):
    assert config.resolve("smoke").toysec.epochs == 2
    assert config.resolve("quick").toysec.epochs == 10
    overlay = tmp_path / "o.yaml"
    overlay.write_text("toysec:\n  epochs: 7\n  gamma0: 0.25\n")
    cfg = config.resolve("paper", config_files=[overlay], sets=["toysec.epochs=9"])
    assert (cfg.toysec.epochs, cfg.toysec.gamma0) == (9, 0.25)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = config.resolve("paper", sets=["toysec.epochs=9"], entry_overrides={"toysec.epochs": 1},
                             entry_name="abl")
    assert cfg.toysec.epochs == 1 and any("abl" in str(w.message) for w in caught)
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        config.resolve("paper", sets=["toysec.epochs=9"], entry_overrides={"toysec.epochs": 1}, entry_name="abl")
    assert not again                                        # said once a process, not at every resolve


def test_coercion_from_strings():
    cfg = config.resolve("smoke", sets=["toysec.gamma0=1e-2", "toysec.bias=false", "toysec.widths=4,8,16",
                                        "toysec.epochs=3"])
    assert cfg.toysec.gamma0 == 0.01 and cfg.toysec.bias is False
    assert cfg.toysec.widths == (4, 8, 16) and cfg.toysec.epochs == 3


@pytest.mark.parametrize("item,needle", [
    ("toysec.gama0=0.3", "toysec.gamma0"),        # typo → nearest valid key
    ("toysec.epochs=abc", "not a valid int"),
    ("toysec.epochs=1.5", "not a valid int"),
    ("toysec.bias=maybe", "not a valid bool"),
    ("nosuch.key=1", "unknown option"),
    ("toysec.epochs", "section.key=value"),
    ("toysec.gamma0=nan", "must be a finite number"),
    ("toysec.gamma0=-inf", "must be a finite number"),
    ("data.phantom_profile=huge", "data.phantom_profile"),
    ("data.phantom_seed=-2", "data.phantom_seed"),
    ("data.fold=7", "data.fold = 7 picks a fold"),
])
def test_bad_overrides_name_the_key(item, needle):
    with pytest.raises(BenchError, match=needle.replace(".", r"\.")):
        config.resolve("smoke", sets=[item])


@pytest.mark.parametrize("item", ["segmentation.lr=-1", "segmentation.min_lr=1",
                                  "segmentation.weight_decay=-0.1", "segmentation.lr_factor=1"])
def test_segmentation_schedule_values_are_checked(item):
    import methods.segmentation.config  # noqa: F401  (registers the section)

    with pytest.raises(BenchError, match=re.escape("segmentation.lr must be >= 0 (0 freezes the weights), "
                                                   "weight_decay >= 0, min_lr in [0, lr]")):
        config.resolve("smoke", sets=[item])


def test_yaml_type_errors_and_unknown_profile(tmp_path):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text("toysec:\n  epochs: [1, 2]\n")
    with pytest.raises(BenchError, match="toysec.epochs"):
        config.resolve("smoke", config_files=[overlay])
    with pytest.raises(BenchError, match="unknown profile"):
        config.resolve("huge")
    with pytest.raises(BenchError, match="does not exist"):
        config.resolve("smoke", config_files=[tmp_path / "missing.yaml"])
    with pytest.raises(BenchError, match="is a folder"):
        config.resolve("smoke", config_files=[tmp_path])
    twice = tmp_path / "twice.yaml"
    twice.write_text("toysec:\n  epochs: 1\n  epochs: 2\n")            # plain YAML would keep 2 silently
    with pytest.raises(BenchError, match="the key 'epochs' is given twice"):
        config.resolve("smoke", config_files=[twice])
    twice.write_text("toysec:\n  epochs: 1\ntoysec.epochs: 2\n")
    with pytest.raises(BenchError, match="gives toysec.epochs twice"):
        config.resolve("smoke", config_files=[twice])
    saved = tmp_path / "saved.yaml"                                   # e.g. a run's config.json
    saved.write_text("profile: paper\ntoysec:\n  epochs: 3\n")
    with pytest.warns(UserWarning, match="says profile 'paper'; the run's profile is 'smoke'"):
        assert config.resolve("smoke", config_files=[saved]).toysec.epochs == 3
    run_json = tmp_path / "config.json"                               # a run folder's config.json as written
    run_json.write_text('{"config": {"toysec": {"epochs": 4}}, "data": {}, "entry": "toy", "profile": "smoke", '
                        '"run_key": "0123", "seed": 0, "stages": {}, "suite": "s", "version": "0.1.0"}')
    assert config.resolve("smoke", config_files=[run_json]).toysec.epochs == 4
    pooled = tmp_path / "pooled.json"                                 # a pooled cross-validation's (bench.cv)
    pooled.write_text('{"config": {"toysec": {"epochs": 5}, "data": {"folds": 3, "fold": "all", "fold_seed": 2}}, '
                      '"run_key": "0123", "profile": "smoke"}')
    assert config.load_config_file(pooled) == {"toysec.epochs": 5, "data.folds": 3, "data.fold_seed": 2}
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00toysec")
    with pytest.raises(BenchError, match="not UTF-8 text"):
        config.resolve("smoke", config_files=[binary])


def test_to_dict_round_trips_through_sets():
    cfg = config.resolve("smoke", sets=["toysec.gamma0=0.125"])
    d = cfg.to_dict()
    assert d["profile"] == "smoke" and d["toysec"]["gamma0"] == 0.125 and d["toysec"]["widths"] == [8, 16]
    again = config.resolve("smoke", sets={f"toysec.{k}": v for k, v in d["toysec"].items()})
    assert again.to_dict() == d


def test_describe_lists_field_comments():
    rows = {k: doc for k, _, _, doc in config.describe()}
    assert rows["toysec.gamma0"] == "start of the relaxation"
    assert "data.seg" in rows and "run.device" in rows


def test_resolve_validates_sections_before_anything_runs():
    import methods.segmentation.config  # noqa: F401  (registers the section)

    with pytest.raises(BenchError, match="segmentation.ce_weight must be >= 0"):
        config.resolve("smoke", sets={"segmentation.ce_weight": "-1"})
    with pytest.raises(BenchError, match="gamma0 must lie in"):
        config.resolve("paper", sets=["segmentation.gamma0=2"])
    assert config.resolve("smoke", sets={"segmentation.ce_weight": "0.5"}).segmentation.ce_weight == 0.5


@pytest.mark.parametrize("item, needle", [
    ("landmarks.epochs=-1", "landmarks.epochs and landmarks.batch_size must be >= 1"),
    ("landmarks.lr=0", "landmarks.lr > 0"),
    ("supervised.epochs=0", "supervised.epochs and supervised.batch_size must be >= 1"),
    ("supervised.input_size=4", "supervised.input_size >= 8"),
    ("supervised.lr=-1", "supervised.lr must be > 0"),
])
def test_baseline_training_options_are_validated(item, needle):
    """A schedule that cannot train stops at resolve with its key named, not deep in the loop."""
    import baselines.landmarks  # noqa: F401  (registers the sections)
    import methods.supervised  # noqa: F401

    with pytest.raises(BenchError, match=needle.replace(".", r"\.")):
        config.resolve("smoke", sets=[item])
    config.resolve("smoke", sets=[item.split("=")[0] + "=" + ("1e-3" if "lr" in item else "64" if "size" in item
                                                               else "1")])


@pytest.mark.parametrize("item, needle", [
    ("run.device=tpu", "run.device = 'tpu': use auto, cpu, cuda or cuda:N"),
    ("run.num_threads=-1", "run.num_threads = -1 must be >= 0"),
    ("ssl.lr=-1", "ssl.lr must be > 0"),
    ("ssl.epochs=-1", "ssl.epochs must be >= 0"),
    ("ssl.batch_size=1", "ssl.batch_size must be >= 2"),
    ("ssl.temperature=0", "ssl.temperature must be > 0"),
    ("ssl.swav_iterations=0", "ssl.swav_iterations >= 1"),
    ("ssl.encoder=resnet5O", "ssl.encoder = 'resnet5O' is not a timm model; did you mean resnet50"),
    ("probe.epochs=0", "probe.epochs and probe.batch_size must be >= 1"),
    ("probe.lr=-3", "probe.lr must be > 0"),
    ("roi.jitter=0.5", "roi.jitter in [0, 0.5)"),
    ("roi.size_mm=0", "roi.forearm_mm and roi.size_mm must be > 0"),
    ("vgg.name=vgg61", "vgg.name = 'vgg61' is not a timm model"),
    ("vgg.mlp_ratio=0", "vgg.mlp_ratio = 0.0 must be > 0"),
    ("wang.d_model=33", "wang.d_model = 33 must be a multiple of wang.heads = 2"),
    ("wang.dropout=1", "wang.dropout = 1.0 must lie in [0, 1)"),
    ("tune.lam_low=0", "tune.lam_low = 0.0 and tune.lam_high = 100.0 must satisfy"),
    ("tune.schedules=plateau,warm", "unknown: warm"),
    ("radiogrammetry.c_grid=", "radiogrammetry.c_grid is empty"),
    ("radiogrammetry.c_grid=1,-2", "radiogrammetry.c_grid holds [-2.0]; every value must be a finite number > 0"),
    ("radiogrammetry.bones=M2,M2", "radiogrammetry.bones names ['M2'] more than once"),
    ("landmarks.bones=ulna,ulna", "landmarks.bones names ['ulna'] more than once"),
    ("landmarks.bones=ulna,M9", "landmarks.bones has unknown names ['M9']"),
])
def test_pretraining_probe_baseline_and_run_options_are_validated(item, needle):
    """Each bad value stops at resolve, naming its key, before a segmentation training runs for hours
    ahead of the stage that would have failed on it."""
    import bench.tune.space  # noqa: F401  (registers the tune section)
    from bench.registry import load_entries

    load_entries()
    with pytest.raises(BenchError, match=re.escape(needle)):
        config.resolve("smoke", sets=[item])


@pytest.mark.parametrize("text, value", [("true", "true"), ("false", "false"), ("auto", "auto"), ("'true'", "true")])
def test_yaml_booleans_take_the_choice_they_spell(tmp_path, text, value):
    """`run: {deterministic: true}` in a file: YAML reads true as a boolean; the option's choice is 'true'."""
    overlay = tmp_path / "det.yaml"
    overlay.write_text(f"run:\n  deterministic: {text}\n")
    assert config.resolve("smoke", config_files=[overlay]).run.deterministic == value


def test_every_section_with_numeric_options_validates_them():
    """A new section with numbers must say which values it refuses (a validate method)."""
    import dataclasses

    import bench.tune.space  # noqa: F401  (registers the tune section)
    from bench.registry import load_entries

    load_entries()
    ours = ("bench.", "methods.", "baselines.", "reports.")         # not the toy sections other tests register
    unchecked = [name for name, spec in config.sections().items() if spec.cls.__module__.startswith(ours)
                 and any(f.type in (int, float, "int", "float") for f in dataclasses.fields(spec.cls))
                 and not callable(getattr(spec.cls, "validate", None))]
    assert unchecked == []
