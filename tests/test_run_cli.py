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


# --------------------------------------------------------------------------------------------
# issue 16: bad input -> one line, nothing lost; long work shows progress


def _one_error_line(err: str) -> str:
    (line,) = err.strip().splitlines()
    assert line.startswith("gfverify"), line
    assert ": error: " in line
    return line


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "is a directory, not a TOML file"),
        (b"seed = 1\n# caf\xe9\n", "is not UTF-8 text"),
        (b"", "sets nothing (it is empty or only comments)"),
        (b"# only a comment\n\n", "sets nothing"),
    ],
)
@pytest.mark.parametrize("command", ["run", "sweep"])
def test_unreadable_or_empty_config_is_one_line(tmp_path, capsys, content, needle, command):
    """Classes 4/5: a directory, a non-UTF-8 file, an empty file as the config: one line, exit 2,
    nothing made. (Empty is refused: it would silently run the 160-epoch CIFAR default.)"""
    path = tmp_path / "c.toml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    runs = tmp_path / "runs"
    code = main([command, str(path), "--runs-dir", str(runs)])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and (needle in line or (content is None and "not a file" in line))
    assert not runs.exists()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--samples", "0"], "argument --samples: must be >= 1"),
        (["--temperature", "-1"], "argument --temperature: must be > 0"),
        (["--temperature", "nan"], "argument --temperature: must be > 0"),
        (["--input-shape", "3,x,32"], "argument --input-shape: must be positive integers"),
        (["--input-shape", "3,,32"], "argument --input-shape"),
        (["--num-classes", "0"], "argument --num-classes: must be >= 1"),
    ],
)
def test_check_arguments_are_refused_while_parsing(capsys, argv, needle):
    """Classes 4/5: no traceback, no silent reinterpretation, and the message names the flag."""
    base = ["check", "--model", "tests.test_run_cli:not_a_module", "--input-shape", "3,8,8"]
    code = main([*base, "--num-classes", "2", *argv])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and needle in line and "--help" in line


def not_a_module() -> list:
    """A factory that returns something that is not an nn.Module."""
    return [1, 2, 3]


def test_shape_parser_refuses_empty_and_non_integer_parts():
    from gfverify.cli import _parse_shape
    from gfverify.errors import GfverifyError

    assert _parse_shape("3,32,32") == _parse_shape("3x32x32") == (3, 32, 32)
    for bad in ("3,x,32", "3,,32", "3,32,", "", "3,-1", "3.5"):
        with pytest.raises(GfverifyError, match="--input-shape"):
            _parse_shape(bad)


def test_factory_returning_a_non_module_is_one_line(capsys):
    """Class 4: ``check --model m:f`` where f returns a list."""
    argv = ["check", "--model", "tests.test_run_cli:not_a_module", "--input-shape", "3,8,8"]
    code = main([*argv, "--num-classes", "2"])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and "returned a list, not a torch.nn.Module" in line


def test_check_json_onto_a_read_only_path_fails_before_any_claim(capsys):
    """Class 3: the path is checked before the work, so no computation is lost."""
    code = main(["check", "--claims", "E2", "--json", "/sys/gfverify-none/claims.json"])
    out, err = capsys.readouterr()
    line = _one_error_line(err)
    assert code == 2 and "cannot write --json file /sys/gfverify-none/claims.json" in line
    assert out == ""  # not one claim ran


def test_run_into_a_read_only_runs_dir_is_one_line(tiny_toml, capsys):
    code, _, err = _run(capsys, str(tiny_toml), "--runs-dir", "/sys/gfverify-none/runs")
    assert code == 2 and "cannot write run directory /sys/gfverify-none/runs/" in _one_error_line(
        err
    )


def test_a_failed_write_is_salvaged_and_named(tmp_path, monkeypatch):
    """Class 3: a write that fails after the work keeps the work and says where it went."""
    from gfverify import io as gio
    from gfverify.errors import GfverifyError

    def broken(path, text, encoding="utf-8"):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(gio, "atomic_write_text", broken)
    with pytest.raises(GfverifyError, match="No space left on device") as exc:
        gio.write_or_salvage(tmp_path / "out.json", '{"results": [1]}', what="claims")
    spare = Path(str(exc.value).rsplit("saved to ", 1)[1])
    assert spare.read_text() == '{"results": [1]}'
    spare.unlink()


