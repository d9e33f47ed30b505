"""`bench list` and `bench show` over a small results folder; user errors exit 2 without traceback."""
from __future__ import annotations

import pytest

from bench import registry
from bench.cli import main
from bench.runner import Runner


def test_list_shows_entries_suites_and_options(capsys):
    assert main(["list", "--plugin", "toy_entries"]) == 0
    out = capsys.readouterr().out
    assert "clinical" in out and "table8" in out and "paper" in out
    assert main(["list", "--options"]) == 0
    assert "data.phantom_seed" in capsys.readouterr().out


def test_show_levels(tmp_path, tiny_dataset, capsys):
    registry.load_entries(["toy_entries"])
    Runner(tmp_path / "res", suite="s", data_seg=str(tiny_dataset), data_cls=str(tiny_dataset),
           device="cpu", progress=False).run(["toy"], [0, 1])
    assert main(["show", str(tmp_path / "res" / "s" / "toy" / "seed0")]) == 0
    seed_out = capsys.readouterr().out
    assert "toy seed 0" in seed_out and "auc" in seed_out
    assert main(["show", str(tmp_path / "res" / "s" / "toy")]) == 0
    entry_out = capsys.readouterr().out
    assert "±" in entry_out and "seeds" in entry_out
    assert main(["show", str(tmp_path / "res" / "s")]) == 0
    assert "toy" in capsys.readouterr().out
    assert main(["show", str(tmp_path / "res" / "s" / "toy"), "--metrics", "spec_at_sens90", "brier"]) == 0
    header = [line for line in capsys.readouterr().out.splitlines() if "spec_at_sens90" in line]
    assert header and "brier" in header[0] and "f1" not in header[0]
    assert main(["show", str(tmp_path / "res" / "s"), "--metrics", "aucc"]) == 2
    assert "--metrics aucc is not a metric" in capsys.readouterr().err
    assert main(["show", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["run", "--entry", "toy", "--set", "run.devize=cpu", "--results", str(tmp_path / "r2")]) == 2
    assert "run.device" in capsys.readouterr().err


def test_own_warnings_print_as_one_line_and_library_ones_as_python_shows_them():
    import warnings

    import bench.registry
    from bench.cli import _format_warning

    ours = _format_warning(UserWarning("M1 not learnt"), UserWarning, bench.registry.__file__, 10, "warnings.warn(x)")
    assert ours == "bench: warning: M1 not learnt\n"
    theirs = _format_warning(UserWarning("deprecated"), UserWarning, warnings.__file__, 10, "warnings.warn(x)")
    assert "UserWarning: deprecated" in theirs and warnings.__file__ in theirs


def test_show_of_a_suite_without_complete_runs_says_so(tmp_path, capsys):
    from bench.cli import main

    (tmp_path / "s" / "e" / "seed0.failed").mkdir(parents=True)
    with pytest.warns(UserWarning, match="e seed 0 is left out: its latest attempt failed"):
        assert main(["show", str(tmp_path / "s")]) == 2
    assert "no complete run here" in capsys.readouterr().err


def test_a_reader_that_goes_away_ends_the_output_not_the_command():
    """`bench list --options | head -1`: the pipe closes before bench writes; no BrokenPipeError."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-m", "bench.cli", "list", "--options"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    child.stdout.close()                                  # the reader is gone before bench has written
    err = child.stderr.read().decode()
    assert child.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_show_of_a_split_the_runs_lack_names_the_splits_they_have():
    import pandas as pd
    import pytest

    from bench.commands.show import _show_frame
    from bench.errors import BenchError

    frame = pd.DataFrame({"entry": ["e"] * 3, "seed": [0] * 3, "split": ["test", "fold0", "extra"],
                          "metric": ["auc", "auc", "images"], "value": [0.8, 0.7, 5.0]})
    with pytest.raises(BenchError, match=r"have fold0, test \(a pooled cross-validation"):
        _show_frame(frame, "val", False, ["auc"])
