"""Tests of the paper's Table 1 layout: gfverify.report.table1, `gfverify results --table1`,
and the report page's Table 1 section."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfverify.cli import main
from gfverify.config import RunConfig
from gfverify.report.table1 import MEASURES, Stat, build_table1, format_table1, table1
from gfverify.runs import RunDir, execute
from tests.fake_train import small_config

FINAL = {  # final test accuracy per (measure, seed) of the fake runs below
    (m, s): 0.70 + 0.02 * i + 0.005 * s
    for i, m in enumerate(("unpruned", *MEASURES))
    for s in (0, 1, 2)
}


def fake_row(measure: str, seed: int, ratio: float = 0.75, model: str = "vgg13") -> dict:
    key = "unpruned" if ratio == 0 else measure
    return {
        "data.name": "fashion_mnist",
        "model.name": model,
        "model.width_mult": 0.25,
        "prune.ratio": ratio,
        "measure.name": measure,
        "seed": seed,
        "final_test_acc": FINAL[(key, seed)],
        "best_val_acc": FINAL[(key, seed)] + 0.01,
        "best_val_epoch": 10 + seed,
        "pruned_fraction": ratio,
        "params": 1000.0 * (1 - ratio) + seed,
        "dense_params": 1000.0,
        "macs": 5000.0 * (1 - ratio),
        "dense_macs": 5000.0,
        "seconds": 60.0,
    }


def all_rows(models=("vgg13",)) -> list[dict]:
    rows = [fake_row("magnitude", s, 0.0, mo) for mo in models for s in (0, 1, 2)]
    rows += [fake_row(m, s, 0.75, mo) for mo in models for m in MEASURES for s in (0, 1, 2)]
    return rows


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=0, max_size=8))
def test_stat_is_mean_and_sample_std(xs):
    s = Stat.of([*xs, float("nan"), None, "x", True])  # non-finite / non-numbers are ignored
    assert s.n == len(xs)
    if not xs:
        assert s.mean is None and s.text() == "—"
        return
    assert s.mean == pytest.approx(statistics.fmean(xs), abs=1e-9)
    if len(xs) == 1:  # a sample std of one value does not exist: no false "± 0.00"
        assert s.std is None and s.text().endswith("(n=1)") and "±" not in s.text()
        return
    assert s.std == pytest.approx(statistics.stdev(xs), abs=1e-6)


def test_lines_match_baselines_and_measures():
    lines = table1(all_rows(("vgg13", "resnet56")))
    assert [(ln.model, ln.ratio) for ln in lines] == [("resnet56", 0.75), ("vgg13", 0.75)]
    ln = lines[1]
    assert list(ln.cells) == list(MEASURES)  # the paper's column order
    base = ln.baseline
    assert base is not None and base.test_acc.n == 3 and base.seeds == (0, 1, 2)
    vals = [FINAL[("unpruned", s)] for s in (0, 1, 2)]
    assert base.test_acc.mean == pytest.approx(statistics.fmean(vals))
    assert base.test_acc.std == pytest.approx(statistics.stdev(vals))
    g = ln.cells["grasp"]
    want = statistics.fmean(FINAL[("grasp", s)] for s in (0, 1, 2))
    assert g.test_acc.mean == pytest.approx(want)
    assert g.best_val_epochs == (10, 11, 12)
    assert g.pruned_fraction.mean == pytest.approx(0.75)
    assert g.params.mean == pytest.approx(251.0) and g.params_kept.mean == pytest.approx(0.251)
    assert g.macs_kept.mean == pytest.approx(0.25)


def test_baseline_only_and_unknown_measure_lines():
    rows = [fake_row("magnitude", 0, 0.0)] + [
        {**fake_row("magnitude", 0), "measure.name": "random"}
    ]
    lines = table1(rows)
    assert list(lines[0].cells) == ["random"] and lines[0].baseline is not None
    only = table1([fake_row("magnitude", 1, 0.0, "mobilenet_v1")])
    assert len(only) == 1 and only[0].ratio == 0.0 and not only[0].cells
    assert table1([{"data.name": "x"}]) == []  # unfinished rows are ignored


def test_format_shows_percent_mean_std_per_measure():
    text = format_table1(table1(all_rows()))
    lines = text.splitlines()
    assert lines[0].startswith("Table 1")
    header, row = lines[1], lines[3]
    assert "base acc" in header and "GraSP (T=200)" in header and "grad-norm pres. (T=1)" in header
    m = [FINAL[("magnitude", s)] * 100 for s in (0, 1, 2)]
    assert f"{statistics.fmean(m):.2f} ± {statistics.stdev(m):.2f}" in row
    b = [FINAL[("unpruned", s)] * 100 for s in (0, 1, 2)]
    assert f"{statistics.fmean(b):.2f} ± {statistics.stdev(b):.2f}" in row and "75%" in row
    details = "\n".join(lines[4:])
    assert "10,11,12" in details and "251 (25.1%)" in details and "1,250 (25.0%)" in details


# ----------------------------------------------------------------------- CLI and report


def fake_table_train(config: RunConfig, run: RunDir) -> dict[str, Any]:
    """One logged epoch; result fields as gfverify.train names them."""
    ratio = config.prune.ratio
    row = fake_row(config.measure.name, config.seed, ratio)
    run.log_epoch({"epoch": 1, "train_loss": 1.0, "test_acc": row["final_test_acc"]})
    keys = ("final_test_acc", "best_val_acc", "best_val_epoch", "pruned_fraction", "params")
    keys += ("dense_params", "macs", "dense_macs", "seconds")
    return {k: row[k] for k in keys}


def write_fake_table(runs_dir: Path) -> None:
    base = {"data.name": "fashion_mnist", "model.width_mult": 0.25, "device": "cpu"}
    for s in (0, 1, 2):
        execute(small_config(**base, seed=s, **{"prune.ratio": 0.0}), runs_dir, fake_table_train)
        for m in MEASURES:
            cfg = small_config(**base, seed=s, **{"prune.ratio": 0.75, "measure.name": m})
            execute(cfg, runs_dir, fake_table_train)


def test_results_table1_cli(tmp_path, capsys):
    write_fake_table(tmp_path / "runs")
    assert main(["results", str(tmp_path / "runs"), "--table1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Table 1") and "18 finished run(s)" in out
    b = [FINAL[("unpruned", s)] * 100 for s in (0, 1, 2)]
    row = next(ln for ln in out.splitlines() if ln.startswith("fashion_mnist  resnet56"))
    assert f"{statistics.fmean(b):.2f} ± {statistics.stdev(b):.2f}" in row
    g = [FINAL[("gradient_norm_preservation", s)] * 100 for s in (0, 1, 2)]
    assert row.rstrip().endswith(f"{statistics.fmean(g):.2f} ± {statistics.stdev(g):.2f}")


def test_report_page_has_table1_section(tmp_path):
    from gfverify.report import render_html
    from gfverify.report.build import collect

    write_fake_table(tmp_path / "runs")
    data = collect([tmp_path / "runs"])
    assert data.table1 and len(data.table1.lines) == 1
    assert [m for m, _ in data.table1.columns] == list(MEASURES)
    html = render_html(data, figures=([], []))
    assert 'id="table1-table"' in html and "GraSP (T=200)" in html
    b = [FINAL[("unpruned", s)] * 100 for s in (0, 1, 2)]
    assert f"{statistics.fmean(b):.2f} ± {statistics.stdev(b):.2f}" in html
    assert "25.1%" in html  # params kept by the pruned runs


def test_report_page_without_runs_has_no_table1(tmp_path):
    from gfverify.report import render_html
    from gfverify.report.build import collect

    assert 'id="table1-table"' not in render_html(collect([]), figures=([], []))


def test_empty_table():
    assert format_table1([]) == "no finished runs for Table 1"
    assert not build_table1([])
