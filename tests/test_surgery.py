"""Physical surgery (gfverify.surgery): equivalence to zeroing, exact surviving weights, residual
masks (paper mode), coupled removal (full mode), history replay, optimizer transplant, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gfverify.claims.problems import calibrated_batchnorm
from gfverify.errors import CheckpointError, ConfigError, ModelError
from gfverify.groups import coupled_groups, filter_groups
from gfverify.models import SmallNetSpec, build_model
from gfverify.surgery import (
    ParamSurgery,
    PruningHistory,
    layer_widths,
    load_pruned,
    masked_channels,
    prune_filters,
    pruning_reference,
    random_plan,
    rebuild_sgd,
    replay,
    zeroed_after_bn,
)
from tests.strategies import small_nets


def assert_close_f64(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-12) -> None:
    a, b = a.detach(), b.detach()
    scale = max(1.0, float(b.abs().max()))
    assert float((a - b).abs().max()) <= tol * scale


def expected_param(old: torch.Tensor, ps: ParamSurgery | None) -> torch.Tensor:
    if ps is None:
        return old
    out = old
    for dim, keep in sorted(ps.kept.items()):
        out = out.index_select(dim, torch.tensor(keep))
    out = out.clone()
    for dim, zero in ps.zeroed.items():
        out.index_fill_(dim, torch.tensor(zero), 0.0)
    return out


# --------------------------------------------------------------------------- equivalence


@settings(max_examples=40, deadline=None)
@given(
    spec=small_nets(max_width=8), mode=st.sampled_from(["full", "paper"]), seed=st.integers(0, 999)
)
def test_pruned_equals_reference_and_keeps_weights(spec, mode, seed):
    """Eval mode, float64: pruned(x) == unpruned with removed channels zeroed at the consumers'
    inputs (and masked ones after their BN), to 1e-12; surviving weights copied exactly."""
    model = spec.build()
    x = torch.randn(
        5, *spec.input_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )
    plan = random_plan(model, x, mode, torch.Generator().manual_seed(seed))
    widths = layer_widths(model, x)
    reference = copy.deepcopy(model)
    old = {n: p.detach().clone() for n, p in model.named_parameters()}
    record = prune_filters(model, plan, x, mode)
    with pruning_reference(reference, plan, x, mode):
        expected = reference(x)
    assert_close_f64(model(x), expected)
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), expected_param(old[name], record.kept_index_map.get(name)))
    new_widths = layer_widths(model, x)
    for name, idx in record.removed.items():
        assert new_widths[name] == widths[name] - len(idx)
    for name, idx in plan.items():
        if name in record.masked:
            assert record.masked[name] == sorted(idx.tolist())
        elif len(idx):
            assert record.removed[name] == sorted(idx.tolist())


@settings(max_examples=25, deadline=None)
@given(
    spec=small_nets(max_width=8, kinds=("mlp", "cnn")).map(
        lambda s: SmallNetSpec(**{**s.__dict__, "depthwise": False})
    ),
    act=st.sampled_from(["tanh", "relu"]),
    mode=st.sampled_from(["full", "paper"]),
    seed=st.integers(0, 999),
)
def test_zero_preserving_nets_equal_after_bn_zeroing(spec, act, mode, seed):
    """With act(0) = 0 and no tied depthwise conv, removal == zeroing right after the BN."""
    spec = SmallNetSpec(**{**spec.__dict__, "activation": act})
    model = spec.build()
    x = torch.randn(4, *spec.input_shape, dtype=torch.float64)
    plan = random_plan(model, x, mode, torch.Generator().manual_seed(seed))
    reference = copy.deepcopy(model)
    prune_filters(model, plan, x, mode)
    with zeroed_after_bn(reference, plan, x, mode):
        assert_close_f64(model(x), reference(x))


def test_softplus_removal_is_not_after_bn_zeroing():
    """The docstring's caveat: softplus(0) != 0, so zeroing after the BN is not removal."""
    spec = SmallNetSpec(kind="cnn", widths=(4, 5), activation="softplus")
    model = spec.build()
    x = torch.randn(3, *spec.input_shape, dtype=torch.float64)
    plan = {"features.0": torch.tensor([1, 2])}
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    prune_filters(model, plan, x)
    with zeroed_after_bn(a, plan, x):
        assert float((model(x) - a(x)).detach().abs().max()) > 1e-3
    with pruning_reference(b, plan, x):
        assert_close_f64(model(x), b(x))


