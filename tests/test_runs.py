"""Run directories: atomic files, checksummed checkpoints, locks, execute/resume, results."""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gfverify import io as gio
from gfverify.config import config_to_dict, run_id
from gfverify.errors import CheckpointError, ConfigError, GfverifyError, NonFiniteLossError
from gfverify.runs import (
    RunDir,
    RunFailedError,
    aggregate,
    collect_results,
    execute,
    read_metrics,
    read_status,
    results_table,
    run_path,
    write_csv,
)
from tests import fake_train
from tests.fake_train import calls, small_config

# --------------------------------------------------------------------------------- io


def test_atomic_writes_leave_no_temporaries(tmp_path):
    target = tmp_path / "sub" / "x.json"
    gio.atomic_write_json(target, {"a": (1, 2), "b": np.float32(0.5), "c": math.nan})
    back = gio.read_json(target)
    assert back["a"] == [1, 2] and back["b"] == 0.5 and math.isnan(back["c"])
    gio.atomic_write_text(target, "replaced")
    assert target.read_text() == "replaced"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.json"]


def test_atomic_write_failure_keeps_old_file(tmp_path):
    target = tmp_path / "x.json"
    gio.atomic_write_json(target, {"v": 1})
    with pytest.raises(TypeError):
        gio.atomic_write_json(target, {"v": object()})
    assert gio.read_json(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_jsonl_skips_a_truncated_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    gio.append_jsonl(path, {"epoch": 1})
    gio.append_jsonl(path, {"epoch": 2})
    with path.open("ab") as fh:
        fh.write(b'{"epoch": 3, "lo')  # a crash mid-write
    assert gio.read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}]
    gio.append_jsonl(path, {"epoch": 3})  # starts on a fresh line
    assert gio.read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}]


def test_checkpoint_roundtrip_and_meta(tmp_path):
    path = tmp_path / "ck.pt"
    state = {"w": torch.arange(5.0), "epoch": 3, "rng": torch.get_rng_state()}
    gio.save_checkpoint(path, state, meta={"epoch": 3})
    back = gio.load_checkpoint(path)
    assert torch.equal(back["w"], state["w"]) and back["epoch"] == 3
    assert torch.equal(back["rng"], state["rng"])
    assert gio.read_checkpoint_meta(path) == {"epoch": 3}


def _corruptions(path):
    data = path.read_bytes()
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    header_end = data.index(b"\n", len(gio.CHECKPOINT_MAGIC))
    return {
        "truncated": (data[:-7], "truncated"),
        "bitflip": (bytes(flipped), "sha256"),
        "no_header": (data[: len(gio.CHECKPOINT_MAGIC) + 5], "truncated"),
        "bad_magic": (b"PK\x03\x04" + data[4:], "not a gfverify checkpoint"),
        "bad_header": (data[: len(gio.CHECKPOINT_MAGIC)] + b"{oops" + data[header_end:], "header"),
        "empty": (b"", "not a gfverify checkpoint"),
    }


@pytest.mark.parametrize(
    "kind", ["truncated", "bitflip", "no_header", "bad_magic", "bad_header", "empty"]
)
def test_corrupt_checkpoint_raises_before_unpickling(tmp_path, monkeypatch, kind):
    path = tmp_path / "ck.pt"
    gio.save_checkpoint(path, {"w": torch.ones(100)})
    data, words = _corruptions(path)[kind]
    path.write_bytes(data)

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.load called on an unverified checkpoint")

    monkeypatch.setattr(torch, "load", forbidden)
    with pytest.raises(CheckpointError) as info:
        gio.load_checkpoint(path)
    assert words in str(info.value) and "\n" not in str(info.value)


class _Arbitrary:
    pass


def test_weights_only_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "ck.pt"
    gio.save_checkpoint(path, {"obj": _Arbitrary()})
    with pytest.raises(CheckpointError, match="weights_only"):
        gio.load_checkpoint(path)
    assert isinstance(gio.load_checkpoint(path, weights_only=False)["obj"], _Arbitrary)


