"""Prune-while-training (gfverify.train): protocol, rounds, checkpoints, resume, determinism.

Runs use tiny nets (width_mult 0.125) on the bundled digits data with 2 batches of 16 per
epoch, so every end-to-end run takes a few seconds on a CPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from gfverify import io as gio
from gfverify.config import RunConfig, config_to_dict, update_config
from gfverify.errors import CheckpointError, ConfigError, NonFiniteLossError
from gfverify.groups import coupled_groups, depthwise_ties, filter_groups
from gfverify.models import build_model
from gfverify.runs import RunDir, execute, read_metrics, read_status, run_path
from gfverify.schedule import Schedule
from gfverify.surgery import PruningHistory, layer_widths, load_pruned, masked_channels
from gfverify.train import (
    PruneSetup,
    ScoreEMA,
    check_config,
    data_spec,
    epoch_plan,
    plan_round,
)
from gfverify.train.pruning import apply_round

REPO = Path(__file__).resolve().parents[1]
SIZES = {"vgg13": 32, "mobilenet_v1": 16, "resnet56": 8}


def tiny(model: str = "vgg13", **changes) -> RunConfig:
    """A 3-epoch run (2 rounds + 1 final epoch) of ``model`` at width 0.125 on digits."""
    base = {
        "data.name": "digits",
        "data.num_workers": 0,
        "data.fast_path": True,
        "model.name": model,
        "model.width_mult": 0.125,
        "model.input_size": SIZES.get(model, 8),
        "measure.samples": 32,
        "measure.batch_size": 16,
        "prune.ratio": 0.5,
        "prune.rounds": 2,
        "train.epochs": 3,
        "train.lrs": [0.1],
        "train.lr_epochs": [3],
        "train.batch_size": 16,
        "train.max_batches_per_epoch": 2,
        "device": "cpu",
    }
    base.update(changes)
    return update_config(RunConfig(), base)


def final_model(config: RunConfig, path: Path) -> nn.Module:
    """The run's final model rebuilt from its checkpoint (dense build + history replay)."""
    state = gio.load_checkpoint(path / "checkpoint.pt")
    torch.manual_seed(config.seed)
    model = build_model(config.model.name, 10, config.model.width_mult, config.model.input_size)
    x = torch.zeros(1, 3, config.model.input_size, config.model.input_size)
    load_pruned(model, PruningHistory.from_dict(state["history"]), state["model"], x)
    return model


# --------------------------------------------------------------------------- protocol


def test_epoch_plan_counts_rounds_in_the_first_lr_phase():
    plan = epoch_plan(RunConfig())  # official: 25 rounds, [80, 40, 40] at [0.1, 0.01, 0.001]
    assert len(plan) == 160
    assert [s.phase for s in plan[:25]] == ["prune"] * 25
    assert [s.round for s in plan[:25]] == list(range(25))
    assert {s.lr for s in plan[:80]} == {0.1} and plan[25].phase == "final"
    assert {s.lr for s in plan[80:120]} == {0.01} and {s.lr for s in plan[120:]} == {0.001}
    warm = epoch_plan(update_config(RunConfig(), {"train.warmup_epochs": 3}))
    assert [s.phase for s in warm[:4]] == ["warmup"] * 3 + ["prune"]
    assert warm[27].phase == "prune" and warm[28].phase == "final"
    dense = epoch_plan(update_config(RunConfig(), {"prune.ratio": 0.0}))
    assert all(s.phase == "final" for s in dense)
    one = epoch_plan(update_config(RunConfig(), {"prune.schedule": "one_shot"}))
    assert [s.phase for s in one[:2]] == ["prune", "final"]


@pytest.mark.parametrize("ratio", [0.951, 1.0, -0.1])
def test_ratio_outside_range_is_a_config_error(ratio):
    with pytest.raises(ConfigError, match="prune.ratio"):
        tiny(**{"prune.ratio": ratio})


