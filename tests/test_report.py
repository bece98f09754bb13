"""gfverify report: collection, orderings, figures, malformed inputs, the CLI, and the page as a
headless browser renders it (set CI=1 or GFVERIFY_REQUIRE_BROWSER=1 to make a missing browser
a failure instead of a skip)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import statistics
import subprocess
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfverify.cli import main
from gfverify.commands import report as report_cmd
from gfverify.config import load_config, run_id
from gfverify.report import render_html, write_report
from gfverify.report.build import (
    ORDERINGS,
    Ordering,
    ResultGroup,
    check_orderings,
    collect,
    load_claims,
    load_runs,
)
from gfverify.report.figures import Unavailable, identity_convergence
from gfverify.runs import RunDir, execute, read_result
from tests import report_fixture as fx

RUN_FIGURES = ("fig-curves", "fig-norms", "fig-widths", "fig-s3", "fig-f1")
ALL_FIGURES = ("fig-identity-E2", "fig-identity-E3", "fig-h1", *RUN_FIGURES)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    claims = fx.write_claims(root / "claims.json")
    runs = fx.write_runs(root / "runs")
    return root, claims, runs


@pytest.fixture(scope="module")
def page(inputs):
    root, claims, runs = inputs
    path, data = write_report(root / "out" / "index.html", [runs], [claims])
    return path, path.read_text(), data


class _Figures(HTMLParser):
    """figure id -> {'available': ..., 'svg': count of <svg>, 'img': <img> with data: URIs}."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, dict[str, object]] = {}
        self.tables: set[str] = set()
        self._current: str | None = None
        self._depth = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("id"):
            self.tables.add(a["id"])
        if tag == "figure":
            self._current = a.get("id")
            self.figures[self._current] = {"available": a.get("data-available"), "svg": 0, "img": 0}
        elif self._current is not None:
            if tag == "svg":
                self.figures[self._current]["svg"] += 1
            if tag == "img" and str(a.get("src", "")).startswith("data:"):
                self.figures[self._current]["img"] += 1

    def handle_endtag(self, tag):
        if tag == "figure":
            self._current = None


def _parse(html: str) -> _Figures:
    p = _Figures()
    p.feed(html)
    return p


# ------------------------------------------------------------------------------ collection


def test_claims_are_read_with_their_numbers(inputs):
    _, claims, _ = inputs
    cf, gaps = load_claims(claims)
    assert gaps == [] and cf is not None
    ids = [r.id for r in cf.rows]
    assert ids == ["E2", "E2", "E3", "H1", "S3", "S3", "F1", "S1"]
    e3 = cf.rows[2]
    assert e3.verdict == "fail" and not e3.passed and abs(e3.observed_order - 1.0) < 1e-9
    s3 = cf.rows[4]
    assert s3.is_statistical and s3.n == 3 and s3.verdict == "supported"
    assert s3.effect == pytest.approx(statistics.mean([0.6, 0.62, 0.64]))
    assert s3.ci[0] < s3.effect < s3.ci[1]


def test_results_groups_mean_and_std_over_seeds(page):
    _, _, data = page
    assert data.group_columns == ["data.name", "model.name", "measure.name"]
    by_measure = {g.key["measure.name"]: g for g in data.groups}
    assert set(by_measure) == set(fx.MEASURES)
    for measure, g in by_measure.items():
        finals = [fx.ACC_BASE[measure] + 0.01 * s for s in fx.SEEDS]
        assert g.n == len(fx.SEEDS) and g.seeds == list(fx.SEEDS)
        assert g.mean == pytest.approx(statistics.mean(finals))
        assert g.std == pytest.approx(statistics.stdev(finals))
        kept = sum(fx.kept_widths(fx.configs((measure,), (0,))[0]).values())
        assert g.macs_kept == pytest.approx(kept / sum(fx.DENSE.values()))


def test_varying_config_keys_become_columns(tmp_path):
    runs = tmp_path / "runs"
    cfgs = fx.configs(("grasp",), (0, 1)) + fx.configs(("grasp",), (0,), **{"prune.ratio": 0.5})
    fx.write_runs(runs, cfgs)
    data = collect([runs], [])
    assert data.group_columns[-1] == "prune.ratio"
    assert sorted((g.key["prune.ratio"], g.n) for g in data.groups) == [(0.5, 1), (0.75, 2)]


