"""A fake ``train_fn`` for the run/sweep tests, importable by name from worker processes.

``train`` follows the contract of ``gfverify.train.run_training``: resume from
``run.load_checkpoint()``, one ``log_epoch`` per epoch, ``save_checkpoint`` after each epoch,
return a dict. Every call appends one line to ``<run dir>/fake_calls.txt`` so tests can count
how often a run was started. Its accuracy is a deterministic function of the config.

Environment knobs (for subprocess workers): ``GFV_FAKE_DELAY`` seconds per epoch.

``python -m tests.fake_train RUNS_DIR WORKERS`` runs the 2x2 test grid as a sweep and prints
the status counts as JSON (used to start concurrent sweeps).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from typing import Any

from gfverify.config import RunConfig, update_config
from gfverify.errors import NonFiniteLossError
from gfverify.runs import RunDir

CALLS_FILE = "fake_calls.txt"


def small_config(**changes: Any) -> RunConfig:
    """A valid tiny config (3 epochs, 1 round) with dotted-key changes, e.g. ``**{"seed": 1}``."""
    base = {
        "train.epochs": 3,
        "train.lrs": [0.1],
        "train.lr_epochs": [3],
        "prune.rounds": 1,
    }
    base.update(changes)
    if "train.epochs" in changes and "train.lr_epochs" not in changes:
        base["train.lr_epochs"] = [changes["train.epochs"]]
    return update_config(RunConfig(), base)


def grid_configs() -> list[RunConfig]:
    """The 2x2 test grid: model in {vgg13, resnet56} x measure in {magnitude, grasp}."""
    return [
        small_config(**{"model.name": m, "measure.name": s})
        for m in ("vgg13", "resnet56")
        for s in ("magnitude", "grasp")
    ]


def fake_accuracy(config: RunConfig, epoch: int) -> float:
    """Deterministic in (model, measure, seed, epoch): 0.5 + 0.4·epoch/epochs + hash jitter."""
    key = f"{config.model.name}|{config.measure.name}|{config.seed}".encode()
    jitter = int(hashlib.sha256(key).hexdigest()[:8], 16) % 1000 / 1e5
    return 0.5 + 0.4 * epoch / config.train.epochs + jitter


def calls(run_path: os.PathLike | str) -> int:
    """How many times ``train`` was started on this run directory."""
    path = os.path.join(run_path, CALLS_FILE)
    if not os.path.exists(path):
        return 0
    with open(path) as fh:
        return sum(1 for line in fh if line.strip())


def _record_call(run: RunDir) -> None:
    with open(run.path / CALLS_FILE, "a") as fh:
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        os.fsync(fh.fileno())


def train(
    config: RunConfig,
    run: RunDir,
    *,
    crash_at: int | None = None,
    crash_before_checkpoint: bool = False,
    nan_at: int | None = None,
    checkpoint: bool = True,
    delay: float | None = None,
) -> dict[str, Any]:
    """Fake training loop; ``crash_at`` raises RuntimeError after that epoch (after its
    checkpoint, or between log and checkpoint with ``crash_before_checkpoint``)."""
    _record_call(run)
    delay = float(os.environ.get("GFV_FAKE_DELAY", "0")) if delay is None else delay
    state = run.load_checkpoint() if checkpoint else None
    start = 0 if state is None else int(state["epoch"])
    if start != run.completed_epochs():
        raise AssertionError(f"checkpoint epoch {start} != logged epochs {run.completed_epochs()}")
    acc = state["acc"] if state is not None else 0.0
    for epoch in range(start + 1, config.train.epochs + 1):
        if delay:
            time.sleep(delay)
        loss = 1.0 / epoch
        if nan_at == epoch:
            run.log_epoch({"epoch": epoch, "loss": math.nan})
            raise NonFiniteLossError(f"loss is nan at epoch {epoch}")
        acc = fake_accuracy(config, epoch)
        run.log_epoch({"epoch": epoch, "loss": loss, "test_acc": acc})
        if crash_at == epoch and crash_before_checkpoint:
            raise RuntimeError(f"simulated crash after logging epoch {epoch}")
        if checkpoint:
            import torch

            run.save_checkpoint({"epoch": epoch, "acc": acc, "w": torch.full((3,), float(epoch))})
        if crash_at == epoch:
            raise RuntimeError(f"simulated crash at epoch {epoch}")
    return {
        "final_test_acc": acc,
        "epochs": config.train.epochs,
        "resumed_from": start,
        "device": config.device,
        "pid": os.getpid(),
    }


def train_light(config: RunConfig, run: RunDir) -> dict[str, Any]:
    """``train`` without checkpoints (no torch import: fast in fresh worker processes)."""
    return train(config, run, checkpoint=False)


def train_fail_on_grasp(config: RunConfig, run: RunDir) -> dict[str, Any]:
    """Fails for measure 'grasp', otherwise ``train_light``."""
    if config.measure.name == "grasp":
        raise ValueError("grasp is broken in this fake")
    return train_light(config, run)


def main(argv: list[str]) -> int:
    from gfverify.sweep import run_sweep, summarize

    runs_dir, workers = argv[0], int(argv[1])
    results = run_sweep(
        grid_configs(),
        runs_dir,
        workers=workers,
        devices=["cpu"],
        train_fn="tests.fake_train:train_light",
        progress=False,
    )
    print(json.dumps(summarize(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