@pytest.mark.parametrize("name", ["vgg13", "mobilenet_v1", "resnet56"])
@pytest.mark.parametrize("mode", ["full", "paper"])
def test_paper_nets_equivalence(name, mode):
    """BN calibrated on x first: with the default statistics these nets' activations die out
    (MobileNet-V1 x0.125 returns its classifier bias for every input) and any surgery would
    look right. The plan must change the output, else the comparison proves nothing."""
    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    model = calibrated_batchnorm(build_model(name, width_mult=0.125).double(), x)
    plan = random_plan(model, x, mode, torch.Generator().manual_seed(1), fraction=0.5)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        unpruned = model(x)
    prune_filters(model, plan, x, mode)
    with torch.no_grad(), pruning_reference(reference, plan, x, mode):
        expected = reference(x)
        assert float((unpruned - expected).abs().max()) > 1e-3
        assert_close_f64(model(x), expected)


def test_mobilenet_tied_depthwise_and_vgg_classifier_shrink():
    mob = build_model("mobilenet_v1", width_mult=0.125)
    width = mob.blocks[3].pw.out_channels
    prune_filters(mob, {"blocks.3.pw": torch.tensor([0, 5, 7])})
    b4 = mob.blocks[4]
    assert b4.dw.out_channels == b4.dw.groups == b4.dw.in_channels == width - 3
    assert b4.dw_bn.num_features == width - 3 and b4.pw.in_channels == width - 3
    vgg = build_model("vgg13", width_mult=0.125)
    last = list(filter_groups(vgg))[-1]
    prune_filters(vgg, {last: torch.arange(10)})
    assert vgg.classifier.in_features == 64 - 10


class _CatNet(nn.Module):
    """Two branches concatenated: the consumer ``c`` is cut twice along its input dim."""

    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.b, self.bn_b = nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5)
        self.c = nn.Conv2d(9, 6, 3)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        h = torch.cat([torch.tanh(self.bn_a(self.a(x))), torch.tanh(self.bn_b(self.b(x)))], 1)
        return self.head(torch.tanh(self.c(h)).mean((2, 3)))


def test_concat_consumer_cut_twice_composes_indices():
    torch.manual_seed(0)
    model = _CatNet().double().eval()
    x = torch.randn(3, 3, 5, 5, dtype=torch.float64)
    plan = {"a": torch.tensor([1]), "b": torch.tensor([3, 0])}
    reference = copy.deepcopy(model)
    old = model.c.weight.detach().clone()
    rec = prune_filters(model, plan, x)
    assert rec.kept_index_map["c.weight"].kept == {1: [0, 2, 3, 5, 6, 8]}
    assert torch.equal(model.c.weight.detach(), old[:, [0, 2, 3, 5, 6, 8]])
    with pruning_reference(reference, plan, x):
        assert_close_f64(model(x), reference(x))


# --------------------------------------------------------------------------- residual adds


def _resnet(width=0.25, dtype=torch.float64):
    torch.manual_seed(0)
    return build_model("resnet56", width_mult=width, input_size=8).to(dtype)


