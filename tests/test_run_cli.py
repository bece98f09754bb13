"""``gfverify run CONFIG``: runs, skips finished runs, resumes, one-line errors (exit 2), and the
smoke experiment configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gfverify.cli import main
from gfverify.config import expand_grid, flatten_config, load_config, run_id
from gfverify.runs import read_metrics
from gfverify.train import check_config

REPO = Path(__file__).resolve().parents[1]

TINY = """
device = "cpu"
[data]
name = "digits"
num_workers = 0
fast_path = true
[model]
name = "vgg13"
width_mult = 0.125
[measure]
samples = 32
batch_size = 16
[prune]
ratio = 0.5
rounds = 1
[train]
epochs = 2
lrs = [0.1]
lr_epochs = [2]
batch_size = 16
max_batches_per_epoch = 2
"""


@pytest.fixture()
def tiny_toml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["run", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_run_prints_dir_and_result_then_skips(tmp_path, tiny_toml, capsys, monkeypatch):
    monkeypatch.setenv("GFVERIFY_NO_PROGRESS", "1")
    runs = tmp_path / "runs"
    code, out, _ = _run(capsys, str(tiny_toml), "--runs-dir", str(runs))
    assert code == 0
    rid = run_id(load_config(tiny_toml))
    assert str(runs / rid) in out and "finished" in out and "final_test_acc" in out
    result = json.loads((runs / rid / "result.json").read_text())
    assert f"{result['final_test_acc']:.6g}" in out
    code, out, _ = _run(capsys, str(tiny_toml), "--runs-dir", str(runs))
    assert code == 0 and "already finished" in out
    # an override makes another run
    code, out, _ = _run(
        capsys, str(tiny_toml), "--runs-dir", str(runs), "--set", "prune.ratio=0.25"
    )
    assert code == 0 and len([p for p in runs.iterdir() if p.is_dir()]) == 2


def test_resume_and_no_resume(tmp_path, tiny_toml, capsys, monkeypatch):
    monkeypatch.setenv("GFVERIFY_NO_PROGRESS", "1")
    runs = tmp_path / "runs"
    assert _run(capsys, str(tiny_toml), "--runs-dir", str(runs))[0] == 0
    path = runs / run_id(load_config(tiny_toml))
    result = json.loads((path / "result.json").read_text())
    # Interrupted after its last checkpoint, before result.json: resuming trains nothing more.
    (path / "result.json").unlink()
    before = read_metrics(path)
    assert _run(capsys, str(tiny_toml), "--runs-dir", str(runs))[0] == 0
    assert read_metrics(path) == before
    assert (
        json.loads((path / "result.json").read_text())["final_test_acc"]
        == (result["final_test_acc"])
    )
    # --no-resume starts the unfinished run over (same numbers: the run is deterministic).
    (path / "result.json").unlink()
    assert _run(capsys, str(tiny_toml), "--runs-dir", str(runs), "--no-resume")[0] == 0
    again = read_metrics(path)
    assert [m["train_loss"] for m in again] == [m["train_loss"] for m in before]
    assert again[0]["epoch_seconds"] != before[0]["epoch_seconds"]  # really trained again
    env = json.loads((path / "env.json").read_text())
    assert env["attempt"] == 3 and env["device_resolved"] == "cpu"


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--set", "prune.ratio=0.99"], "config key 'prune.ratio' must be in [0.0, 0.95]"),
        (["--set", "prune.ratoi=0.5"], "did you mean 'prune.ratio'"),
        (["--set", "data.normalize=none"], "data.normalize"),
        (["--set", "measure.name=nope"], "unknown measure 'nope'"),
        (["--set", "train.pretrained=/no/such/file.pt"], "not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_toml, capsys, extra, message):
    code, _, err = _run(capsys, str(tiny_toml), "--runs-dir", str(tmp_path / "r"), *extra)
    assert code == 2
    assert err.startswith("gfverify: error: ") and err.count("\n") == 1
    assert message in err


def test_missing_config_and_sweep_file_are_refused(tmp_path, capsys):
    code, _, err = _run(capsys, str(tmp_path / "none.toml"))
    assert code == 2 and "config file not found" in err
    code, _, err = _run(capsys, str(REPO / "experiments" / "smoke_sweep.toml"))
    assert code == 2 and "[sweep] table" in err


def test_smoke_configs_are_valid_and_consistent():
    smoke = load_config(REPO / "experiments" / "smoke.toml")
    check_config(smoke)
    assert (smoke.data.name, smoke.model.width_mult, smoke.measure.name) == (
        "digits",
        0.25,
        "magnitude",
    )
    assert (smoke.prune.ratio, smoke.prune.rounds, smoke.measure.samples) == (0.5, 3, 256)
    assert smoke.train.epochs == 8 and smoke.train.max_batches_per_epoch is not None
    check_config(load_config(REPO / "experiments" / "smoke.toml", ["data.name=cifar10"]))
    grid = expand_grid(REPO / "experiments" / "smoke_sweep.toml")
    assert sorted((c.measure.name, c.seed) for c in grid) == [
        ("loss_preservation", 0),
        ("loss_preservation", 1),
        ("magnitude", 0),
        ("magnitude", 1),
    ]
    base = flatten_config(smoke)
    for config in grid:  # the sweep differs from smoke.toml only along its grid
        flat = flatten_config(config)
        assert {k for k in base if base[k] != flat[k]} <= {"measure.name", "seed"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_refused_before_a_run_dir_exists(tmp_path, tiny_toml, capsys):
    runs = tmp_path / "r"
    code, _, err = _run(capsys, str(tiny_toml), "--runs-dir", str(runs), "--set", "device=cuda")
    assert code == 2 and "CUDA is not available" in err
    assert not runs.exists()


def test_run_records_its_command_line_and_takes_several_overrides_per_set(
    tmp_path, tiny_toml, capsys, monkeypatch
):
    monkeypatch.setenv("GFVERIFY_NO_PROGRESS", "1")
    runs = tmp_path / "runs"
    argv = ["run", str(tiny_toml), "--runs-dir", str(runs), "--set", "seed=3", "prune.ratio=0.25"]
    assert main(argv) == 0
    (run_dir,) = runs.iterdir()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["seed"] == 3 and config["prune"]["ratio"] == 0.25
    env = json.loads((run_dir / "env.json").read_text())
    assert (
        env["command"]
        == f"gfverify run {tiny_toml} --runs-dir {runs} --set seed=3 prune.ratio=0.25"
    )
