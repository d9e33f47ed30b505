"""bench.progress: epoch lines only when OSTEOBENCH_EPOCH_LINES is set."""
from __future__ import annotations

from bench.progress import ENV, epoch_line


def test_epoch_line_off_by_default_and_formatted_when_on(monkeypatch, capsys):
    monkeypatch.delenv(ENV, raising=False)
    epoch_line("probe", 0, 3, {"loss": 0.5}, 1.0)
    monkeypatch.setenv(ENV, "0")
    epoch_line("probe", 0, 3, {"loss": 0.5}, 1.0)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv(ENV, "1")
    epoch_line("probe", 2, 3, {"loss": 0.123456, "val_auc": float("nan")}, 12.345)
    assert capsys.readouterr().err == "probe epoch 3/3: loss 0.1235, val_auc nan, 12.35 s\n"
