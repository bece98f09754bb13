"""Prunable filter groups (gfverify.groups): BN/tied/coupled discovery on the paper's nets, the
small nets and the official tiny nets; unsupported layers; flags left untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from torch import nn

from gfverify.errors import ModelError
from gfverify.groups import (
    analyze,
    coupled_groups,
    default_example_input,
    filter_groups,
    unprunable,
)
from gfverify.models import SmallNetSpec, build_model
from gfverify.surgery import prune_filters, pruning_reference
from tests.strategies import small_nets
from tests.vectors import load

# --------------------------------------------------------------------------- tiny official nets


def test_tiny_vgg_conv_relu_bn():
    model, batches, _, meta = load("official_tiny_vgg")
    groups = filter_groups(model, batches[0][0])
    assert list(groups) == ["0", "3", "7"]
    assert [g.bn for g in groups.values()] == ["2", "5", "9"]
    assert [g.num_filters for g in groups.values()] == [6, 8, 10]
    g = groups["3"]
    assert (g.weight, g.bias, g.bn_weight, g.bn_bias, g.tied) == (
        "3.weight",
        None,
        "5.weight",
        "5.bias",
        (),
    )
    assert g.param_names() == {"3.weight": 0}
    assert g.param_names(include_bn=True) == {"3.weight": 0, "5.weight": 0, "5.bias": 0}
    with_cls = filter_groups(model, batches[0][0], include_classifier=True)
    assert list(with_cls) == ["0", "3", "7", "12"]
    assert with_cls["12"].bias == "12.bias" and with_cls["12"].bn is None


def test_tiny_cnn_bn_first():
    model, batches, _, _ = load("official_tiny_cnn_bnfirst")
    groups = filter_groups(model, batches[0][0])
    assert {n: g.bn for n, g in groups.items()} == {"0": "1", "3": "4"}
    assert coupled_groups(model, batches[0][0]) == []


# --------------------------------------------------------------------------- small nets


def test_mlp_linear_bn1d():
    spec = SmallNetSpec(kind="mlp", widths=(5, 7), batchnorm=True)
    groups = filter_groups(spec.build())
    assert {n: g.bn for n, g in groups.items()} == {
        "features.1": "features.2",
        "features.4": "features.5",
    }
    assert groups["features.1"].param_names(include_bn=True) == {
        "features.1.weight": 0,
        "features.1.bias": 0,
        "features.2.weight": 0,
        "features.2.bias": 0,
    }
    no_bn = filter_groups(SmallNetSpec(kind="mlp", widths=(5,), batchnorm=False).build())
    assert list(no_bn) == ["features.1"] and no_bn["features.1"].bn is None


def test_small_cnn_residual_depthwise():
    spec = SmallNetSpec(kind="cnn", widths=(4, 6), residual=True, depthwise=True)
    model = spec.build()
    groups = filter_groups(model)
    assert list(groups) == [
        "features.0",
        "features.3",
        "features.6.conv1",
        "features.6.conv2",
        "features.7.pw",
    ]
    # the depthwise conv after the residual add is tied to both members of the coupled group
    for name in ("features.3", "features.6.conv2"):
        assert groups[name].tied == ("features.7.dw", "features.7.dw_bn")
        assert groups[name].param_names(include_tied=True) == {
            f"{name}.weight": 0,
            "features.7.dw.weight": 0,
            "features.7.dw_bn.weight": 0,
            "features.7.dw_bn.bias": 0,
        }
    assert groups["features.6.conv1"].tied == ()
    assert coupled_groups(model) == [("features.3", "features.6.conv2")]


@settings(max_examples=25, deadline=None)
@given(spec=small_nets())
def test_group_params_index_filters(spec):
    """Every listed parameter has the layer's filters along dim 0, every BN is owned once."""
    model = spec.build()
    groups = filter_groups(model, include_classifier=True)
    params = dict(model.named_parameters())
    owned_bns = [g.bn for g in groups.values() if g.bn is not None]
    assert len(owned_bns) == len(set(owned_bns))
    for g in groups.values():
        for pname, dim in g.param_names(include_bn=True, include_tied=True).items():
            assert params[pname].shape[dim] == g.num_filters, pname
    assert list(groups)[-1] == "classifier"
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    tied_bns = [t for g in groups.values() for t in g.tied if t in bns]
    assert set(bns) == set(owned_bns) | set(tied_bns)


# --------------------------------------------------------------------------- paper nets