def _group(measure: str, mean: float, n: int = 2, **key) -> ResultGroup:
    key = {"data.name": "cifar10", "model.name": "vgg13", "measure.name": measure, **key}
    return ResultGroup(key=key, n=n, mean=mean, std=0.0, seeds=[0, 1], excluded=0)


def test_orderings_met_not_met_and_not_available():
    gnp_grasp = ORDERINGS[0]
    assert (gnp_grasp.better, gnp_grasp.worse) == ("gradient_norm_preservation", "grasp")
    groups = [
        _group("gradient_norm_preservation", 0.9),
        _group("grasp", 0.8),
        _group("gradient_norm_preservation", 0.7, **{"model.name": "resnet56"}),
        _group("grasp", 0.75, **{"model.name": "resnet56"}),
        _group("loss_preservation", 0.8),
    ]
    checks = check_orderings(groups)
    status = {(c.ordering.claim, c.context.get("model.name")): c.status for c in checks}
    assert status == {
        ("S5", "vgg13"): "met",
        ("S5", "resnet56"): "not met",
        ("S4", "vgg13"): "not available",  # loss_preservation ran, biased did not
    }
    tie = check_orderings([_group("a", 0.5), _group("b", 0.5)], [Ordering("a", "b", "X", "")])
    assert tie[0].status == "met" and tie[0].delta == 0.0
    none = check_orderings([], ORDERINGS)
    assert [c.status for c in none] == ["not available"] * len(ORDERINGS)


def test_reconstructed_run_command_reproduces_the_run_id(page, tmp_path):
    _, _, data = page
    cmds = [c for c in data.commands if c.config_toml]
    assert len(cmds) == len(fx.MEASURES) * len(fx.SEEDS)
    for c in cmds:
        rid = c.config_name.removesuffix(".toml")
        assert c.command.startswith(f"gfverify run {c.config_name} --runs-dir ")
        path = tmp_path / c.config_name
        path.write_text(c.config_toml)
        assert run_id(load_config(path)) == rid


# ------------------------------------------------------------------------------ the page


def test_page_has_tables_and_every_figure(page):
    _, html, _ = page
    parsed = _parse(html)
    assert {"claims-summary", "claims-table", "results-table", "orderings-table"} <= parsed.tables
    for fig in ALL_FIGURES:
        assert fig in parsed.figures, fig
        info = parsed.figures[fig]
        assert info["available"] == "yes" and info["svg"] + info["img"] >= 1, (fig, info)
    assert "not available" not in re.sub(r"<section id=\"results\">.*", "", html, flags=re.S)


def test_page_is_self_contained(page):
    _, html, _ = page
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower() and "@import" not in html
    for url in re.findall(r'\b(?:src|href)="([^"]*)"', html):
        assert url.startswith(("#", "data:")), url
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids)), "duplicate element ids across inline SVGs"


def test_verdicts_are_colour_coded(page):
    _, html, _ = page
    for verdict in ("pass", "fail", "supported", "contradicted", "inconclusive"):
        assert f'class="verdict v-{verdict}">1 {verdict}' in html or (
            f'class="verdict v-{verdict}">{verdict}' in html
        ), verdict
    assert 'class="verdict v-met">met' in html  # gnp 0.80+ > grasp 0.70+


def test_identity_figure_draws_slope_reference_of_the_method_order(inputs):
    _, claims, _ = inputs
    cf, _ = load_claims(claims)
    svg = identity_convergence("E2", cf.rows)
    assert svg.startswith("<svg") and "slope 2 (O(h^2))" in svg
    with pytest.raises(Unavailable, match="S1"):
        identity_convergence("S1", cf.rows)


def test_s3_scatter_from_importance_and_loss_change_pairs():
    from gfverify.report.build import ClaimRow
    from gfverify.report.figures import importance_vs_loss_change

    details = {"importance": [[1.0, 2.0, 3.0]], "loss_change": [[0.1, 0.3, 0.2]]}
    row = ClaimRow("S3", "", "statistical", "c", "supported", True, None, None, None, None, details)
    svg = importance_vs_loss_change([row])
    assert "τ = 0.33" in svg  # pairs (1,.1) (2,.3) (3,.2): (2 concordant − 1 discordant) / 3