def test_paper_mode_masks_block_outputs_and_removes_inner():
    model = _resnet()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    plan = {
        "layer1.0.conv1": torch.tensor([1, 2]),
        "layer1.0.conv2": torch.tensor([0, 3]),
        "layer2.0.shortcut.0": torch.tensor([5]),
        "stem.conv": torch.tensor([2]),
    }
    rec = prune_filters(model, plan, x, "paper")
    assert rec.removed == {"layer1.0.conv1": [1, 2]}
    assert rec.masked == {"stem.conv": [2], "layer1.0.conv2": [0, 3], "layer2.0.shortcut.0": [5]}
    widths = layer_widths(model, x)
    assert widths["layer1.0.conv1"] == 2 and widths["layer1.0.conv2"] == 4
    assert model.layer1[0].conv2.in_channels == 2
    assert masked_channels(model) == rec.masked
    block = model.layer1[0]
    for t in (
        block.conv2.weight[[0, 3]],
        block.bn2.weight[[0, 3]],
        block.bn2.bias[[0, 3]],
        block.bn2.running_mean[[0, 3]],
    ):
        assert torch.count_nonzero(t) == 0
    assert torch.equal(block.bn2.running_var[[0, 3]], torch.ones(2, dtype=torch.float64))
    sd = model.state_dict()
    assert torch.equal(
        sd["layer1.0.bn2.channel_mask.mask"], torch.tensor([0.0, 1, 1, 0], dtype=torch.float64)
    )
    assert "layer2.0.shortcut.1.channel_mask.mask" in sd
    # masked channels are exactly zero after the BN, in eval and train mode
    seen = {}
    block.bn2.register_forward_hook(lambda m, a, out: seen.__setitem__("bn2", out))
    for train in (False, True):
        model.train(train)
        model(x)
        assert torch.count_nonzero(seen["bn2"][:, [0, 3]]) == 0


def test_paper_mode_masked_entries_stay_zero_under_sgd():
    model = _resnet()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 8, 8, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 10, (8,), generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model.train()
    for _ in range(2):  # build up non-zero momentum first
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    old_names = dict(model.named_parameters())
    plan = random_plan(model, x, "paper", gen, fraction=0.5)
    rec = prune_filters(model, plan, x, "paper")
    opt = rebuild_sgd(model, opt, old_names, rec.kept_index_map, preserve_momentum=True)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x) / 5, y).backward()
        opt.step()
    params = dict(model.named_parameters())
    n_checked = 0
    for name, ps in rec.kept_index_map.items():
        for dim, zero in ps.zeroed.items():
            assert torch.count_nonzero(params[name].index_select(dim, torch.tensor(zero))) == 0
            n_checked += 1
    assert n_checked >= 3 * len(rec.masked)


def test_full_mode_removes_coupled_channel_everywhere():
    model = _resnet()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    rep = coupled_groups(model, x)[1][0]
    assert rep == "layer2.0.conv2"
    rec = prune_filters(model, {rep: torch.tensor([0, 7])}, x, "full")
    members = coupled_groups(model, x)[1]
    assert set(rec.removed) == set(members)
    widths = layer_widths(model, x)
    assert all(widths[m] == 6 for m in members)
    assert model.layer3[0].conv1.in_channels == 6 and model.layer3[0].shortcut[0].in_channels == 6
    assert all(model.layer2[i].conv1.in_channels == 6 for i in range(1, 9))
    with pytest.raises(ModelError, match="representative 'layer2.0.conv2'"):
        prune_filters(model, {"layer2.3.conv2": torch.tensor([0])}, x, "full")


def test_full_mode_after_paper_masks_slices_the_masks():
    model = _resnet()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    prune_filters(model, {"layer1.2.conv2": torch.tensor([1, 3])}, x, "paper")
    reference = copy.deepcopy(model)
    plan = {"stem.conv": torch.tensor([0, 1])}
    prune_filters(model, plan, x, "full")
    assert masked_channels(model) == {"layer1.2.conv2": [1]}  # old channel 3 is now 1
    with pruning_reference(reference, plan, x, "full"):
        assert_close_f64(model(x), reference(x))