def test_data_normalize_mapping_and_bad_values():
    assert data_spec(tiny()).normalize == "half"
    assert data_spec(tiny(**{"data.name": "cifar10", "data.normalize": "dataset"})).normalize == (
        "cifar"
    )
    assert data_spec(tiny()).image_size == 32
    with pytest.raises(ConfigError, match="data.normalize"):
        check_config(tiny(**{"data.normalize": "none"}))
    with pytest.raises(ConfigError, match="needs known channel statistics"):
        check_config(tiny(**{"data.normalize": "dataset"}))


def test_ema_with_a_class_balanced_measure_is_refused():
    with pytest.raises(ConfigError, match="ema_batches"):
        check_config(tiny(**{"measure.name": "grasp", "prune.ema_batches": 4}))


def test_score_ema_formula():
    ema = ScoreEMA(3)  # alpha = 2 / (3 + 1) = 0.5
    for v in (4.0, 0.0, 2.0):
        ema.update({"a": torch.tensor([v, 2 * v])})
    # m1 = 4, m2 = 0.5·0 + 0.5·4 = 2, m3 = 0.5·2 + 0.5·2 = 2
    torch.testing.assert_close(ema.value["a"], torch.tensor([2.0, 4.0], dtype=torch.float64))
    assert ema.count == 3


def test_probe_matches_plain_autograd():
    from gfverify.models import SmallNetSpec
    from gfverify.train.loop import probe

    spec = SmallNetSpec(widths=(3, 4), seed=2)
    model = spec.build(torch.float64).train()
    batches = spec.data(10, 4)
    p = probe(model, batches, temperature=5.0, with_loss=True)
    assert model.training  # flags restored
    model.eval()
    n = sum(len(y) for _, y in batches)
    loss = (
        sum(nn.functional.cross_entropy(model(x) / 5.0, y, reduction="sum") for x, y in batches) / n
    )
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params)
    params = [q.detach() for q in params]
    assert p.loss == pytest.approx(loss.item(), rel=1e-12)
    assert p.theta_sq == pytest.approx(float(sum((q**2).sum() for q in params)), rel=1e-12)
    assert p.grad_sq == pytest.approx(float(sum((g**2).sum() for g in grads)), rel=1e-10)
    dot = sum((q * g).sum() for q, g in zip(params, grads))
    assert p.norm_rate == pytest.approx(-2 * float(dot), rel=1e-10)


def _setup(mode, coupled=(), ratio=0.5):
    return PruneSetup(
        mode=mode,
        protected=frozenset(),
        coupled=coupled,
        original_widths={"a": 4, "b": 4},
        floor_by="importance",
        schedule=Schedule("official", ratio=ratio, rounds=1),
    )


def test_plan_round_skips_masked_channels_and_counts_them_as_pruned():
    scores = {"a": torch.tensor([0.0, 5, 6, 7]), "b": torch.tensor([1.0, 2, 3, 4])}
    # N0 = 8, target 4 alive; a[0] is already masked, so 7 alive and 3 to prune. The floor
    # int(0.05·4) + 1 = 1 keeps each layer's best filter; the masked a[0] (score 0) must not
    # be picked again.
    rp = plan_round(scores, _setup("paper"), {"a": 4, "b": 4}, {"a": [0]}, 0, "magnitude")
    assert rp.n_requested == 3 and rp.alive_before == 7
    assert {k: v.tolist() for k, v in rp.plan.items()} == {"b": [0, 1, 2]}


def test_plan_round_full_mode_ranks_a_coupled_group_once_per_member():
    scores = {"a": torch.tensor([3.0, 0, 4, 9]), "b": torch.tensor([4.0, 1, 3, 9])}
    setup = _setup("full", coupled=(("a", "b"),))
    rp = plan_round(scores, setup, {"a": 4, "b": 4}, {}, 0, "magnitude")
    # magnitude combines as sqrt(s_a² + s_b²) = [5, 1, 5, 12.7]; 4 filters = 2 channels x 2
    assert rp.n_requested == 4
    assert {k: v.tolist() for k, v in rp.plan.items()} == {"a": [0, 1]}