def test_os_errors_reaching_the_cli_are_one_line(tmp_path, capsys, monkeypatch):
    """Class 3, the net under every command: an OSError is one line, not a traceback."""
    import gfverify.commands.run as run_cmd

    def boom(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x"))

    monkeypatch.setattr(run_cmd, "cmd_run", boom)
    from gfverify import cli

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["run"].set_defaults(func=boom)
    code = main(["run", "whatever.toml"])
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and "Permission denied" in line and str(tmp_path / "x") in line


def test_corrupt_result_is_not_finished_and_the_run_rewrites_it(tmp_path, tiny_toml, capsys):
    """Class 9: a corrupt result.json is not "already finished" with an empty summary."""
    runs = tmp_path / "runs"
    assert _run(capsys, str(tiny_toml), "--runs-dir", str(runs))[0] == 0
    path = runs / run_id(load_config(tiny_toml))
    good = json.loads((path / "result.json").read_text())
    (path / "result.json").write_text('{"final_test_acc": 0.')
    from gfverify.errors import GfverifyWarning

    with pytest.warns(GfverifyWarning, match="result.json is corrupt"):
        code, out, err = _run(capsys, str(tiny_toml), "--runs-dir", str(runs))
    assert code == 0 and "already finished" not in out and "finished:" in out
    again = json.loads((path / "result.json").read_text())
    assert again["final_test_acc"] == good["final_test_acc"]
    assert f"{good['final_test_acc']:.6g}" in out


def _determinism_train(config, run):
    """A train function that reports its determinism settings as gfverify.train does."""
    import torch as _torch

    run.update_env(deterministic_algorithms=True, num_threads=_torch.get_num_threads())
    run.log_epoch({"epoch": 1, "loss": 1.0})
    return {"final_test_acc": 0.5}


def test_env_json_never_contradicts_itself(tmp_path):
    """Class 9: the top-level value the run reported and the determinism block agree."""
    from gfverify.runs import execute
    from tests.fake_train import small_config

    outcome = execute(small_config(), tmp_path, train_fn=_determinism_train)
    env = json.loads((outcome.path / "env.json").read_text())
    assert env["deterministic_algorithms"] is True
    assert env["determinism"]["deterministic_algorithms"] is True
    assert env["determinism"]["num_threads"] == env["num_threads"]


def test_resume_under_another_thread_count_warns_and_records_every_segment(tmp_path):
    """Class 6: each segment's thread count is in env.json, and a mixed run says so."""
    from gfverify.errors import GfverifyWarning
    from gfverify.runs import execute
    from tests.fake_train import small_config, train

    config = small_config()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with pytest.raises(GfverifyError_()):
            execute(config, tmp_path, train_fn=lambda c, r: train(c, r, crash_at=1))
        torch.set_num_threads(2)
        with pytest.warns(GfverifyWarning, match="under 2 thread"):
            outcome = execute(config, tmp_path, train_fn=train)
    finally:
        torch.set_num_threads(before)
    env = json.loads((outcome.path / "env.json").read_text())
    assert [(s["from_epoch"], s["num_threads"]) for s in env["segments"]] == [(0, 1), (1, 2)]
    assert env["thread_counts"] == [1, 2] and env["mixed_threads"] is True


def GfverifyError_():  # noqa: N802 - the error class, imported late like the others
    from gfverify.errors import GfverifyError

    return GfverifyError


def test_sigterm_marks_the_run_interrupted_and_frees_it(tmp_path):
    """Class 9: SIGTERM during a run leaves status.json "interrupted", not "running"."""
    import signal
    import subprocess
    import sys
    import time

    from gfverify.runs import read_status
    from tests.fake_train import small_config

    script = (
        "import sys; from gfverify.runs import execute; from tests.fake_train import"
        " small_config, train; execute(small_config(), sys.argv[1],"
        " train_fn=lambda c, r: train(c, r, checkpoint=False, delay=30))"
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], env=env, cwd=REPO)
    path = tmp_path / run_id(small_config())
    try:
        end = time.monotonic() + 60
        while (read_status(path) or {}).get("state") != "running" and time.monotonic() < end:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    status = read_status(path)
    assert status["state"] == "interrupted" and status["reason"] == "terminated by signal SIGTERM"