# --------------------------------------------------------------------------- history


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("which", ["resnet", "small"])
def test_replay_reloads_bit_exactly(dtype, which):
    if which == "resnet":
        factory = lambda: _resnet(dtype=dtype)  # noqa: E731
        shape = (3, 8, 8)
        modes = ["paper", "paper", "full"]
    else:
        spec = SmallNetSpec(kind="cnn", widths=(5, 6), residual=True, depthwise=True, seed=3)
        factory = lambda: spec.build(dtype)  # noqa: E731
        shape = spec.input_shape
        modes = ["full", "paper", "full"]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, *shape, dtype=dtype, generator=gen)
    y = torch.randint(0, 3, (6,), generator=gen)
    model = factory()
    history = PruningHistory()
    for mode in modes:
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        model.train()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        model.eval()
        prune_filters(model, random_plan(model, x, mode, gen, fraction=0.3), x, mode, history)
    saved = PruningHistory.from_json(history.to_json())
    fresh = load_pruned(factory(), saved, model.state_dict(), x)
    model.eval(), fresh.eval()
    assert torch.equal(fresh(x), model(x))
    assert saved.to_dict() == history.to_dict()


def test_history_original_indices():
    spec = SmallNetSpec(kind="cnn", widths=(6, 4))
    model = spec.build()
    history = PruningHistory()
    prune_filters(model, {"features.0": torch.tensor([0, 2])}, history=history)
    prune_filters(model, {"features.0": torch.tensor([0, 3])}, history=history)
    rec = history.rounds[1]
    assert rec.removed == {"features.0": [0, 3]}
    assert rec.removed_original == {"features.0": [1, 5]}
    assert history.index_map["features.0"] == [3, 4]
    assert rec.widths_before == {"features.0": 4, "features.3": 4}


def test_replay_on_wrong_architecture_raises():
    history = PruningHistory()
    prune_filters(
        SmallNetSpec(widths=(6, 4)).build(), {"features.0": torch.tensor([5])}, history=history
    )
    with pytest.raises(CheckpointError, match="round 0"):
        replay(SmallNetSpec(widths=(3, 4)).build(), history)
    with pytest.raises(CheckpointError, match="state_dict"):
        load_pruned(
            SmallNetSpec(widths=(6, 4)).build(),
            history,
            SmallNetSpec(widths=(6, 4)).build().state_dict(),
        )


# --------------------------------------------------------------------------- optimizer


def _trained_sgd(model, x, y, steps=2):
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1]
    rest = [p for n, p in model.named_parameters() if not (n.endswith("weight") and p.dim() > 1)]
    opt = torch.optim.SGD(
        [
            {"params": decay, "weight_decay": 1e-4},
            {"params": rest, "weight_decay": 0.0, "lr": 0.01},
        ],
        lr=0.1,
        momentum=0.9,
        nesterov=True,
    )
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return opt


def test_rebuild_sgd_carries_momentum_exactly():
    spec = SmallNetSpec(kind="cnn", widths=(4, 6, 5), depthwise=True, num_classes=3)
    model = spec.build()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, *spec.input_shape, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 3, (6,), generator=gen)
    opt = _trained_sgd(model, x, y)
    old = dict(model.named_parameters())
    buf = {n: opt.state[p]["momentum_buffer"].clone() for n, p in old.items()}
    cut = {"features.0": [1], "features.3": [0, 4], "features.6": [2], "features.9.pw": [3]}
    rec = prune_filters(model, {k: torch.tensor(v) for k, v in cut.items()}, x)
    keep = {
        k: torch.tensor([i for i in range(len(old[f"{k}.weight"])) if i not in v])
        for k, v in cut.items()
    }
    manual = {
        "features.0.weight": buf["features.0.weight"][keep["features.0"]],
        "features.1.weight": buf["features.1.weight"][keep["features.0"]],
        "features.3.weight": buf["features.3.weight"][keep["features.3"]][:, keep["features.0"]],
        "features.4.bias": buf["features.4.bias"][keep["features.3"]],
        "features.6.weight": buf["features.6.weight"][keep["features.6"]][:, keep["features.3"]],
        "features.9.dw.weight": buf["features.9.dw.weight"][keep["features.6"]],
        "features.9.dw_bn.weight": buf["features.9.dw_bn.weight"][keep["features.6"]],
        "features.9.pw.weight": buf["features.9.pw.weight"][keep["features.9.pw"]][
            :, keep["features.6"]
        ],
        "classifier.weight": buf["classifier.weight"][:, keep["features.9.pw"]],
        "classifier.bias": buf["classifier.bias"],
    }
    new = rebuild_sgd(model, opt, old, rec.kept_index_map, preserve_momentum=True)
    params = dict(model.named_parameters())
    for name, expected in manual.items():
        assert torch.equal(new.state[params[name]]["momentum_buffer"], expected), name
    assert len(new.state) == len(params)
    assert new.defaults == opt.defaults
    for g_new, g_old in zip(new.param_groups, opt.param_groups):
        assert {k: v for k, v in g_new.items() if k != "params"} == {
            k: v for k, v in g_old.items() if k != "params"
        }
        assert len(g_new["params"]) == len(g_old["params"])
    fresh = rebuild_sgd(model, opt, old, rec.kept_index_map, preserve_momentum=False)
    assert len(fresh.state) == 0
    fresh.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    new.step()  # the shapes fit


