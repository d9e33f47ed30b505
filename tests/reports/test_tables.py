"""Tables 3-8: cells are mean ± std over seeds, bold = column best, underline = largest drop, the
rows and columns of the paper, LaTeX escaping and booktabs structure, markers after Holm."""
from __future__ import annotations

import re
import statistics
import sys
import types

import numpy as np
import pandas as pd
import pytest
from suite_data import METRICS, SUITE, write_suite

from bench import results as store
from reports import latex, tables as tab
from reports.significance import TEST_COLUMNS, Significance, run_tests
from reports.summary import best_full_entry, summarise


def _build(tmp_path, registered, entries=None, seeds=(0, 1, 2)):
    write_suite(tmp_path, entries, seeds=seeds)
    summary = summarise(store.load_metrics(tmp_path, SUITE))
    best = best_full_entry(summary, registered)
    return summary, best, tab.assemble(summary, registered, best)


def _body_rows(tex: str) -> list[list[str]]:
    """Cells of the data rows (between \\midrule and \\bottomrule)."""
    body = tex.split("\\midrule\n", 1)[1].split("\\bottomrule", 1)[0]
    return [[c.strip() for c in line.removesuffix("\\\\").split(" & ")] for line in body.strip().splitlines()]


def _header(tex: str) -> list[str]:
    return [c.strip() for c in tex.split("\\toprule\n", 1)[1].split("\n", 1)[0].removesuffix("\\\\").split(" & ")]


def _colspec(tex: str) -> str:
    """Column letters of the tabular: l/c/p with >{...} and {width} groups removed."""
    line = next(x for x in tex.splitlines() if x.startswith("\\begin{tabular}"))
    inner = line[len("\\begin{tabular}{"):-1]
    return re.sub(r">\{[^}]*\}|\{[^}]*\}", "", inner.replace("\\arraybackslash", ""))


def _strip(cell: str) -> str:
    for cmd in ("\\textbf{", "\\underline{"):
        if cell.startswith(cmd):
            cell = cell[len(cmd):].replace("}", "", 1)
    return cell.replace("$^{\\dagger}$", "")


def _expected_cell(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} $\\pm$ {statistics.stdev(values):.2f}"


def test_summary_is_mean_and_sample_std(tmp_path, registered):
    summary, _, _ = _build(tmp_path, registered)
    row = summary[(summary.entry == "rt_swav") & (summary.split == "test") & (summary.metric == "f1")].iloc[0]
    assert row["mean"] == pytest.approx(statistics.mean([0.50, 0.55, 0.57]))
    assert row["std"] == pytest.approx(statistics.stdev([0.50, 0.55, 0.57]))  # ddof = 1
    assert row["n"] == 3


def test_table3_cells_bold_and_columns(tmp_path, registered):
    _, best, tables = _build(tmp_path, registered)
    assert best == "rt_simclr"  # highest mean test AUC among kind=full
    tex = tab.to_latex(tables["table3"], None, registered)
    assert _header(tex) == ["", "Precision", "Recall", "F1", "AUC", "Accuracy"]
    rows = _body_rows(tex)
    assert [r[0] for r in rows] == ["SimCLR", "SupCon", "rt\\_swav"]  # paper order, '_' escaped
    metrics = ["precision", "recall", "f1", "auc", "accuracy"]
    for r, entry in zip(rows, ["rt_simclr", "rt_supcon", "rt_swav"]):
        for cell, m in zip(r[1:], metrics):
            assert _strip(cell) == _expected_cell(METRICS[entry][m])
    for j, m in enumerate(metrics, start=1):
        shown = {e: round(statistics.mean(METRICS[e][m]), 2) for e in ("rt_simclr", "rt_supcon", "rt_swav")}
        best_value = max(shown.values())
        for r, e in zip(rows, shown):
            assert r[j].startswith("\\textbf{") == (shown[e] == best_value), (m, e)
    # the accuracy tie at two decimals (0.813 vs 0.807 → 0.81) is bold twice
    assert rows[0][5].startswith("\\textbf{") and rows[1][5].startswith("\\textbf{")