def test_file_lock_is_exclusive_within_and_across_processes(tmp_path):
    lock = tmp_path / "lock"
    script = textwrap.dedent(
        f"""
        from gfverify.io import file_lock
        with file_lock({str(lock)!r}, blocking=False) as held:
            print(held)
        """
    )
    with gio.file_lock(lock) as held:
        assert held
        with gio.file_lock(lock, blocking=False) as other:
            assert other is False
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert out.stdout.strip() == "False", out.stderr
    with gio.file_lock(lock, blocking=False) as again:
        assert again
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.stdout.strip() == "True", out.stderr


# --------------------------------------------------------------------------------- execute


def test_fresh_run_writes_the_layout_and_second_call_skips(tmp_path):
    cfg = small_config()
    res = execute(cfg, tmp_path, train_fn=fake_train.train)
    path = run_path(cfg, tmp_path)
    assert res.status == "finished" and res.run_id == run_id(cfg) and res.path == path
    assert res.result["final_test_acc"] == pytest.approx(fake_train.fake_accuracy(cfg, 3))
    for name in ("config.json", "env.json", "status.json", "metrics.jsonl", "checkpoint.pt"):
        assert (path / name).exists(), name
    assert gio.read_json(path / "config.json") == config_to_dict(cfg)
    assert gio.read_json(path / "result.json") == res.result
    assert [m["epoch"] for m in read_metrics(path)] == [1, 2, 3]
    status = read_status(path)
    assert status["state"] == "finished" and status["epoch"] == 3
    env = gio.read_json(path / "env.json")
    assert env["python"] and env["torch"] == torch.__version__.split("+")[0]
    assert "hostname" in env and "git_commit" in env and "determinism" in env
    # the SIMD kernels the run computed with: runs on other kernels round differently
    capability = torch.backends.cpu.get_cpu_capability()
    assert env["determinism"]["cpu_capability"] == capability
    assert [s["cpu_capability"] for s in env["segments"]] == [capability]

    again = execute(cfg, tmp_path, train_fn=fake_train.train)
    assert again.status == "skipped" and again.result == res.result
    assert calls(path) == 1


