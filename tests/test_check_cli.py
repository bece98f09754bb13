"""Issue 12: `gfverify check` results survive (JSON after every claim, error records, exit codes),
a kill -9 mid-check leaves a valid JSON of the claims done, the flow budget, and --model from
the current folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gfverify import cli
from gfverify.claims.base import CLAIMS, Claim, ClaimResult, ClaimSkipped, load_all_claims

REPO = Path(__file__).resolve().parents[1]


def _result(claim_id: str, passed: bool) -> ClaimResult:
    return ClaimResult(claim_id, "test claim", "identity", 1.0, 1.0, 0.0, 0.0, passed, case="c")


@pytest.fixture
def fake_claims(monkeypatch):
    """Three throwaway claims: one raising, one failing, one skipping itself."""
    load_all_claims()

    def boom(ctx):
        raise RuntimeError("cannot prune a grouped conv\nsecond line of the message")

    def skip(ctx):
        raise ClaimSkipped("over budget: ~99 s estimated")

    for cid, fn in (
        ("ZZRAISE", boom),
        ("ZZFAIL", lambda ctx: [_result("ZZFAIL", False)]),
        ("ZZSKIP", skip),
    ):
        monkeypatch.setitem(CLAIMS, cid, Claim(cid, "test claim", "identity", fn, "test"))


def test_a_claim_that_raises_is_recorded_and_the_check_goes_on(fake_claims, tmp_path, capsys):
    out = tmp_path / "c.json"
    rc = cli.main(["check", "--claims", "ZZRAISE,P1", "--json", str(out), "--quiet"])
    assert rc == 2  # something could not run
    data = json.loads(out.read_text())
    assert data["complete"] is True and data["claims_pending"] == []
    first, *rest = data["results"]
    assert first["id"] == "ZZRAISE" and first["verdict"] == "error" and first["passed"] is False
    assert first["details"]["reason"] == (
        "RuntimeError: cannot prune a grouped conv second line of the message"
    )
    assert len(rest) == 24 and all(r["id"] == "P1" and r["verdict"] == "pass" for r in rest)
    assert "ZZRAISE ERROR: RuntimeError" in capsys.readouterr().out


def test_exit_codes(fake_claims, tmp_path):
    assert cli.main(["check", "--claims", "P1", "--quiet"]) == 0
    assert cli.main(["check", "--claims", "ZZSKIP,P1", "--quiet"]) == 0  # skipped is not an error
    assert cli.main(["check", "--claims", "ZZFAIL,P1", "--quiet"]) == 1
    assert cli.main(["check", "--claims", "ZZFAIL,ZZRAISE", "--quiet"]) == 1  # failure dominates
    assert cli.main(["check", "--claims", "ZZRAISE", "--quiet"]) == 2
    assert cli.main(["check", "--claims", "P1", "--model", "x:y", "--quiet"]) == 2  # usage


def test_the_report_reads_error_and_skipped_records(fake_claims, tmp_path):
    from gfverify.report.build import load_claims

    out = tmp_path / "c.json"
    cli.main(["check", "--claims", "ZZRAISE,ZZSKIP,P1", "--json", str(out), "--quiet"])
    claims, gaps = load_claims(out)
    assert not gaps and claims is not None
    verdicts = {r.id: r.verdict for r in claims.rows}
    assert verdicts["ZZRAISE"] == "error" and verdicts["ZZSKIP"] == "skipped"
    assert len(claims.rows) == 26


SLOW_CHECK = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from gfverify import cli
    from gfverify.claims.base import CLAIMS, Claim, load_all_claims
    load_all_claims()
    def gate(ctx):  # holds the check until the test has seen the file before any claim ended
        while not Path(sys.argv[2]).exists():
            time.sleep(0.02)
        return []
    def slow(ctx):
        time.sleep(120)
        return []
    CLAIMS["ZZGATE"] = Claim("ZZGATE", "waits for the test", "identity", gate, "test")
    CLAIMS["ZZSLOW"] = Claim("ZZSLOW", "sleeps", "identity", slow, "test")
    argv = ["check", "--claims", "ZZGATE,P1,ZZSLOW,P2", "--json", sys.argv[1], "--quiet"]
    sys.exit(cli.main(argv))
    """
)


def test_kill_9_mid_check_leaves_valid_json_of_the_claims_done(tmp_path):
    out, gate = tmp_path / "claims.json", tmp_path / "gate"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_CHECK, str(out), str(gate)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen = []
    try:
        deadline = time.time() + 50
        while time.time() < deadline:
            if out.exists():
                data = json.loads(out.read_text())  # valid at every moment we look
                seen.append(len(data["results"]))
                gate.touch()
                if data["claims_done"] == ["ZZGATE", "P1"]:
                    break
            assert proc.poll() is None, "the check ended before it was killed"
            time.sleep(0.05)
        else:
            pytest.fail("P1 never finished")
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    data = json.loads(out.read_text())
    assert data["complete"] is False
    assert data["claims_done"] == ["ZZGATE", "P1"]
    assert data["claims_pending"] == ["ZZSLOW", "P2"]
    assert len(data["results"]) == 24 and {r["verdict"] for r in data["results"]} == {"pass"}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert seen[0] == 0  # an empty but valid file exists from the start


def test_flow_claims_skip_with_an_estimate_when_over_budget(monkeypatch, tmp_path):
    from gfverify.claims import problems
    from tests.test_check_samples import issue_net

    p = problems.user_problem(issue_net(), (3, 32, 32), 10, samples=10, budget_s=1e-9)
    with pytest.raises(ClaimSkipped, match=r"~640 gradients x .* over the per-claim budget"):
        _ = p.points
    # a budget the estimate fits, but a hard stop that comes at once: stopped, not hours
    q = problems.user_problem(issue_net(), (3, 32, 32), 10, samples=10, budget_s=1e-9)
    monkeypatch.setattr(problems, "FLOW_EVALS_PER_INTEGRATION", 0)
    with pytest.raises(ClaimSkipped, match="stopped at the hard limit"):
        _ = q.points


def test_model_factory_in_the_current_folder(tmp_path, monkeypatch):
    from gfverify.models import load_factory

    (tmp_path / "issue12_local_nets.py").write_text(
        "from torch import nn\ndef make():\n    return nn.Linear(4, 3)\n"
    )
    monkeypatch.chdir(tmp_path)
    cleaned = [p for p in sys.path if os.path.abspath(p or ".") != str(tmp_path)]
    monkeypatch.setattr(sys, "path", cleaned)
    factory = load_factory("issue12_local_nets:make")
    assert factory().out_features == 3
    sys.modules.pop("issue12_local_nets", None)


def test_check_model_from_the_current_folder_as_a_command(tmp_path):
    """`gfverify check --model nets:make` run from the folder holding nets.py (a subprocess,
    so sys.path is what a user's shell gives the console script)."""
    (tmp_path / "nets.py").write_text(
        "from torch import nn\n"
        "def make():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.Tanh(), nn.Linear(5, 3))\n"
    )
    script = "import sys; from gfverify.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.append({str(REPO)!r}); " + script]
        + ["check", "--model", "nets:make", "--input-shape", "3,2,2", "--num-classes", "3"]
        + ["--claims", "M-magnitude", "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "M-magnitude" in proc.stdout and "pass" in proc.stdout