def test_delta_tables_delta_and_underline(tmp_path, registered):
    _, _, tables = _build(tmp_path, registered)
    tex = tab.to_latex(tables["table4"], None, registered)
    assert _header(tex) == ["", "F1", "$\\Delta$", "AUC", "$\\Delta$", "Accuracy", "$\\Delta$"]
    rows = _body_rows(tex)
    parents = {"rt_noseg_simclr": "rt_simclr", "rt_noseg_supcon": "rt_supcon"}
    deltas = {m: {e: round(statistics.mean(METRICS[e][m]) - statistics.mean(METRICS[p][m]), 2)
                  for e, p in parents.items()} for m in ("f1", "auc", "accuracy")}
    for r, e in zip(rows, parents):
        for k, m in enumerate(("f1", "auc", "accuracy")):
            value, delta = r[1 + 2 * k], r[2 + 2 * k]
            assert _strip(value) == _expected_cell(METRICS[e][m])
            assert _strip(delta) == f"${deltas[m][e]:+.2f}$"
            worst = min(deltas[m].values())
            assert delta.startswith("\\underline{") == (deltas[m][e] == worst), (m, e)
    assert rows[0][2] == "\\underline{$-0.14$}"      # F1: SimCLR drops most
    assert rows[0][6].startswith("\\underline") and rows[1][6].startswith("\\underline")  # tie at -0.07


def test_table6_against_best_and_table8_ours(tmp_path, registered):
    _, _, tables = _build(tmp_path, registered)
    t6 = tables["table6"]
    assert [r.reference for r in t6.rows] == ["rt_simclr"]
    cells = _body_rows(tab.to_latex(t6, None, registered))[0]
    want = statistics.mean(METRICS["rt_supervised"]["auc"]) - statistics.mean(METRICS["rt_simclr"]["auc"])
    assert cells[0] == "Supervised" and cells[4] == f"${want:+.2f}$"
    assert not any("textbf" in c or "underline" in c for c in cells)  # one row: nothing to emphasise

    tex8 = tab.to_latex(tables["table8"], None, registered)
    assert _header(tex8) == ["Model", "ROI extraction method", "Architecture", "F1", "AUC", "Accuracy"]
    assert _colspec(tex8) == "pppccc"  # wrapped text columns (array package), then numbers
    rows = _body_rows(tex8)
    assert rows[0][:3] == ["Jang et al. \\textsuperscript{9}", "Manual cropping", "VGG16"]
    assert rows[-1][:3] == ["Ours (full framework, SimCLR)", "Segmentation-based + SSL + enhanced aug", "ResNet50"]
    for j, m in enumerate(("f1", "auc", "accuracy"), start=3):  # first and second highest in bold
        shown = [round(statistics.mean(METRICS[e][m]), 2) for e in ("rt_jang", "rt_deepdxa", "rt_simclr")]
        top2 = sorted(shown, reverse=True)[1]
        assert [r[j].startswith("\\textbf") for r in rows] == [v >= top2 for v in shown]


def test_booktabs_structure_and_every_row_complete(tmp_path, registered):
    _, _, tables = _build(tmp_path, registered)
    assert list(tables) == ["table3", "table4", "table5", "table6", "table7", "table8"]
    for key, table in tables.items():
        tex = tab.to_latex(table, None, registered)
        order = [tex.index(s) for s in ("\\begin{table}", "\\caption{", "\\begin{tabular}", "\\toprule",
                                         "\\midrule", "\\bottomrule", "\\end{tabular}", "\\end{table}")]
        assert order == sorted(order), key
        ncols = len(_colspec(tex))
        assert len(_header(tex)) == ncols
        assert all(len(r) == ncols for r in _body_rows(tex)), key
        assert f"\\label{{tab:{key}}}" in tex
        assert "(ddof=1)" in tex


def test_latex_escape_and_numbers():
    assert latex.escape("rt_a & b 50% #1 {x} ~^\\") == \
        "rt\\_a \\& b 50\\% \\#1 \\{x\\} \\textasciitilde{}\\textasciicircum{}\\textbackslash{}"
    assert latex.escape("Ho et al. ¹⁰ – x") == "Ho et al. \\textsuperscript{1}\\textsuperscript{0} -- x"
    assert latex.fmt(-0.001, 2) == "0.00" and latex.signed(-0.004, 2) == "0.00"
    assert latex.signed(0.034, 2) == "+0.03" and latex.signed(-0.125, 2) == "-0.13"  # halves away from zero
    assert [latex.fmt(v, 2) for v in (0.625, 0.875, 0.125, 0.115, 1 / 3)] == ["0.63", "0.88", "0.13", "0.12", "0.33"]
    assert latex.fmt(0.1 + 0.2, 1) == "0.3" and latex.fmt(2.5, 0) == "3" and latex.fmt(12345.6789, 3) == "12345.679"
    assert latex.fmt(float("nan"), 2) == "--"