def test_resume_continues_from_the_saved_epoch(tmp_path):
    cfg = small_config(**{"train.epochs": 5})
    path = run_path(cfg, tmp_path)
    crash = functools.partial(fake_train.train, crash_at=2)
    with pytest.raises(RunFailedError, match="simulated crash at epoch 2") as info:
        execute(cfg, tmp_path, train_fn=crash)
    assert isinstance(info.value, GfverifyError)
    status = read_status(path)
    assert status["state"] == "failed" and status["epoch"] == 2
    assert "RuntimeError: simulated crash" in status["reason"]

    res = execute(cfg, tmp_path, train_fn=fake_train.train)
    assert res.status == "finished" and res.result["resumed_from"] == 2
    assert [m["epoch"] for m in read_metrics(path)] == [1, 2, 3, 4, 5]
    assert calls(path) == 2
    assert gio.read_json(path / "env.json")["attempt"] == 2


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_remove_temporaries_takes_only_a_dead_writers_files(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    names = {
        "dead": f".checkpoint.pt.{dead}.0123456789ab.tmp",
        "alive": f".status.json.{alive}.0123456789ab.tmp",
        "user": "notes.tmp",  # not an atomic-write temporary: never touched
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    assert gio.remove_temporaries(tmp_path) == [names["dead"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names["alive"], names["user"]])


@pytest.mark.parametrize("finished", [False, True], ids=["resumed", "skipped"])
def test_execute_clears_a_killed_writers_temporary(tmp_path, finished):
    """kill -9 inside an atomic write leaves a temporary; the next execute removes it."""
    cfg = small_config(**{"train.epochs": 3})
    path = run_path(cfg, tmp_path)
    crash = functools.partial(fake_train.train, crash_at=None if finished else 2)
    if finished:
        execute(cfg, tmp_path, train_fn=crash)
    else:
        with pytest.raises(RunFailedError):
            execute(cfg, tmp_path, train_fn=crash)
    leftover = path / f".checkpoint.pt.{_dead_pid()}.0123456789ab.tmp"
    leftover.write_bytes(b"half a checkpoint")
    res = execute(cfg, tmp_path, train_fn=fake_train.train)
    assert res.status == ("skipped" if finished else "finished")
    assert not leftover.exists()
    assert not [p.name for p in path.iterdir() if p.name.endswith(".tmp")]


def test_finished_run_on_read_only_storage_is_still_skipped(tmp_path, monkeypatch):
    """Tidying a finished run needs its lock file; where that can't be opened, skip anyway."""
    cfg = small_config()
    first = execute(cfg, tmp_path, train_fn=fake_train.train)

    def unopenable(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "lock")

    monkeypatch.setattr(gio, "file_lock", unopenable)
    again = execute(cfg, tmp_path, train_fn=fake_train.train)
    assert again.status == "skipped" and again.result == first.result


def test_metrics_logged_after_the_last_checkpoint_are_trimmed(tmp_path):
    cfg = small_config(**{"train.epochs": 4})
    path = run_path(cfg, tmp_path)
    crash = functools.partial(fake_train.train, crash_at=3, crash_before_checkpoint=True)
    with pytest.raises(RunFailedError):
        execute(cfg, tmp_path, train_fn=crash)
    assert [m["epoch"] for m in read_metrics(path)] == [1, 2, 3]  # epoch 3 not checkpointed
    res = execute(cfg, tmp_path, train_fn=fake_train.train)
    assert res.result["resumed_from"] == 2
    assert [m["epoch"] for m in read_metrics(path)] == [1, 2, 3, 4]


def test_resume_false_starts_over(tmp_path):
    cfg = small_config(**{"train.epochs": 4})
    with pytest.raises(RunFailedError):
        execute(cfg, tmp_path, train_fn=functools.partial(fake_train.train, crash_at=2))
    res = execute(cfg, tmp_path, train_fn=fake_train.train, resume=False)
    assert res.result["resumed_from"] == 0
    assert [m["epoch"] for m in read_metrics(run_path(cfg, tmp_path))] == [1, 2, 3, 4]


def test_corrupt_checkpoint_is_not_loaded(tmp_path):
    cfg = small_config(**{"train.epochs": 4})
    path = run_path(cfg, tmp_path)
    with pytest.raises(RunFailedError):
        execute(cfg, tmp_path, train_fn=functools.partial(fake_train.train, crash_at=2))
    ck = path / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[:-3])
    with pytest.raises(CheckpointError, match="truncated.*delete it"):
        execute(cfg, tmp_path, train_fn=fake_train.train)
    assert calls(path) == 1  # train_fn never ran on the corrupt state
    assert read_status(path)["state"] == "failed"
    assert read_status(path)["error_type"] == "CheckpointError"


def test_changed_config_under_existing_id_is_rejected(tmp_path):
    cfg = small_config()
    path = run_path(cfg, tmp_path)
    with pytest.raises(RunFailedError):
        execute(cfg, tmp_path, train_fn=functools.partial(fake_train.train, crash_at=1))
    stored = gio.read_json(path / "config.json")
    stored["train"]["weight_decay"] = 5e-4  # as if the default had changed since
    gio.atomic_write_json(path / "config.json", stored)
    with pytest.raises(ConfigError, match=r"config changed under existing run id .*weight_decay"):
        execute(cfg, tmp_path, train_fn=fake_train.train)
    assert calls(path) == 1

    stored["train"]["weight_decay"] = 1e-4
    stored["device"] = "cuda:7"  # not an identity field: fine
    del stored["measure"]["use_init"]  # a field added later: default assumed
    gio.atomic_write_json(path / "config.json", stored)
    assert execute(cfg, tmp_path, train_fn=fake_train.train).status == "finished"

    cfg2 = small_config(**{"seed": 5})
    path2 = run_path(cfg2, tmp_path)
    path2.mkdir()
    gio.atomic_write_json(path2 / "config.json", {**config_to_dict(cfg2), "removed_key": 1})
    with pytest.raises(ConfigError, match="'removed_key' no longer exists"):
        execute(cfg2, tmp_path, train_fn=fake_train.train)


def test_nan_loss_is_recorded_in_status(tmp_path):
    cfg = small_config()
    path = run_path(cfg, tmp_path)
    with pytest.raises(NonFiniteLossError):
        execute(cfg, tmp_path, train_fn=functools.partial(fake_train.train, nan_at=2))
    status = read_status(path)
    assert status["state"] == "failed" and status["error_type"] == "NonFiniteLossError"
    assert "nan at epoch 2" in status["reason"] and status["epoch"] == 2
    assert math.isnan(read_metrics(path)[-1]["loss"])
    assert not (path / "result.json").exists()


def test_nonfinite_result_fields_are_flagged(tmp_path):
    cfg = small_config()
    res = execute(
        cfg, tmp_path, train_fn=lambda c, r: {"final_test_acc": math.nan, "x": {"y": math.inf}}
    )
    assert res.status == "finished"
    assert read_status(res.path)["nonfinite"] == ["final_test_acc", "x.y"]


def test_busy_when_another_process_holds_the_run(tmp_path):
    cfg = small_config()
    path = run_path(cfg, tmp_path)
    path.mkdir(parents=True)
    with gio.file_lock(path / "lock"):
        res = execute(cfg, tmp_path, train_fn=fake_train.train)
    assert res.status == "busy" and calls(path) == 0
    assert execute(cfg, tmp_path, train_fn=fake_train.train).status == "finished"


def test_train_fn_by_name_and_bad_train_fns(tmp_path):
    cfg = small_config()
    res = execute(cfg, tmp_path, train_fn="tests.fake_train:train_light")
    assert res.status == "finished" and not (res.path / "checkpoint.pt").exists()
    other = small_config(**{"seed": 1})
    with pytest.raises(GfverifyError, match="cannot import train_fn"):
        execute(other, tmp_path, train_fn="tests.fake_train:nope")
    with pytest.raises(GfverifyError, match="pkg.module:attr"):
        execute(other, tmp_path, train_fn="no_colon")
    with pytest.raises(RunFailedError, match="returned list"):
        execute(other, tmp_path, train_fn=lambda c, r: [1])
    assert read_status(run_path(other, tmp_path))["state"] == "failed"


def test_log_epoch_contract(tmp_path):
    cfg = small_config()
    run = RunDir(tmp_path / "r", cfg)
    run.path.mkdir()
    assert run.completed_epochs() == 0 and run.load_checkpoint() is None
    run.log_epoch({"loss": 1.0})
    run.log_epoch({"epoch": np.int64(5), "loss": 0.5})
    assert run.completed_epochs() == 5 and read_metrics(run.path)[-1] == {"epoch": 5, "loss": 0.5}
    with pytest.raises(GfverifyError, match="must be an int"):
        run.log_epoch({"epoch": 6.0})
    with pytest.raises(GfverifyError, match="not after"):
        run.log_epoch({"epoch": 5})
    with pytest.raises(GfverifyError, match="reserved"):
        run.write_json("result.json", {})
    assert run.write_json("widths.json", [1, 2]).name == "widths.json"


# --------------------------------------------------------------------------------- results


ACCS = {("magnitude", 0): 0.90, ("magnitude", 1): 0.92, ("magnitude", 2): 0.97,
        ("grasp", 0): 0.80, ("grasp", 1): 0.84}  # fmt: skip


def _table_train(config, run):
    return {"final_test_acc": ACCS[(config.measure.name, config.seed)], "extra": {"flops": 7}}


def _finished_grid(tmp_path):
    for measure, seed in ACCS:
        cfg = small_config(**{"measure.name": measure, "seed": seed})
        execute(cfg, tmp_path, train_fn=_table_train)
    # an unfinished run is not collected
    with pytest.raises(RunFailedError):
        execute(small_config(**{"seed": 9}), tmp_path, train_fn=lambda c, r: 1 / 0)
    return collect_results(tmp_path)


def test_collect_results_and_table_mean_std(tmp_path):
    rows = _finished_grid(tmp_path)
    assert len(rows) == 5
    row = rows[0]
    assert {"run_id", "run_dir", "data.name", "measure.name", "seed", "extra.flops"} <= set(row)
    assert row["final_test_acc"] in ACCS.values() and row["train.lrs"] == (0.1,)

    agg = {a["measure.name"]: a for a in aggregate(rows)}
    mag = np.array([0.90, 0.92, 0.97])
    assert agg["magnitude"]["n"] == 3 and agg["magnitude"]["seeds"] == [0, 1, 2]
    assert agg["magnitude"]["mean"] == pytest.approx(mag.mean(), abs=1e-12)
    assert agg["magnitude"]["std"] == pytest.approx(mag.std(ddof=1), abs=1e-12)
    assert agg["grasp"]["std"] == pytest.approx(np.std([0.80, 0.84], ddof=1), abs=1e-12)

    table = results_table(rows)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["data.name", "model.name", "measure.name"]
    grasp_line = next(ln for ln in lines if "grasp" in ln)
    assert f"{np.mean([0.80, 0.84]):.4g} ± {np.std([0.80, 0.84], ddof=1):.4g}" in grasp_line
    assert grasp_line.split()[-1] == "2"
    mag_line = next(ln for ln in lines if "magnitude" in ln)
    assert f"{mag.mean():.4g} ± {mag.std(ddof=1):.4g}" in mag_line


@settings(max_examples=30, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["magnitude", "grasp", "loss_based"]),
        st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=6),
        min_size=1,
    )
)
def test_aggregate_matches_numpy(values):
    rows = [
        {"data.name": "cifar10", "model.name": "vgg13", "measure.name": m, "seed": i, "acc": v}
        for m, vs in values.items()
        for i, v in enumerate(vs)
    ]
    agg = {a["measure.name"]: a for a in aggregate(rows, metric="acc")}
    assert set(agg) == set(values)
    for m, vs in values.items():
        assert agg[m]["n"] == len(vs)
        assert agg[m]["mean"] == pytest.approx(np.mean(vs), abs=1e-12)
        expected_std = np.std(vs, ddof=1) if len(vs) > 1 else 0.0
        assert agg[m]["std"] == pytest.approx(expected_std, abs=1e-12)


def test_table_refuses_to_mix_configs_and_counts_excluded(tmp_path):
    rows = _finished_grid(tmp_path)
    mixed = [dict(r) for r in rows]
    mixed[0]["prune.ratio"] = 0.5
    with pytest.raises(GfverifyError, match=r"differ in prune\.ratio"):
        results_table(mixed)
    assert "prune.ratio" in results_table(
        mixed, group_by=("data.name", "model.name", "measure.name", "prune.ratio")
    )
    bad = [dict(r) for r in rows]
    bad[0]["final_test_acc"] = math.nan
    excluded = {a["measure.name"]: a["excluded"] for a in aggregate(bad)}
    assert sorted(excluded.values()) == [0, 1]
    assert "excluded" in results_table(bad).splitlines()[0]


def test_write_csv_roundtrip(tmp_path):
    rows = _finished_grid(tmp_path)
    path = write_csv(rows, tmp_path / "out" / "results.csv")
    with path.open() as fh:
        back = list(csv.DictReader(fh))
    assert len(back) == len(rows)
    assert list(back[0])[:3] == ["run_id", "run_dir", "data.name"]
    assert {float(r["final_test_acc"]) for r in back} == set(ACCS.values())
    assert json.loads(back[0]["train.lrs"]) == [0.1]