def test_rebuild_sgd_zeroes_momentum_of_masked_entries():
    model = _resnet()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 10, (4,), generator=gen)
    opt = _trained_sgd(model.train(), x, y)
    old = dict(model.named_parameters())
    before = opt.state[old["layer1.1.bn2.weight"]]["momentum_buffer"].clone()
    rec = prune_filters(model, {"layer1.1.conv2": torch.tensor([2])}, x, "paper")
    new = rebuild_sgd(model, opt, old, rec.kept_index_map, preserve_momentum=True)
    after = new.state[model.layer1[1].bn2.weight]["momentum_buffer"]
    assert after[2] == 0 and before[2] != 0
    assert torch.equal(after[[0, 1, 3]], before[[0, 1, 3]])
    assert torch.count_nonzero(new.state[model.layer1[1].conv2.weight]["momentum_buffer"][2]) == 0


def test_rebuild_sgd_rejects_other_optimizers():
    model = SmallNetSpec().build()
    adam = torch.optim.Adam(model.parameters())
    with pytest.raises(ConfigError, match="Adam"):
        rebuild_sgd(model, adam, dict(model.named_parameters()), {}, True)


# --------------------------------------------------------------------------- bad plans


@pytest.mark.parametrize(
    "plan, mode, match",
    [
        ({"features.9": [0]}, "full", "'features.9', which is not a prunable layer"),
        ({"classifier": [0]}, "full", "'classifier', which is not a prunable layer"),
        ({"features.0": [4]}, "full", r"index 4 out of range \[0, 4\)"),
        ({"features.0": [1, 1]}, "full", "twice"),
        ({"features.0": [0, 1, 2, 3]}, "full", "without an unmasked channel"),
        ({"features.3": [0, 1, 2, 3, 4, 5]}, "paper", "without an unmasked channel"),
        ({"features.0": [0.5]}, "full", "integer"),
        ({"features.0": [0]}, "fast", None),
    ],
)
def test_bad_plans_raise(plan, mode, match):
    spec = SmallNetSpec(kind="cnn", widths=(4, 6), residual=True)
    model = spec.build()
    state = copy.deepcopy(model.state_dict())
    err = ConfigError if mode == "fast" else ModelError
    with pytest.raises(err, match=match) as info:
        prune_filters(model, {k: torch.tensor(v) for k, v in plan.items()}, mode=mode)
    assert "\n" not in str(info.value)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # untouched


def test_masking_the_last_live_channel_over_two_rounds_raises():
    spec = SmallNetSpec(kind="cnn", widths=(4, 2), residual=True)
    model = spec.build()
    prune_filters(model, {"features.3": torch.tensor([0])}, mode="paper")
    with pytest.raises(ModelError, match="'features.3' without an unmasked channel"):
        prune_filters(model, {"features.3": torch.tensor([1])}, mode="paper")