def test_s3_without_pairs_draws_tau_over_epochs_from_records():
    from gfverify.report.build import ClaimRow
    from gfverify.report.figures import importance_vs_loss_change

    def s3(details):
        row = ClaimRow("S3", "", "statistical", "c", "supported", True, None, None, None, None, {})
        row.details = details
        return [row]

    records = [{"epoch": e, "kendall_tau": 0.1 * e} for e in (1, 2, 3)]
    svg = importance_vs_loss_change(s3({"series": records}))
    assert "S3: τ over training" in svg and "not available: series absent" in svg
    with pytest.raises(Unavailable, match="none of the series importance"):
        importance_vs_loss_change(s3({"effect": 0.5}))


def test_norms_figure_marks_values_around_surgery(page):
    _, _, data = page
    from gfverify.report.figures import norms_around_pruning

    svg = norms_around_pruning(data.runs)
    assert "before surgery" in svg and "after surgery" in svg


def test_absent_data_is_named_per_figure(tmp_path):
    claims = fx.write_claims(tmp_path / "claims.json", [fx.identity("E2", "n/all", 2.0)])
    runs = tmp_path / "runs"

    def bare(config, run: RunDir):
        run.log_epoch({"epoch": 1, "test_acc": 0.5})
        return {"final_test_acc": 0.5}

    execute(fx.configs(("grasp",), (0,))[0], runs, train_fn=bare)
    path, data = write_report(tmp_path / "index.html", [runs], [claims])
    figs = _parse(path.read_text()).figures
    assert figs["fig-curves"]["available"] == "yes"  # test accuracy alone is drawn
    notes = {f.id: f.note for f in _figures(data)}
    assert "no H1 result" in notes["fig-h1"]
    assert "no ‖θ‖² or ‖g‖²" in notes["fig-norms"]
    assert "no finished run records widths" in notes["fig-widths"]
    assert "no S3 result" in notes["fig-s3"] and "no F1 result" in notes["fig-f1"]
    for fid in ("fig-h1", "fig-norms", "fig-widths", "fig-s3", "fig-f1"):
        assert figs[fid]["available"] == "no" and figs[fid]["svg"] == 0


def _figures(data):
    from gfverify.report.figures import identity_figures, run_figures

    return identity_figures(data) + run_figures(data)


# ------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        (json.dumps({"schema_version": 999, "results": []}), "schema_version 999; this report"),
        (json.dumps([1, 2]), "not a JSON object"),
        (json.dumps({"schema_version": 1}), "no 'results' list"),
    ],
)
def test_malformed_claims_file_is_a_named_gap(tmp_path, content, message):
    bad = tmp_path / "claims.json"
    bad.write_text(content)
    cf, gaps = load_claims(bad)
    assert cf is None and len(gaps) == 1 and message in gaps[0].why
    page = render_html(collect([], [bad]))
    assert message in unescape(page) and 'id="claims-table"' in page


def test_one_malformed_result_is_skipped_and_named(tmp_path):
    path = fx.write_claims(tmp_path / "claims.json")
    payload = json.loads(path.read_text())
    del payload["results"][1]["passed"]
    path.write_text(json.dumps(payload))
    cf, gaps = load_claims(path)
    assert len(cf.rows) == len(payload["results"]) - 1
    assert len(gaps) == 1 and "result 1 is malformed" in gaps[0].why


def test_runs_gaps_missing_empty_unfinished_corrupt(tmp_path):
    assert "does not exist" in load_runs(tmp_path / "nope")[1][0].why
    (tmp_path / "empty").mkdir()
    assert "no run directories" in load_runs(tmp_path / "empty")[1][0].why
    runs = fx.write_runs(tmp_path / "runs", fx.configs(("grasp",), (0, 1)))

    def crash(config, run):
        run.log_epoch({"epoch": 1, "test_acc": 0.1})
        raise RuntimeError("boom")

    with pytest.raises(Exception, match="boom"):
        execute(fx.configs(("loss_preservation",), (0,))[0], runs, train_fn=crash)
    corrupt = sorted(p for p in runs.iterdir() if read_result(p))[0]
    (corrupt / "result.json").write_text("{")
    loaded, gaps = load_runs(runs)
    whys = " | ".join(g.line() for g in gaps)
    assert "state failed, epoch 1: RuntimeError: boom" in whys
    assert "result.json is not valid JSON" in whys
    assert sum(r.finished for r in loaded) == 1
    html = render_html(collect([runs], []))
    assert "RuntimeError: boom" in html and 'id="results-table"' in html