def test_run_shows_per_epoch_progress_on_a_terminal_only(tmp_path, tiny_toml, capsys, monkeypatch):
    """Class 10: an epoch bar with an ETA on a terminal; nothing when stderr is not a TTY."""
    import gfverify.commands as commands

    monkeypatch.setenv("GFVERIFY_NO_PROGRESS", "1")  # no per-batch bars from the trainer
    code, _, err = _run(capsys, str(tiny_toml), "--runs-dir", str(tmp_path / "quiet"))
    assert code == 0 and "epoch" not in err  # not a terminal: quiet
    monkeypatch.setattr(commands, "progress_wanted", lambda *a, **k: True)
    code, _, err = _run(capsys, str(tiny_toml), "--runs-dir", str(tmp_path / "shown"))
    assert code == 0
    assert "2/2" in err and "epoch" in err and "<" in err  # n/total, unit and the ETA field


def test_warnings_go_above_a_progress_bar_not_into_it(capsys):
    """Class 10: a library warning while a bar is shown is its own line."""
    import io
    import warnings

    from tqdm import tqdm

    from gfverify.commands import quiet_warnings_in

    stream = io.StringIO()
    bar = tqdm(total=3, file=stream, disable=False)
    with quiet_warnings_in(bar), warnings.catch_warnings():
        warnings.simplefilter("always")
        bar.update(1)
        warnings.warn("something from a library", UserWarning, stacklevel=1)
        bar.update(1)
    bar.close()
    err = capsys.readouterr().err
    assert "UserWarning: something from a library\n" in err
    assert "something" not in stream.getvalue()


@pytest.mark.parametrize(
    ("command", "needles"),
    [
        ("check", ["Run the paper's executable claims", "default: quick", "(default: 16)"]),
        ("measures", ["importance measure"]),
        ("run", ["(default: runs)"]),
        ("sweep", ["--workers WORKERS local: parallel worker processes"]),
    ],
)
def test_help_describes_each_command_and_shows_defaults(capsys, command, needles):
    """Class 12."""
    code = main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert code == 0
    for needle in needles:
        assert needle in out, (needle, out)
    assert "(default: runs) (default" not in out  # never twice


def test_version(capsys):
    from gfverify import __version__

    code = main(["--version"])
    assert code == 0 and capsys.readouterr().out.strip() == f"gfverify {__version__}"


def test_gfverify_warnings_print_as_one_line():
    import warnings

    from gfverify.cli import _one_line_warnings
    from gfverify.errors import GfverifyWarning

    _one_line_warnings()
    text = warnings.formatwarning("resumes\n under 2 threads", GfverifyWarning, "x.py", 1)
    assert text == "gfverify: warning: resumes under 2 threads\n"


def test_eta_weighs_tasks_by_their_cost_not_by_the_first():
    """Class 10: a 10-minute first claim and nine 1-minute ones: after the first, 9 min left
    (a per-task average would say 90)."""
    from gfverify.commands import CostEta

    ids = ["S1", *[f"E{i}" for i in range(9)]]
    eta = CostEta(ids, {"S1": 600.0, **{f"E{i}": 60.0 for i in range(9)}})
    assert eta.remaining_s() is None and eta.line() == "0/10 done"
    eta.finished("S1", 600.0)
    assert eta.remaining_s() == pytest.approx(540.0)
    assert eta.line() == "1/10 done, about 9 min left"
    uniform = CostEta(ids)  # no costs known: every task the same
    uniform.finished("S1", 600.0)
    assert uniform.remaining_s() == pytest.approx(5400.0)


def test_claim_costs_are_read_from_an_earlier_json(tmp_path):
    from gfverify.commands import claim_costs_from

    path = tmp_path / "claims.json"
    rows = [
        {"id": "E2", "details": {"claim_seconds": 3.0}},
        {"id": "E2", "details": {"claim_seconds": 4.0}},
        {"id": "S1", "details": {"seconds": 50}},
        {"id": "X", "details": "bad"},
    ]
    path.write_text(json.dumps({"results": rows}))
    assert claim_costs_from(path) == {"E2": 4.0, "S1": 50.0}
    assert claim_costs_from(tmp_path / "none.json") == {}


def test_shipped_claim_costs_cover_every_registered_claim():
    """The check's ETA on a fresh machine weighs claims by claims/costs.json: a claim added
    without a measured cost would silently count as the median."""
    from gfverify.claims import select_claims
    from gfverify.commands import builtin_claim_costs

    costs = builtin_claim_costs()
    assert costs and all(v > 0 for v in costs.values())
    assert {c.id for c in select_claims("all")} <= set(costs)