def test_count_tied_twice_duplicates_use_up_the_round_budget():
    """Official MobileNet quirk: 'a' feeds a depthwise conv 'dw', so a's entries rank twice;
    a selected duplicate removes nothing, so fewer filters are removed than requested."""
    scores = {"a": torch.tensor([0.1, 0.2, 5, 6]), "b": torch.tensor([1.0, 2, 3, 4])}
    quirk = dataclasses.replace(_setup("paper"), ties={"a": ("dw",)}, count_tied_twice=True)
    plain = plan_round(scores, _setup("paper"), {"a": 4, "b": 4}, {}, 0, "magnitude")
    twice = plan_round(scores, quirk, {"a": 4, "b": 4}, {}, 0, "magnitude")
    # plain: 4 filters to prune: a0, a1, b0, b1. With duplicates the budget counts the 12
    # ranking entries: int(0.5 · 12) = 6 = a0, a0', a1, a1', b0, b1 (a's floor keeps a3).
    assert {k: v.tolist() for k, v in plain.plan.items()} == {"a": [0, 1], "b": [0, 1]}
    assert {k: v.tolist() for k, v in twice.plan.items()} == {"a": [0, 1], "b": [0, 1]}
    assert plain.n_requested == 4 and twice.n_requested == 6 and twice.n_selected == 6


def _official_mobilenet_kept(scores, ties, widths0, p_k):
    """The official VGG/MobileNet round, written out (spec/paper.md §3.4, §3.6, §6 items 11–12):
    imp_order = each layer's entries, each followed by one duplicate per depthwise layer it
    feeds; in every entry list the int(0.05·original width) + 1 entries with the highest
    indices get importance 1e7 (constrain_ratios); n_prune = int(p_k · len(imp_order)); the
    n_prune lowest entries (ascending sort) are pruned; a layer loses the channels its OWN
    entries selected (duplicates remove nothing). Returns layer -> kept count."""
    entries = []  # (importance, list position, layer or None for a duplicate, index)
    for name, s in scores.items():
        lists = [name] + [None] * len(ties.get(name, ()))
        for owner in lists:
            imp = s.double().clone()
            floor = int(0.05 * widths0[name]) + 1
            imp[imp.numel() - floor :] = 1e7
            for i, v in enumerate(imp.tolist()):
                entries.append((v, len(entries), owner, i))
    n_prune = int(p_k * len(entries))
    pruned = sorted(entries)[:n_prune]
    kept = {name: s.numel() for name, s in scores.items()}
    for _, _, owner, _ in pruned:
        if owner is not None:
            kept[owner] -= 1
    return kept, n_prune


@pytest.mark.parametrize(
    ("schedule", "seed"),
    [(Schedule("official", ratio=0.75, rounds=25), 0), (Schedule("one_shot", ratio=0.5), 1)],
)
def test_count_tied_twice_round_matches_the_official_mobilenet_rule(schedule, seed):
    """Issue 13: with floor='index' and count_tied_twice, the round's budget counts ranking
    entries (each tied channel twice), so the per-layer kept counts equal the official rule's
    on the full-width MobileNet-V1 (5,984 filters) with fixed scores."""
    model = build_model("mobilenet_v1", width_mult=1.0)
    groups = filter_groups(model, torch.zeros(1, 3, 32, 32))
    widths = {n: g.num_filters for n, g in groups.items()}
    ties = depthwise_ties(model, groups)
    assert sum(widths.values()) == 5984 and ties
    gen = torch.Generator().manual_seed(seed)
    scores = {n: torch.rand(w, generator=gen, dtype=torch.float64) for n, w in widths.items()}
    setup = PruneSetup(
        mode="paper",
        protected=frozenset(),
        coupled=(),
        original_widths=widths,
        floor_by="index",
        schedule=schedule,
        ties=ties,
        count_tied_twice=True,
    )
    rp = plan_round(scores, setup, widths, {}, 0, "magnitude")
    want, n_prune = _official_mobilenet_kept(scores, ties, widths, schedule.fractions()[0])
    got = {n: w - (rp.plan[n].numel() if n in rp.plan else 0) for n, w in widths.items()}
    assert got == want
    assert rp.n_requested == n_prune
    # about half the budget goes to duplicates: far more filters than int(p_k · 5984) / 2
    removed = sum(widths.values()) - sum(got.values())
    assert removed > 0.75 * schedule.fractions()[0] * sum(widths.values())