def test_cli_unusable_named_inputs_are_one_error_and_nothing_is_overwritten(tmp_path, capsys):
    """Issue 16 class 2: inputs the user named that cannot be used are an error (exit 2, one
    line naming each); an existing page is not replaced by one that lost its content."""
    bad = tmp_path / "claims.json"
    bad.write_text(json.dumps({"schema_version": 999, "results": []}))
    (tmp_path / "runs").mkdir()
    out = tmp_path / "r" / "index.html"
    out.parent.mkdir()
    out.write_text("<html>the real report</html>")
    for argv in (
        ["--runs", str(tmp_path / "runs"), "--claims", str(bad)],
        ["--claims", str(tmp_path / "typo.json"), "--runs", str(tmp_path / "typo_dir")],
    ):
        code = main(["report", *argv, "-o", str(out)])
        captured = capsys.readouterr()
        (line,) = captured.err.strip().splitlines()
        assert code == 2 and line.startswith("gfverify: error: 2 named input(s)")
        assert captured.out == ""
        assert out.read_text() == "<html>the real report</html>"
        assert sorted(p.name for p in out.parent.iterdir()) == ["index.html"]
    assert "schema_version 999" in line or "typo.json: claims file not found" in line
    assert "typo_dir: runs directory does not exist" in line


