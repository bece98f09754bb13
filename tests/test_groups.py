"""Prunable filter groups (gfverify.groups): BN/tied/coupled discovery on the paper's nets, the
small nets and the official tiny nets; unsupported layers; flags left untouched."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from torch import nn

from gfverify.errors import ModelError
from gfverify.groups import coupled_groups, default_example_input, filter_groups
from gfverify.models import SmallNetSpec, build_model
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
    "layers, culprit",
    [
        (
            [nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.LazyLinear(2)],
            "body.1",
        ),
        (
            [nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(4, 4, 3), nn.Flatten(), nn.LazyLinear(2)],
            "body.1",
        ),
        (
            [nn.Conv2d(3, 4, 3), nn.Conv2d(4, 8, 3, groups=4), nn.Flatten(), nn.LazyLinear(2)],
            "body.1",
        ),
        ([nn.Flatten(), nn.Linear(108, 5), nn.LayerNorm(5), nn.Linear(5, 2)], "body.2"),
        ([nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.LazyLinear(2)], "body.1"),
    ],
)
def test_unsupported_layer_raises_naming_it(layers, culprit):
    model = _Wrap(*layers)
    x = torch.randn(2, 3, 6, 6)
    model(x)  # materialise lazy layers
    with pytest.raises(ModelError, match=rf"'{culprit}'") as err:
        filter_groups(model, x)
    assert "\n" not in str(err.value)


class _BareScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.scale = nn.Parameter(torch.ones(1, 4, 1, 1))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head((self.conv(x) * self.scale).mean((2, 3)))


def test_bare_parameter_in_channel_path_raises():
    with pytest.raises(ModelError, match="'scale'.*'conv'"):
        filter_groups(_BareScale(), torch.randn(2, 3, 6, 6))


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