def test_missing_entries_skip_tables_and_missing_parent(tmp_path, registered):
    # table3 has only SupCon and SwAV; the ablation of SimCLR has no parent results; no table5/6/8 rows
    entries = ["rt_supcon", "rt_swav", "rt_noseg_simclr", "rt_noseg_supcon", "rt_convcrop_swav"]
    _, best, tables = _build(tmp_path, registered, entries)
    assert best == "rt_supcon"
    assert list(tables) == ["table3", "table4", "table7"]
    t4 = tables["table4"]
    assert t4.comparisons() == [("rt_noseg_supcon", "rt_supcon")]
    rows = _body_rows(tab.to_latex(t4, None, registered))
    assert rows[0][2] == "--" and rows[0][4] == "--"  # no parent results → no Δ
    assert not rows[1][2].startswith("\\underline")  # a single Δ is no "largest" drop
    t7 = tables["table7"]  # one row with Δ against its parent (SwAV)
    assert _body_rows(tab.to_latex(t7, None, registered))[0][0] == "SwAV"


def test_table8_two_rows_bolds_nothing(tmp_path, registered):
    _, best, tables = _build(tmp_path, registered, ["rt_simclr", "rt_jang"])
    rows = _body_rows(tab.to_latex(tables["table8"], None, registered))
    assert [r[0] for r in rows] == ["Jang et al. \\textsuperscript{9}", "Ours (full framework, SimCLR)"]
    assert not any("textbf" in c for r in rows for c in r)  # "first and second" of two rows marks nothing


def test_single_seed_shows_mean_only(tmp_path, registered):
    _, _, tables = _build(tmp_path, registered, ["rt_simclr", "rt_supcon"], seeds=(0,))
    rows = _body_rows(tab.to_latex(tables["table3"], None, registered))
    assert _strip(rows[0][3]) == f"{METRICS['rt_simclr']['f1'][0]:.2f}"
    assert "One seed (no standard deviation), test split." in tab.caption(tables["table3"], None, registered)


def test_markers_follow_holm_adjusted_p(tmp_path, registered):
    _, _, tables = _build(tmp_path, registered)
    t4 = tables["table4"]
    frame = pd.DataFrame([
        {"table": "table4", "entry": "rt_noseg_simclr", "reference": "rt_simclr", "metric": "f1",
         "p_value": 0.001, "p_holm": 0.004},
        {"table": "table4", "entry": "rt_noseg_simclr", "reference": "rt_simclr", "metric": "auc",
         "p_value": 0.02, "p_holm": 0.06},
        {"table": "table4", "entry": "rt_noseg_supcon", "reference": "rt_supcon", "metric": "accuracy",
         "p_value": 0.01, "p_holm": 0.049}], columns=list(TEST_COLUMNS))
    tests = Significance(frame=frame, n_boot=100)
    tex = tab.to_latex(t4, tests, registered)
    rows = _body_rows(tex)
    marked = [[c.endswith("$^{\\dagger}$") for c in r] for r in rows]
    assert marked == [[False, False, True, False, False, False, False],
                      [False, False, False, False, False, False, True]]
    assert "$^{\\dagger}$: differs from its full-method parent" in tex and "B=100" in tex
    md = tab.to_markdown(t4, tests, registered)
    assert "<u>-0.14</u>†" in md and md.count("†") == 3  # two cells and the caption


def _fake_stats(calls):
    """A stand-in for bench.stats: fixed p-values per call, Holm by statsmodels."""
    from statsmodels.stats.multitest import multipletests

    mod = types.ModuleType("bench.stats")
    plist = [{"f1": 0.01, "auc": 0.04, "accuracy": 0.03}, {"f1": 0.2, "auc": 0.001, "accuracy": 0.5}]

    def hierarchical_bootstrap(frame_a, frame_b, metrics, n_boot, seed):
        calls.append((frame_a.copy(), frame_b.copy(), tuple(metrics), n_boot, seed))
        ps = plist[(len(calls) - 1) % 2]
        return {m: types.SimpleNamespace(delta=0.1, ci_low=0.0, ci_high=0.2, p_value=ps[m]) for m in metrics}

    mod.hierarchical_bootstrap = hierarchical_bootstrap
    mod.holm = lambda p: multipletests(p, method="holm")[1]
    return mod