def test_report_onto_an_unwritable_path_fails_before_any_work(tmp_path, capsys, monkeypatch):
    """Issue 16 class 3: ``report -o`` onto a read-only file system: one line, nothing run."""
    import gfverify.commands.report as rep

    monkeypatch.setattr(rep, "run_quick_claims", lambda *a, **k: pytest.fail("work was done"))
    code = main(["report", "-o", "/sys/gfverify-no/index.html"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and line.startswith("gfverify: error: cannot write report /sys/gfverify-no")


def test_main_job_without_arguments(tmp_path, monkeypatch, capsys):
    """No arguments: quick claims + smoke runs, then the page (train/check replaced by fakes)."""
    monkeypatch.chdir(tmp_path)
    smoke = tmp_path / "experiments" / "smoke.toml"
    smoke.parent.mkdir()
    smoke.write_text(
        'seed = 0\ndevice = "cpu"\n[model]\nname = "vgg13"\n[prune]\nrounds = 2\n'
        "[train]\nepochs = 6\nlrs = [0.1]\nlr_epochs = [6]\n"
        '[sweep]\n"measure.name" = ["grasp", "gradient_norm_preservation"]\n'
    )
    calls = []

    def fake_claims(path, quiet=False):
        calls.append(path)
        fx.write_claims(path)
        return []

    monkeypatch.setattr(report_cmd, "run_quick_claims", fake_claims)
    monkeypatch.setattr(report_cmd, "TRAIN_FN", fx.train_report)
    stale = fx.configs(("loss_preservation",), (0,))[0]  # a run of an older smoke.toml
    fx.write_runs(tmp_path / "runs" / "smoke", [stale])
    assert main(["report", "--quiet"]) == 1  # the fixture's E3 fails its order check
    out = tmp_path / "reports" / "latest" / "index.html"
    captured = capsys.readouterr()
    assert captured.out.strip() == str(Path("reports/latest/index.html"))
    assert "1 identity claim(s) failed: E3" in captured.err
    assert calls == [Path("reports/latest/claims.json")]
    assert len(list((tmp_path / "runs" / "smoke").iterdir())) == 3
    html = out.read_text()
    sweep = "gfverify sweep experiments/smoke.toml --runs-dir runs/smoke"
    assert html.count(sweep) == 2  # the two runs of today's smoke.toml, not the stale one
    assert f"gfverify run {run_id(stale)}.toml --runs-dir runs/smoke" in html
    assert all(_parse(html).figures[f]["available"] == "yes" for f in ALL_FIGURES)


def test_main_job_names_an_untrainable_smoke_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(report_cmd, "run_quick_claims", lambda path, quiet=False: [])
    monkeypatch.setattr(report_cmd, "TRAIN_FN", "no_such_module:train")
    smoke = tmp_path / "smoke.toml"
    smoke.write_text("[train]\nepochs = 30\nlrs = [0.1]\nlr_epochs = [30]\n")
    assert main(["report", "--quiet", "--smoke-config", str(smoke)]) == 0
    err = capsys.readouterr().err
    assert "warning: smoke experiment: cannot import train_fn 'no_such_module:train'" in err
    assert "cannot import train_fn" in (tmp_path / "reports/latest/index.html").read_text()


def test_run_quick_claims_writes_a_readable_claims_file(tmp_path):
    """The in-process check (a cheap claim) writes the JSON the report reads."""
    path = tmp_path / "claims.json"
    assert report_cmd.run_quick_claims(path, quiet=True, claims="M-magnitude") == []
    cf, gaps = load_claims(path)
    assert gaps == [] and cf.rows and all(r.id == "M-magnitude" for r in cf.rows)
    assert cf.command == f"gfverify check --claims M-magnitude --scale quick --json {path}"


# ------------------------------------------------------------------------------ browser


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _require_browser() -> str:
    browser = _browser()
    if browser is None:
        msg = "chromium not found on PATH (install: apt-get install -y chromium)"
        if os.environ.get("CI") == "1" or os.environ.get("GFVERIFY_REQUIRE_BROWSER") == "1":
            pytest.fail(msg + "; required because CI=1 or GFVERIFY_REQUIRE_BROWSER=1")
        pytest.skip(msg)
    return browser


def _chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1200,900",
        "--enable-logging=stderr",
        "--v=0",
    ]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=120)


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def test_page_renders_in_headless_chromium(page, tmp_path):
    browser = _require_browser()
    path, _, _ = page
    url = path.resolve().as_uri()
    shot = path.parent / "screenshot.png"
    done = _chromium(browser, tmp_path / "profile-1", f"--screenshot={shot}", url)
    assert shot.exists() and shot.stat().st_size > 20_000, done.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _console_errors(done.stderr) == []
    dom = _chromium(browser, tmp_path / "profile-2", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert _console_errors(dom.stderr) == []
    parsed = _parse(dom.stdout)
    assert {"claims-summary", "claims-table", "results-table", "orderings-table"} <= parsed.tables
    for fig in ALL_FIGURES:
        info = parsed.figures[fig]
        assert info["svg"] + info["img"] >= 1, (fig, info)
    assert "gradient_norm_preservation" in dom.stdout and "0.805 ± 0.0071" in dom.stdout


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.integers(-3, 3)), min_size=2, max_size=25))
def test_kendall_tau_matches_scipy_tau_b(pairs):
    from scipy.stats import kendalltau

    from gfverify.report.figures import kendall_tau

    xs, ys = [float(a) for a, _ in pairs], [float(b) for _, b in pairs]
    expected = kendalltau(xs, ys).statistic
    got = kendall_tau(xs, ys)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, abs=1e-12)


def test_exit_status_is_zero_when_every_identity_holds_whatever_the_verdicts(tmp_path, capsys):
    results = [r for r in fx.claim_results() if r.id != "E3"]  # S1 stays contradicted
    claims = fx.write_claims(tmp_path / "claims.json", results)
    out = tmp_path / "r" / "index.html"
    assert main(["report", "--claims", str(claims), "-o", str(out)]) == 0
    assert out.exists() and "identity claim(s) failed" not in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# issue 16 class 11: the report, read by a researcher


