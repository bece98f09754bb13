"""The benchmark harness (``python -m benchmarks``): discovery, failure isolation, output files.

Uses a throw-away benchmarks-like package written to a temporary folder; no real benchmark is
run and nothing is timed against a threshold.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import uuid
from pathlib import Path

import pytest

from benchmarks import __main__ as harness
from benchmarks import common

BENCHES = {
    "bench_alpha.py": (
        "def run(quick=False):\n"
        "    return {'quick': quick, 'value': 1.5, 'summary': {'headline': 2.25}}\n"
    ),
    "bench_broken.py": "def run(quick=False):\n    raise RuntimeError('boom')\n",
    "bench_noimport.py": "import gfverify_no_such_module_xyz\n",
    "bench_notjson.py": "def run(quick=False):\n    return {'obj': object()}\n",
    "bench_zeta.py": "def run(quick=False):\n    return {'nested': {'a': 1, 'b': [1, 2]}}\n",
    "helper.py": "def run(quick=False):\n    raise AssertionError('not a benchmark')\n",
}


@pytest.fixture
def fake_pkg(tmp_path: Path):
    name = f"fakebench_{uuid.uuid4().hex[:8]}"
    pkg = tmp_path / "src" / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for fname, text in BENCHES.items():
        (pkg / fname).write_text(text)
    sys.path.insert(0, str(tmp_path / "src"))
    importlib.invalidate_caches()
    try:
        yield name
    finally:
        sys.path.remove(str(tmp_path / "src"))
        for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[mod]


def test_discover_finds_bench_modules_only(fake_pkg: str) -> None:
    found = harness.discover(fake_pkg)
    assert list(found) == ["alpha", "broken", "noimport", "notjson", "zeta"]
    assert found["zeta"] == f"{fake_pkg}.bench_zeta"


def test_discover_real_package_has_hvp() -> None:
    assert harness.discover()["hvp"] == "benchmarks.bench_hvp"


def test_select_by_name_with_or_without_prefix(fake_pkg: str) -> None:
    found = harness.discover(fake_pkg)
    assert list(harness.select(found, "zeta,bench_alpha")) == ["zeta", "alpha"]
    assert harness.select(found, None) == found
    with pytest.raises(KeyError, match="nope"):
        harness.select(found, "alpha,nope")


def test_failures_are_recorded_and_the_rest_still_run(fake_pkg: str, tmp_path: Path) -> None:
    out = tmp_path / "res" / "m.json"
    doc = harness.run_benchmarks(harness.discover(fake_pkg), quick=True, out=out)
    b = doc["benchmarks"]
    assert b["broken"]["error"] == "RuntimeError: boom"
    assert "raise RuntimeError" in b["broken"]["traceback"]
    assert b["noimport"]["error"].startswith("ModuleNotFoundError")
    assert b["notjson"]["error"].startswith("TypeError")
    # benchmarks after the failing ones ran and kept their results
    assert b["alpha"]["result"] == {"quick": True, "value": 1.5, "summary": {"headline": 2.25}}
    assert b["zeta"]["result"] == {"nested": {"a": 1, "b": [1, 2]}}
    for entry in b.values():
        assert ("result" in entry) != ("error" in entry)
        assert entry["quick"] is True and entry["wall_s"] >= 0

    on_disk = json.loads(out.read_text())
    assert on_disk == json.loads(json.dumps(doc))
    env = on_disk["environment"]
    for key in ("torch", "device", "torch_threads", "git", "date", "load_average", "machine"):
        assert key in env
    assert env["machine"] == common.machine_name()
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.json", "m.md"]  # no temporaries
    md = out.with_suffix(".md").read_text()
    assert "| alpha | headline | 2.25 |" in md
    assert "| alpha | value |" not in md  # the summary replaces the full result
    assert "| zeta | nested.a | 1 |" in md
    assert "| broken | error | RuntimeError: boom |" in md


def test_main_exit_status_merge_and_no_merge(fake_pkg: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.json"
    assert harness.main(["--only", "alpha", "--out", str(out)], package=fake_pkg) == 0
    first = json.loads(out.read_text())["benchmarks"]
    assert first["alpha"]["result"]["quick"] is False
    assert "| alpha | headline | 2.25 |" in capsys.readouterr().out

    assert harness.main(["--quick", "--only", "broken", "--out", str(out)], package=fake_pkg) == 1
    merged = json.loads(out.read_text())["benchmarks"]
    assert set(merged) == {"alpha", "broken"}
    assert merged["alpha"] == first["alpha"]  # kept from the earlier run

    args = ["--only", "zeta", "--out", str(out), "--no-merge"]
    assert harness.main(args, package=fake_pkg) == 0
    assert set(json.loads(out.read_text())["benchmarks"]) == {"zeta"}

    with pytest.raises(SystemExit) as exc:
        harness.main(["--only", "nope", "--out", str(out)], package=fake_pkg)
    assert exc.value.code == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "x.json"
    harness.write_json_atomic(out, {"a": 1})
    assert json.loads(out.read_text()) == {"a": 1}
    assert os.stat(out).st_mode & 0o044  # readable by others, unlike mkstemp's 0600

    def fail(_fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(harness.os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        harness.write_json_atomic(out, {"a": 2, "big": "y" * 100_000})
    assert json.loads(out.read_text()) == {"a": 1}  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temporary left behind


def test_load_previous_tolerates_a_corrupt_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"benchmarks": {"a": ')
    assert harness.load_previous(bad) == {}
    assert harness.load_previous(tmp_path / "missing.json") == {}


def test_timeit_calls_warmup_plus_repeats() -> None:
    calls: list[str] = []
    t = common.timeit(lambda: calls.append("f"), repeats=4, warmup=2)
    assert len(calls) == 6
    assert t["repeats"] == 4 and 0 <= t["min_s"] <= t["median_s"]
    with pytest.raises(ValueError):
        common.timeit(lambda: None, repeats=0)


def test_timeit_interleaved_is_round_robin() -> None:
    calls: list[str] = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    t = common.timeit_interleaved(fns, repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert set(t) == {"a", "b"} and t["a"]["repeats"] == 3


def test_machine_name_and_slugify() -> None:
    assert common.slugify("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert common.slugify("Intel(R) Xeon(R) CPU @ 2.20GHz") == "intel-r-xeon-r-cpu-2.20ghz"
    assert common.slugify("***") == "unknown"
    name = common.machine_name()
    assert name == common.slugify(name)
    assert name.startswith(("cpu-", "cuda-"))
    assert common.peak_rss_mb() > 0