def test_holm_family_is_one_metric_of_one_table(tmp_path, registered, monkeypatch):
    _, _, tables = _build(tmp_path, registered)
    calls = []
    monkeypatch.setitem(sys.modules, "bench.stats", _fake_stats(calls))
    preds = store.load_predictions(tmp_path, SUITE)
    tests = run_tests(preds, {"table4": tables["table4"].comparisons()}, n_boot=50, seed=3)
    f = tests.frame.set_index(["entry", "metric"])
    # Holm by hand within each metric of Table 4 (statistics.md §2.5), two rows each, × 2 1, running max:
    # F1 0.01 0.2 -> 0.02 0.2; AUC 0.001 0.04 -> 0.002 0.04; accuracy 0.03 0.5 -> 0.06 0.5
    expected = {("rt_noseg_simclr", "f1"): 0.02, ("rt_noseg_supcon", "f1"): 0.2,
                ("rt_noseg_supcon", "auc"): 0.002, ("rt_noseg_simclr", "auc"): 0.04,
                ("rt_noseg_simclr", "accuracy"): 0.06, ("rt_noseg_supcon", "accuracy"): 0.5}
    for cell, p in expected.items():
        assert f.loc[cell, "p_holm"] == pytest.approx(p), cell
    assert tests.significant("table4", "rt_noseg_simclr", "auc")        # 0.04: marked per metric, not over 6
    assert not tests.significant("table4", "rt_noseg_simclr", "accuracy")
    assert tests.family_sizes("table4") == {"f1": 2, "auc": 2, "accuracy": 2}
    assert "the 2 comparisons of each metric in this table" in tab.caption(tables["table4"], tests, registered)
    # frames are paired on (seed, subject) of the test split, entry first; seeds differ per pair
    fa, fb, metrics, n_boot, s1 = calls[0]
    assert list(fa.columns) == ["seed", "subject_id", "y_true", "p_pos"] and len(fa) == 3 * 60
    assert (fa[["seed", "subject_id", "y_true"]].to_numpy() == fb[["seed", "subject_id", "y_true"]].to_numpy()).all()
    pa = preds[(preds.entry == "rt_noseg_simclr") & (preds.split == "test")].sort_values(["seed", "subject_id"])
    assert np.allclose(fa["p_pos"], pa["p_pos"])
    assert metrics == ("f1", "auc", "accuracy") and n_boot == 50 and s1 != calls[1][4]


def test_significance_with_real_stats(tmp_path, registered):
    pytest.importorskip("bench.stats")
    _, _, tables = _build(tmp_path, registered)
    preds = store.load_predictions(tmp_path, SUITE)
    tests = run_tests(preds, {k: tables[k].comparisons() for k in ("table4", "table5")}, n_boot=300, seed=0)
    # noseg-SimCLR (strength 0) is far worse than SimCLR (strength 3) on 180 paired rows: AUC differs
    assert tests.significant("table4", "rt_noseg_simclr", "auc")
    # single-decoder SimCLR has the same strength as SimCLR: no AUC marker expected
    assert not tests.significant("table5", "rt_single_simclr", "auc")
    same = run_tests(preds, {"table4": tables["table4"].comparisons()}, n_boot=300, seed=0)
    pd.testing.assert_frame_equal(tests.frame[tests.frame.table == "table4"].reset_index(drop=True), same.frame)


def test_captions_claim_only_the_emphasis_applied_and_tables_without_delta_underline_nothing(tmp_path, registered):
    _, _, tables = _build(tmp_path, registered)
    one_row = tables["table6"]
    assert len(one_row.rows) == 1
    text = tab.caption(one_row, None, registered)
    assert "in bold" not in text and "underlined" not in text
    assert "in bold" in tab.caption(tables["table3"], None, registered)
    for key in ("table3", "table8"):
        assert not tab.to_frame(tables[key], None)["underline"].any(), key


def test_rows_beyond_the_paper_tables_get_unique_labels(registered):
    from reports.build import unique_labels

    label = unique_labels(["rt_simclr", "rt_noseg_simclr", "rt_deepdxa", "mystery"], registered)
    assert label("rt_simclr") == "SimCLR (rt_simclr)" and label("rt_noseg_simclr") == "SimCLR (rt_noseg_simclr)"
    assert label("rt_deepdxa") == registered["rt_deepdxa"].row and label("mystery") == "mystery"