def _researcher_claims(tmp_path: Path) -> Path:
    from gfverify.claims.stats import claim_result, decide
    from tests import report_fixture as fx

    stats = [
        claim_result(cid, f"{cid} statement", f"{cid} case", decide(vals), f"{cid} predicts > 0")
        for cid, vals in (
            ("S2", [0.1, 0.3, 0.2]),
            ("S5", [1.0, 1.2, 0.9]),
            ("S6", [-0.1, 0.2, 0.05]),
        )
    ]
    lp = decide([0.01, -0.005, 0.002], rule="noninferiority", margin=0.02)
    stats.append(claim_result("S4", "S4 statement", "S4 case", lp, ""))
    results = [
        *fx.claim_results(),
        fx.identity("E2", "net-c/all", 2.0, c=5e-3),
        fx.identity("E3", "net-b/all", 1.8),  # order 1.8: inside the accepted band
        *stats,
    ]
    return fx.write_claims(tmp_path / "claims.json", results)


@pytest.fixture(scope="module")
def researcher_page(tmp_path_factory) -> tuple:
    from gfverify.report.build import collect

    data = collect([], [_researcher_claims(tmp_path_factory.mktemp("researcher"))])
    return render_html(data), data


def _strokes(svg: str) -> list[str]:
    return re.findall(r"stroke: ?(#[0-9a-f]{6})", svg)


def test_identity_cases_have_distinct_colours_and_labelled_clusters(researcher_page):
    from gfverify.report.figures import case_colours, identity_convergence

    _, data = researcher_page
    svg = identity_convergence("E2", data.claims)
    assert len(set(case_colours(3))) == 3 and len(set(case_colours(25))) == 25
    cases = [r for r in data.claims if r.id == "E2"]
    colours = {c for c in _strokes(svg) if c not in ("#000000", "#b0b0b0", "#cccccc")}
    assert len(colours) >= len(cases), colours  # one colour per case, not per verdict
    for problem in ("net-a", "net-b", "net-c"):
        assert f">{problem}<" in svg  # each step-size cluster is named by its problem
    assert "scaled per problem" in svg


def test_the_accepted_order_band_is_drawn(researcher_page):
    from gfverify.report.figures import identity_convergence

    _, data = researcher_page
    svg = identity_convergence("E3", data.claims)
    assert "slope 1.5: lowest order that passes" in svg
    assert "order 1.80" in svg  # the off-order case names its order by its tolerance bar


def test_every_paired_statistical_claim_has_a_figure(researcher_page):
    html, _ = researcher_page
    for cid in ("s1", "s2", "s4", "s5", "s6"):
        assert f'aria-label="fig-{cid}"' in html, cid
    assert "paired differences per seed" in html


def test_statistical_rows_show_their_prediction_not_1(researcher_page):
    html, data = researcher_page
    table = html[html.index('id="claims-table"') :]
    table = table[: table.index("</table>")]
    s2 = next(r for r in data.claims if r.id == "S2")
    assert s2.expected == 1.0  # the record's number, which must not be shown as "expected"
    row = table[table.index("<code>S2</code>") :].split("</tr>")[0]
    assert "S2 predicts &gt; 0" in row and '<td class="num">1</td>' not in row
    s4 = table[table.index("<code>S4</code>") :].split("</tr>")[0]
    assert "effect &gt; −0.02" in s4


def test_the_quick_scale_is_marked_indicative_and_torch_is_listed_once(researcher_page):
    html, data = researcher_page
    assert "Indicative only:" in html and "quick scale" in html
    from gfverify.report.build import _merge_local_versions

    merged = _merge_local_versions({"2.14.1": ["run a"], "2.14.1+cu130": ["claims.json"]})
    assert merged == {"2.14.1+cu130": ["run a", "claims.json"]}
    assert len(data.environment["torch"]) == 1


def test_a_run_resumed_under_other_thread_counts_is_flagged(tmp_path):
    """Class 6 in the report: such a run is shown with a note, not as if uninterrupted."""
    from gfverify.report.build import load_run
    from gfverify.runs import execute, update_env
    from tests.fake_train import small_config, train_light

    outcome = execute(small_config(), tmp_path, train_fn=train_light)
    run, gap = load_run(outcome.path)
    assert run is not None and gap is None
    update_env(outcome.path, mixed_threads=True, thread_counts=[1, 2])
    run, gap = load_run(outcome.path)
    assert run.finished and "different thread counts (1, 2)" in gap.why