def test_depthwise_ties_of_mobilenet_name_one_depthwise_conv_per_feeding_layer():
    model = build_model("mobilenet_v1", width_mult=0.125)
    groups = filter_groups(model, torch.zeros(1, 3, 32, 32))
    ties = depthwise_ties(model, groups)
    modules = dict(model.named_modules())
    assert len(ties) == 13  # the stem and the first 12 pointwise convs feed a depthwise conv
    for src, tied in ties.items():
        assert len(tied) == 1 and modules[tied[0]].groups == modules[tied[0]].in_channels > 1
        assert modules[src].out_channels == modules[tied[0]].in_channels


def test_apply_round_preserves_or_resets_momentum():
    torch.manual_seed(0)
    for preserve in (True, False):
        model = build_model("vgg13", width_mult=0.125)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        old = opt.state[model.features[0].weight]["momentum_buffer"].clone()
        setup = PruneSetup(
            "full", frozenset(), (), layer_widths(model), "importance", Schedule("one_shot", 0.1)
        )
        history = PruningHistory()
        _, new = apply_round(
            model, opt, {"features.0": torch.tensor([0, 2])}, setup, x[:1], history, preserve
        )
        state = new.state.get(model.features[0].weight, {})
        if preserve:
            torch.testing.assert_close(state["momentum_buffer"], old[[1, 3, 4, 5, 6, 7]])
        else:
            assert "momentum_buffer" not in state
        assert len(history.rounds) == 1


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize(
    "model,mode",
    [("vgg13", "paper"), ("mobilenet_v1", "paper"), ("resnet56", "paper"), ("resnet56", "full")],
)
def test_prune_while_training_reaches_the_target(tmp_path, model, mode):
    config = tiny(model, **{"prune.resnet_mode": mode})
    out = execute(config, tmp_path)
    assert out.status == "finished"
    res, path = out.result, out.path
    metrics = read_metrics(path)
    assert [m["phase"] for m in metrics] == ["prune", "prune", "final"]
    assert [m.get("prune_round") for m in metrics] == [0, 1, None]

    # Count alive filters on the final model itself, masked channels as pruned.
    net = final_model(config, path)
    widths = layer_widths(net)
    masked = masked_channels(net)
    alive = sum(w - len(masked.get(n, [])) for n, w in widths.items())
    n0 = res["filters_original"]
    target = round(n0 * (1 - 0.5))
    assert alive == res["filters_alive"]
    assert res["pruned_fraction"] == pytest.approx(1 - alive / n0)
    coupled = coupled_groups(build_model(model, 10, 0.125, SIZES[model]))
    if model == "resnet56" and mode == "full":
        # one coupled channel is |group| filters: the count may overshoot by less than a group
        assert abs(alive - target) < max(len(g) for g in coupled)
        assert not masked
        for group in coupled:  # members of a residual group keep equal widths
            assert len({widths[n] for n in group}) == 1
    else:
        assert alive == target and res["shortfall"] == 0
    if model == "resnet56":
        assert widths["stem.conv"] == 2 and "stem.conv" not in masked  # protected stem
        assert bool(masked) == (mode == "paper")
    assert res["params"] < res["dense_params"] and res["macs"] < res["dense_macs"]
    assert res["params_ratio"] == pytest.approx(res["params"] / res["dense_params"])

    history = json.loads((path / "history.json").read_text())
    assert len(history["rounds"]) == 2 == res["rounds"]
    assert any(history["rounds"][0]["plan"].values())
    for m in metrics[:2]:
        assert m["prune_theta_sq_after"] <= m["prune_theta_sq_before"]
        for key in ("grad_sq", "prune_grad_sq_before", "prune_grad_sq_after", "prune_loss_after"):
            assert m[key] >= 0
        assert m["norm_rate"] == m["prune_norm_rate_after"] != m["prune_norm_rate_before"]
        assert m["prune_removed"] + m["prune_masked"] > 0
    # final-epoch test accuracy, best epoch chosen on validation among final epochs
    assert res["final_test_acc"] == metrics[-1]["test_acc"]
    assert res["best_val_epoch"] == 3 and res["best_val_acc"] == metrics[-1]["val_acc"]
    assert read_status(path)["state"] == "finished"