@pytest.mark.parametrize("column, bold", [
    ([0.83, 0.67, 0.67, 0.67, 0.67], {0}),          # ties would bold every row: only the highest
    ([0.67, 0.00, 0.00, 0.00, 0.00], {0}),
    ([0.70, 0.70, 0.70, 0.70, 0.70], set()),        # all equal: nothing singled out
    ([0.90, 0.80, 0.80, 0.70, 0.60], {0, 1, 2}),    # the second value shared: first and second
    ([0.90, 0.80], set()),                          # no more rows than bold_top
])
def test_bold_singles_something_out(column, bold):
    spec = tab.TableSpec("table8", "t", "c", metrics=("f1",), bold_top=2)
    rows = [tab.Row(f"e{i}", f"e{i}", (), None, {"f1": (v, 0.0, 3)}) for i, v in enumerate(column)]
    assert tab.bold_rows(tab.Table(spec, rows, "test", None), "f1") == {f"e{i}" for i in bold}


def test_a_caption_names_the_rows_that_left_subjects_unscored(tmp_path, registered):
    summary, best, tables = _build(tmp_path, registered)
    assert "usable bone" not in tab.caption(tables["table3"], None, registered)
    extra = pd.DataFrame([{"entry": "rt_swav", "split": "test", "metric": "n_unscored", "mean": 1.5, "std": 0.7, "n": 2},
                          {"entry": "rt_swav", "split": "test", "metric": "n", "mean": 38.5, "std": 0.7, "n": 2}])
    summary = pd.concat([summary[~summary["metric"].isin(["n_unscored", "n"]) | (summary["entry"] != "rt_swav")],
                         extra], ignore_index=True)
    table = tab.assemble(summary, registered, best)["table3"]
    label = next(r.label for r in table.rows if r.entry == "rt_swav")
    text = tab.caption(table, None, registered, tex=False)
    assert f"left out of a row's numbers (mean over seeds; {label}: 1.5 of 40)." in text
    sentence = text.split("Subjects without a usable bone", 1)[1].split(").", 1)[0]
    assert sentence.count(": ") == 1            # only the row that left subjects out is named


def test_the_architecture_column_names_the_networks_the_runs_used(tmp_path, registered):
    assert [tab.network_label(n) for n in ("resnet18", "resnet50", "vgg11", "vgg16_bn", "convnext_tiny")] == \
        ["ResNet18", "ResNet50", "VGG11", "VGG16-BN", "convnext_tiny"]
    assert tab.architecture_text("VGG16 + Transformer", {"vgg.name": "vgg11"}) == "VGG11 + Transformer"
    summary, best, tables = _build(tmp_path, registered)
    plain = {r.entry: r.info for r in tables["table8"].rows}
    assert plain["rt_jang"][1] == "VGG16" and tables["table8"].rows[-1].info[1] == "ResNet50"   # the paper's
    smoke = tab.assemble(summary, registered, best, networks={"rt_jang": {"vgg.name": "vgg11"},
                                                              best: {"ssl.encoder": "resnet18"}})["table8"]
    shown = {r.entry: r.info for r in smoke.rows if not r.ours}
    assert shown["rt_jang"][1] == "VGG11" and shown["rt_deepdxa"][1] == "ResNet18"
    assert smoke.rows[-1].ours and smoke.rows[-1].info[1] == "ResNet18"


def test_the_roi_column_says_when_a_run_read_the_annotators_or_true_masks(tmp_path, registered):
    """Radiogrammetry with radiogrammetry.source=annotator is not "Segmentation-based" (a QA finding)."""
    import json

    from reports.build import run_networks

    summary, best, _ = _build(tmp_path / "a", registered)
    table = tab.assemble(summary, registered, best, networks={best: {"masks": "annotator"}})["table8"]
    assert table.rows[-1].ours and table.rows[-1].info[0] == "Annotators' masks + SSL + enhanced aug"
    plain = tab.assemble(summary, registered, best, networks={best: {"masks": "predicted"}})["table8"]
    assert plain.rows[-1].info[0] == tab.OURS_INFO["roi"]
    run = tmp_path / "r" / "s" / "radiogrammetry" / "seed0"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"entry": "radiogrammetry", "seed": 0, "run_key": "k", "config": {
        "radiogrammetry": {"source": "truth"}, "patches": {"source": "predicted"}, "ssl": {"encoder": "resnet18"}}}))
    (run / "metrics.json").write_text(json.dumps({"test": {"auc": 0.8}}))
    (run / "predictions.parquet").write_bytes(b"")
    networks = run_networks(tmp_path / "r", "s", None)
    assert networks.get("radiogrammetry", {}).get("masks") == "truth", networks