def test_vgg13_groups():
    model = build_model("vgg13")  # full width: the spec's 2,944 filters
    groups = filter_groups(model)
    assert [g.bn for g in groups.values()] == [
        f"features.{i}" for i in (2, 5, 9, 12, 16, 19, 23, 26, 30, 33)
    ]
    assert sum(g.num_filters for g in groups.values()) == 2944
    assert all(g.tied == () for g in groups.values())
    assert coupled_groups(model) == []


def test_mobilenet_groups_tie_depthwise():
    model = build_model("mobilenet_v1", width_mult=0.125)
    groups = filter_groups(model)
    names = ["stem.conv"] + [f"blocks.{i}.pw" for i in range(13)]
    assert list(groups) == names
    for k, name in enumerate(names):
        expected = () if k == 13 else (f"blocks.{k}.dw", f"blocks.{k}.dw_bn")
        assert groups[name].tied == expected, name
    bn_count = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert bn_count == 27 == sum(1 + len(g.tied) // 2 for g in groups.values())


def test_resnet56_groups_and_coupling():
    model = build_model("resnet56", width_mult=0.125)
    groups = filter_groups(model)
    assert len(groups) == 57 and "classifier" not in groups
    assert list(groups)[:4] == ["stem.conv", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1"]
    assert groups["layer2.0.shortcut.0"].bn == "layer2.0.shortcut.1"
    assert all(
        g.bn == n.replace("conv", "bn")
        for n, g in groups.items()
        if "shortcut" not in n and n != "stem.conv"
    )
    coupled = coupled_groups(model)
    assert [grp[0] for grp in coupled] == ["stem.conv", "layer2.0.conv2", "layer3.0.conv2"]
    assert coupled[0][1:] == tuple(f"layer1.{i}.conv2" for i in range(9))
    assert set(coupled[1]) == {"layer2.0.shortcut.0"} | {f"layer2.{i}.conv2" for i in range(9)}
    assert not any(n.endswith("conv1") for grp in coupled for n in grp)


# --------------------------------------------------------------------------- errors and flags


class _Wrap(nn.Module):
    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize(
    "layers, skipped, culprit",
    [
        (
            [nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(4, 4, 3), nn.Flatten(), nn.LazyLinear(2)],
            "body.0",
            "body.1",
        ),
        (
            [nn.Conv2d(3, 4, 3), nn.PReLU(4), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.LazyLinear(2)],
            "body.0",
            "body.1",
        ),
        (
            [nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3, groups=4), nn.Flatten(), nn.LazyLinear(2)],
            "body.0",
            "body.1",
        ),
    ],
)
def test_unprunable_layer_is_left_out_with_a_reason_naming_the_module(layers, skipped, culprit):
    """A layer whose channels meet a module that cannot be pruned with it is left out (one-line
    reason naming both), and the rest of the model is still prunable."""
    model = _Wrap(*layers)
    x = torch.randn(2, 3, 8, 8)
    model(x)  # materialise lazy layers
    reasons = unprunable(model, x)
    assert skipped in reasons
    assert f"'{culprit}'" in reasons[skipped] and f"'{skipped}'" in reasons[skipped]
    assert "\n" not in reasons[skipped]
    assert skipped not in analyze(model, x).groups


@pytest.mark.parametrize(
    "layers, name, g",
    [
        (
            [nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.LazyLinear(2)],
            "body.0",
            2,
        ),
        (
            [nn.Conv2d(3, 8, 3), nn.Conv2d(8, 6, 3, groups=2), nn.Flatten(), nn.LazyLinear(2)],
            "body.0",
            2,
        ),
        (
            [nn.Conv2d(3, 4, 3), nn.Conv2d(4, 8, 3, groups=4), nn.Flatten(), nn.LazyLinear(2)],
            "body.1",
            4,
        ),
        (  # a grouped conv feeding a grouped conv with other groups: its unit spans both
            [nn.Conv2d(3, 16, 1), nn.Conv2d(16, 16, 3, groups=4), nn.Conv2d(16, 8, 3, groups=2)]
            + [nn.Flatten(), nn.LazyLinear(2)],
            "body.1",
            4,
        ),
        ([nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.LazyLinear(2)], "body.0", 2),
        ([nn.Flatten(), nn.Linear(108, 6), nn.LayerNorm(6), nn.Linear(6, 2)], "body.1", 1),
    ],
)
def test_grouped_convs_and_norms_are_prunable_in_channel_groups(layers, name, g):
    """Layers feeding a grouped conv or GroupNorm with G groups (and grouped convs themselves):
    one filter = G channels at the same position of every group; removing one keeps the model
    valid, and without a norm over channels (GroupNorm/LayerNorm statistics change when a
    channel goes) equal to zeroing the channels at the consumers."""
    norm = any(isinstance(m, nn.GroupNorm | nn.LayerNorm) for m in layers)
    torch.manual_seed(0)
    model = _Wrap(*layers).double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    model(x)
    grp = analyze(model, x).groups[name]
    assert grp.channel_groups == g
    assert grp.num_filters * g == model.get_submodule(name).weight.shape[0]
    plan = {name: [0]}
    with torch.no_grad(), pruning_reference(model, plan, x) as ref:
        expected = ref(x)
    prune_filters(model, plan, x)
    assert model.get_submodule(name).weight.shape[0] == (grp.num_filters - 1) * g
    with torch.no_grad():
        out = model(x)
    assert out.shape == expected.shape
    if not norm:
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


class _ClassToken(nn.Module):
    """A ViT-like stem: conv patches, a class token concatenated in front, a bare parameter."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 4, 2, stride=2)
        self.class_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.mlp_in = nn.Linear(4, 6)
        self.mlp_out = nn.Linear(6, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.class_token.expand(t.shape[0], -1, -1), t], dim=1)
        t = t + self.mlp_out(torch.relu(self.mlp_in(t)))
        return self.head(t[:, 0])


def test_class_token_is_named_not_a_torch_pruning_op():
    model = _ClassToken()
    x = torch.randn(2, 3, 4, 4)
    reasons = unprunable(model, x)
    assert "class_token" in reasons["patch"]
    assert "_ExpandOp" not in reasons["patch"]
    assert "mlp_in" in filter_groups(model, x)


def _shufflenet_mini() -> nn.Module:
    """A stem and two of torchvision's ShuffleNetV2 blocks (a downsampling one, then one that
    splits its input in half): each ends in a channel shuffle, view → transpose → view."""
    from torchvision.models.shufflenetv2 import InvertedResidual

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        InvertedResidual(8, 16, 2), InvertedResidual(16, 16, 1),
        nn.Conv2d(16, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    ).double().eval()  # fmt: skip


def test_channel_shuffle_is_left_out_with_a_reason_naming_the_module():
    """torch-pruning maps a channel shuffle's view pair as if it kept channel order (or divides
    by zero): pruning a layer whose channels pass through one broke the model. Those layers
    are left out, each with a one-line reason naming it."""
    model = _shufflenet_mini()
    reasons = unprunable(model, torch.randn(1, 3, 8, 8, dtype=torch.float64))
    assert set(reasons) == {"3.branch1.2", "3.branch2.5", "4.branch2.5"}
    for name, why in reasons.items():
        assert f"'{name}'" in why and "channel shuffle" in why and "\n" not in why


def test_layers_around_a_channel_shuffle_prune_like_zeroing():
    model = _shufflenet_mini()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    info = analyze(model, x)
    names = [n for n in info.groups if n not in info.output_layers]
    assert names == ["0", "3.branch2.0", "4.branch2.0", "5"]
    for name in names:
        pruned = copy.deepcopy(model)
        plan = {name: [0]}
        with torch.no_grad(), pruning_reference(pruned, plan, x) as ref:
            expected = ref(x)
        prune_filters(pruned, plan, x)
        with torch.no_grad():
            torch.testing.assert_close(pruned(x), expected, rtol=1e-12, atol=1e-12)


class _BareScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.scale = nn.Parameter(torch.ones(1, 4, 1, 1))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head((self.conv(x) * self.scale).mean((2, 3)))


def test_bare_parameter_in_channel_path_names_it():
    model = _BareScale()
    x = torch.randn(2, 3, 6, 6)
    assert "'conv'" in unprunable(model, x)["conv"] and "scale" in unprunable(model, x)["conv"]
    with pytest.raises(ModelError, match="no prunable layer.*'scale'|no prunable layer.*scale"):
        filter_groups(model, x)


def test_no_prunable_layer_raises():
    with pytest.raises(ModelError, match="no prunable layer"):
        filter_groups(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), torch.randn(2, 3, 2, 2))
    with pytest.raises(ModelError, match="no Conv or Linear"):
        default_example_input(nn.Sequential(nn.ReLU()))


def test_flags_and_statistics_untouched():
    spec = SmallNetSpec(kind="cnn", widths=(3, 4), residual=True)
    model = spec.build().train()
    model.features[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    filter_groups(model, torch.randn(4, *spec.input_shape, dtype=torch.float64))
    assert all(m.training for m in model.modules())
    assert not model.features[0].weight.requires_grad
    assert model.features[3].weight.requires_grad
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_grouped_filter_is_scored_over_all_its_channels():
    """Magnitude of filter k of a layer feeding a groups=2 conv: the norm of the union of its
    channels {k, k + C/2}; l1: the sum over them."""
    from gfverify.measures import score

    torch.manual_seed(0)
    model = _Wrap(nn.Conv2d(3, 6, 3), nn.Conv2d(6, 4, 3, groups=2), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(2, 3, 6, 6)
    model(x)
    w = model.body[0].weight.detach()
    b = model.body[0].bias.detach()
    rows = torch.cat([w.flatten(1), b[:, None]], dim=1)
    mag = score(model, "magnitude", [(x, torch.tensor([0, 1]))])["body.0"]
    l1 = score(model, "l1", [(x, torch.tensor([0, 1]))])["body.0"]
    assert mag.shape == (3,)
    for k in range(3):
        union = torch.cat([rows[k], rows[k + 3]])
        torch.testing.assert_close(mag[k], union.norm(), rtol=1e-6, atol=0)
        torch.testing.assert_close(l1[k], union.abs().sum(), rtol=1e-6, atol=0)


class _DeepPatchMerge(nn.Module):
    """Swin's shape in miniature: a channels-last embedding, a long parameter-free stretch
    (Swin-S/B: 18 residual blocks) and a patch merging ``cat([x0, x1, x2, x3], -1)``."""

    def __init__(self, depth: int = 600):
        super().__init__()
        self.depth = depth
        self.embed = nn.Linear(3, 4)
        self.reduction = nn.Linear(16, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        t = self.embed(x.permute(0, 2, 3, 1))
        for _ in range(self.depth):
            t = torch.relu(t)
        parts = [t[:, i::2, j::2, :] for j in (0, 1) for i in (0, 1)]
        t = self.reduction(torch.cat(parts, -1))
        return self.head(t.mean((1, 2)))


def test_concat_behind_a_long_path_gets_its_sizes_from_the_trace():
    """torch-pruning's backward walk for a concat's input sizes runs out of its 500-step budget
    behind the long stretch and it then computes ``sum([None, ...])`` (swin_s/swin_b's
    ``TypeError``); with the sizes recorded in the forward pass the model is analysed, the
    layer after the concat is prunable (pruning equals zeroing at its consumers), and the
    embedding, whose channels meet the slices, is left out with a one-line reason."""
    torch.manual_seed(0)
    model = _DeepPatchMerge().double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    info = analyze(model, x)
    assert "reduction" in info.groups and info.groups["reduction"].num_filters == 5
    if "embed" not in info.groups:
        reason = info.skipped["embed"]
        assert "'embed'" in reason and "\n" not in reason and "_SliceOp" not in reason
    plan = {"reduction": [1, 3]}
    with torch.no_grad(), pruning_reference(model, plan, x) as ref:
        expected = ref(x)
    prune_filters(model, plan, x)
    assert model.reduction.weight.shape == (3, 16)
    assert model.head.weight.shape == (2, 3)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)


def test_index_budget_leaves_a_layer_out_loudly_and_the_same_on_every_machine(monkeypatch):
    """A layer whose index map passes :data:`gfverify.groups.INDEX_BUDGET` (a count, not a
    clock) is left out with a reason naming it and the budget; the others are unaffected.
    conv (4 channels) -> flatten (stride 16) -> Linear: the conv's group maps about
    4 + 2·64 indices, the Linear's 2."""
    import gfverify.groups as groups_mod

    model = _Wrap(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(64, 2))
    x = torch.randn(2, 3, 6, 6)
    assert set(analyze(model, x).groups) == {"body.0", "body.2"}
    monkeypatch.setattr(groups_mod, "INDEX_BUDGET", 100)
    info = analyze(model, x)
    assert set(info.groups) == {"body.2"}
    reason = info.skipped["body.0"]
    assert "'body.0'" in reason and "exceeded 100 indices" in reason and "\n" not in reason
    assert analyze(model, x).skipped == info.skipped  # deterministic
    monkeypatch.setattr(groups_mod, "INDEX_BUDGET", 10_000)
    assert "body.0" in analyze(model, x).groups