def test_final_result_is_the_final_epoch_not_the_best(tmp_path):
    config = tiny(
        **{
            "train.epochs": 4,
            "train.lr_epochs": [2, 2],
            "train.lrs": [0.1, 0.5],
            "prune.rounds": 1,
            "data.val_fraction": 0.2,
        }
    )
    res = execute(config, tmp_path).result
    metrics = read_metrics(run_path(config, tmp_path))
    assert res["final_test_acc"] == metrics[-1]["test_acc"]
    finals = [m for m in metrics if m["phase"] == "final"]
    best = max(finals, key=lambda m: m["val_acc"])
    assert (res["best_val_acc"], res["best_val_epoch"]) == (best["val_acc"], best["epoch"])
    assert [m["lr"] for m in metrics] == [0.1, 0.1, 0.5, 0.5]
    no_val = execute(tiny(**{"data.val_fraction": 0.0}), tmp_path).result
    assert (
        "best_val_acc" not in no_val
        and "val_acc"
        not in read_metrics(run_path(tiny(**{"data.val_fraction": 0.0}), tmp_path))[-1]
    )


def test_thresholds_schedule_after_warmup(tmp_path):
    config = tiny(
        **{
            "prune.schedule": "thresholds",
            "prune.thresholds": [0.3, 0.5],
            "train.warmup_epochs": 1,
            "train.epochs": 4,
            "train.lr_epochs": [4],
        }
    )
    res = execute(config, tmp_path).result
    metrics = read_metrics(run_path(config, tmp_path))
    n0 = res["filters_original"]
    assert [m["phase"] for m in metrics] == ["warmup", "prune", "prune", "final"]
    assert [m["filters_alive"] for m in metrics] == [n0, round(0.7 * n0), n0 // 2, n0 // 2]


@pytest.mark.parametrize("precision", ["fp64", "bf16"])
def test_precisions(tmp_path, precision):
    one = {"prune.rounds": 1, "train.epochs": 1, "train.lr_epochs": [1], "precision": precision}
    out = execute(tiny(**one), tmp_path)
    state = gio.load_checkpoint(out.path / "checkpoint.pt")
    want = torch.float64 if precision == "fp64" else torch.float32
    assert state["model"]["features.0.weight"].dtype == want
    assert out.result["filters_alive"] == out.result["filters_original"] // 2


@pytest.mark.parametrize("preserve", [True, False])
def test_preserve_momentum_carries_the_optimizer_state(tmp_path, preserve):
    config = tiny(
        **{
            "prune.rounds": 1,
            "prune.preserve_momentum": preserve,
            "train.epochs": 1,
            "train.lr_epochs": [1],
        }
    )
    path = execute(config, tmp_path).path
    state = gio.load_checkpoint(path / "checkpoint.pt")
    net = final_model(config, path)
    opt_state = state["optimizer"]["state"]
    if preserve:  # every parameter keeps a momentum buffer of its pruned shape
        shapes = [tuple(p.shape) for p in net.parameters()]
        assert len(opt_state) == len(shapes)
        bufs = [tuple(opt_state[i]["momentum_buffer"].shape) for i in range(len(shapes))]
        assert bufs == shapes
        assert any(opt_state[i]["momentum_buffer"].abs().sum() > 0 for i in opt_state)
    else:  # the official reset: the rebuilt optimizer has no state yet
        assert opt_state == {}


def test_ema_tracking_scores_the_round(tmp_path):
    config = tiny(**{"measure.name": "loss_preservation", "prune.ema_batches": 2})
    res = execute(config, tmp_path).result
    metrics = read_metrics(run_path(config, tmp_path))
    assert [m.get("prune_scores") for m in metrics[:2]] == ["ema", "ema"]
    assert res["filters_alive"] == round(res["filters_original"] * 0.5)


def nan_net(num_classes: int = 10, input_size: int = 8) -> nn.Module:
    """A tiny conv net whose logits become NaN at its second training forward pass."""

    class NaNNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, num_classes)
            self.input_size = input_size
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))
            if self.training:
                self.calls += 1
                if self.calls == 2:
                    out = out * float("nan")
            return out

    return NaNNet()