# --------------------------------------------------------------------------- public prune call


@pytest.mark.parametrize("mode", ["full", "paper"])
def test_public_prune_handles_residual_adds(mode):
    """gfverify.prune.prune on ResNet-56 (small width): coupled layers handled, the pruned
    model equals its zeroed twin, and the plan removes int(0.3·N) filters or overshoots by
    less than one coupled group."""
    from gfverify.measures import score
    from gfverify.prune import prune

    torch.manual_seed(0)
    model = build_model("resnet56", 10, 0.25).double().eval()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    scores = score(model, "magnitude", [(x, torch.arange(4))])
    from gfverify.prune import plan_pruning

    plan = plan_pruning(model, scores, 0.3, measure="magnitude", example_input=x, mode=mode)
    biggest = max(len(g) for g in coupled_groups(model, x))
    assert plan.n_requested == int(0.3 * plan.total)
    assert plan.n_requested <= plan.n_selected < plan.n_requested + biggest
    with torch.no_grad(), pruning_reference(model, plan.plan, x, mode) as ref:
        expected = ref(x)
    result = prune(model, plan=plan, example_input=x, mode=mode)
    assert result.record is not None
    with torch.no_grad():
        assert_close_f64(model(x), expected)


def test_public_prune_on_torchvision_resnet18_shrinks_and_matches_zeroing():
    import torchvision

    from gfverify.complexity import count_complexity
    from gfverify.measures import score
    from gfverify.prune import plan_pruning, prune

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    scores = score(model, "l1", [(x, torch.arange(2))])
    plan = plan_pruning(model, scores, 0.3, measure="l1", example_input=x)
    before = count_complexity(model, (3, 32, 32))
    with torch.no_grad(), pruning_reference(model, plan.plan, x) as ref:
        expected = ref(x)
    prune(model, plan=plan, example_input=x)
    after = count_complexity(model, (3, 32, 32))
    assert after.macs < before.macs and after.params < before.params
    with torch.no_grad():
        assert_close_f64(model(x), expected)


def test_public_prune_leaves_out_unprunable_layers_with_reasons():
    from gfverify.prune import plan_pruning

    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.PReLU(4),
        nn.Conv2d(4, 6, 3),
        nn.ReLU(),
        nn.Conv2d(6, 5, 1),
        nn.Flatten(),
        nn.LazyLinear(2),
    )
    x = torch.randn(2, 3, 6, 6)
    model(x)
    scores = {"0": torch.rand(4), "2": torch.rand(6), "4": torch.rand(5)}
    plan = plan_pruning(model, scores, 0.5, example_input=x, min_keep=1)
    assert "'1'" in plan.skipped["0"] and "0" not in plan.plan
    assert set(plan.plan) <= {"2", "4"} and plan.n_selected == int(0.5 * 11)


def test_depthwise_conv_cut_to_one_channel_stays_tied_to_its_producer():
    """MobileNet-V1 x0.25's stem has 8 filters and the official floor int(0.05 * 8) + 1 = 1: a
    round may leave it one filter, and its depthwise conv then has groups = 1 like an ordinary
    1 -> 1 conv. It must stay tied to the stem, not become a layer of its own (the Table 1
    sweep's MobileNet GraSP run failed with "layer 'blocks.0.dw' has no floor")."""
    model = build_model("mobilenet_v1", 10, 0.25, in_channels=1).eval()
    x = torch.randn(1, 1, 32, 32)
    width = model.stem.conv.out_channels
    prune_filters(model, {"stem.conv": list(range(width - 1))}, x)
    assert model.blocks[0].dw.groups == model.blocks[0].dw.out_channels == 1
    groups = filter_groups(model, x)
    assert "blocks.0.dw" not in groups
    assert "blocks.0.dw" in groups["stem.conv"].tied