def test_non_finite_loss_fails_the_run_naming_epoch_and_batch(tmp_path):
    config = tiny(**{"model.factory": "tests.test_train:nan_net", "model.input_size": 8})
    with pytest.raises(NonFiniteLossError, match="epoch 1, batch 2"):
        execute(config, tmp_path)
    status = read_status(run_path(config, tmp_path))
    assert status["state"] == "failed" and "epoch 1, batch 2" in status["reason"]
    assert status["error_type"] == "NonFiniteLossError"


def test_pretrained_weights_load_or_mismatch(tmp_path):
    torch.manual_seed(5)
    dense = build_model("vgg13", 10, 0.125, 32)
    good = tmp_path / "vgg.pt"
    torch.save({"state_dict": dense.state_dict()}, good)
    config = tiny(
        **{
            "train.pretrained": str(good),
            "prune.rounds": 1,
            "train.epochs": 1,
            "train.lr_epochs": [1],
        }
    )
    assert execute(config, tmp_path / "ok").status == "finished"
    wrong = tmp_path / "resnet.pt"
    torch.save(build_model("resnet56", 10, 0.125, 8).state_dict(), wrong)
    with pytest.raises(CheckpointError, match="does not fit model vgg13"):
        execute(update_config(config, {"train.pretrained": str(wrong)}), tmp_path / "bad")
    pruned_run = run_path(config, tmp_path / "ok")
    with pytest.raises(CheckpointError, match="pruned model"):
        execute(update_config(config, {"train.pretrained": str(pruned_run)}), tmp_path / "p")


def test_checkpoint_that_does_not_fit_the_config_is_refused(tmp_path):
    config = tiny()
    path = run_path(config, tmp_path)
    path.mkdir(parents=True)
    gio.atomic_write_json(path / "config.json", config_to_dict(config))
    other = build_model("vgg13", 10, 0.25, 32)  # wrong width for this config
    run = RunDir(path, config)
    run.log_epoch({"epoch": 1})
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    state = {"epoch": 1, "model": other.state_dict(), "history": {"rounds": []}}
    run.save_checkpoint({**state, "optimizer": opt.state_dict()})
    with pytest.raises(CheckpointError, match="does not match the config"):
        execute(config, tmp_path)
    assert read_status(path)["state"] == "failed"


# --------------------------------------------------------------------------- resume

_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from gfverify.config import load_config
    from gfverify.runs import execute
    execute(load_config(sys.argv[1]), sys.argv[2])
    """
)

_RESUME_TOML = """
device = "cpu"
[data]
name = "digits"
num_workers = 0
fast_path = true
[model]
name = "vgg13"
width_mult = 0.125
[measure]
name = "biased_loss_preservation"
use_init = true
samples = 32
batch_size = 16
[prune]
ratio = 0.5
rounds = 2
preserve_momentum = true
[train]
epochs = 8
lrs = [0.1, 0.01]
lr_epochs = [4, 4]
batch_size = 16
max_batches_per_epoch = 2
[probe]
enabled = true
samples = 32
steps = 3
"""


def _spawn(tmp_path: Path, runs: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GFVERIFY_NO_PROGRESS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, str(tmp_path / "run.py"), str(tmp_path / "c.toml"), str(runs)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _final_state(path: Path) -> dict:
    return gio.load_checkpoint(path / "checkpoint.pt")


def test_killed_run_resumes_bit_exactly_and_runs_are_deterministic(tmp_path):
    from gfverify.config import load_config

    (tmp_path / "run.py").write_text(_SCRIPT)
    (tmp_path / "c.toml").write_text(_RESUME_TOML)
    config = load_config(tmp_path / "c.toml")
    straight = _spawn(tmp_path, tmp_path / "a")  # uninterrupted, in another process
    victim = _spawn(tmp_path, tmp_path / "b")
    metrics = run_path(config, tmp_path / "b") / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and victim.poll() is None:
        if metrics.exists() and metrics.read_bytes().count(b"\n") >= 2:
            victim.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, victim.stdout.read().decode()[-2000:]
    path_b = run_path(config, tmp_path / "b")
    assert not (path_b / "result.json").exists()
    done_before = len(read_metrics(path_b))
    assert 2 <= done_before < 8

    resumed = execute(config, tmp_path / "b")  # resume in this process
    assert resumed.status == "finished"
    assert [m["epoch"] for m in read_metrics(path_b)] == list(range(1, 9))
    assert straight.wait(timeout=300) == 0, straight.stdout.read().decode()[-2000:]
    fresh = execute(config, tmp_path / "c")  # a second uninterrupted run, this process

    a = _final_state(run_path(config, tmp_path / "a"))
    for other in (_final_state(path_b), _final_state(run_path(config, tmp_path / "c"))):
        assert a["model"].keys() == other["model"].keys()
        for k in a["model"]:
            assert torch.equal(a["model"][k], other["model"][k]), k
        for i, s in a["optimizer"]["state"].items():
            buf = other["optimizer"]["state"][i]["momentum_buffer"]
            assert torch.equal(s["momentum_buffer"], buf)
        assert a["history"] == other["history"]
    path_a = run_path(config, tmp_path / "a")
    ma, mb = read_metrics(path_a), read_metrics(path_b)
    assert [m["train_loss"] for m in ma] == [m["train_loss"] for m in mb]
    assert fresh.result["final_test_acc"] == resumed.result["final_test_acc"]
    # the probes (their state rides in the checkpoint) resume exactly too
    pa, pb = (json.loads((p / "probes.json").read_text()) for p in (path_a, path_b))
    assert len(pa["rounds"]) == 2 and len(pa["epochs"]) == 8
    assert json.dumps(pa, sort_keys=True) == json.dumps(pb, sort_keys=True)


# --------------------------------------------------------------------------- probes (issue 13)


def test_plain_runs_record_no_probes_and_keep_their_metrics(tmp_path):
    res = execute(tiny(), tmp_path)
    assert not (res.path / "probes.json").exists()
    assert all("theta_sq" in m for m in read_metrics(res.path))


def test_one_shot_control_arm_removes_nothing_and_records_probes(tmp_path):
    """prune.ratio 0 with a one-shot schedule: one round that removes nothing (momentum reset),
    probed like a pruned arm, with the S3 study at the asked epochs (unpruned runs only)."""
    changes = {"prune.schedule": "one_shot", "prune.rounds": 1, "probe.enabled": True,
               "probe.samples": 48, "probe.steps": 2, "probe.tau_epochs": [0, 1],
               "probe.tau_filters": 5}  # fmt: skip
    control = execute(tiny(**changes, **{"prune.ratio": 0.0}), tmp_path)
    pruned = execute(tiny(**changes), tmp_path)
    pc, pp = (json.loads((r.path / "probes.json").read_text()) for r in (control, pruned))
    (rc,), (rp,) = pc["rounds"], pp["rounds"]
    assert rc["epoch"] == rp["epoch"] == 1
    assert rc["widths_after"] == rc["widths_before"] == rp["widths_before"]
    assert sum(rp["widths_after"].values()) == sum(rp["widths_before"].values()) // 2
    assert rc["before"] == rp["before"]  # same init, same batches before the round
    assert rc["after"] == rc["before"] and rp["after"] != rp["before"]
    assert len(rc["steps"]["step"]) == 3 and rc["steps"]["batch_loss"][1] > 0
    assert [t["epoch"] for t in pc["tau"]] == [0, 1] and pc["tau"][0]["n_filters"] == 5
    assert pp["tau"] == []  # the S3 study studies the unpruned net only
    assert [m["phase"] for m in read_metrics(control.path)] == ["prune", "final", "final"]
