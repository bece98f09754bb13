"""The paper's CIFAR networks (spec §3.2) and the model registry.

Full-size nets are built only for the parameter counts and one batch-1 forward each; everything
else uses width-scaled variants.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import gfverify.models.small as small
from gfverify.errors import ModelError
from gfverify.models import (
    MLP,
    MODELS,
    SmallCNN,
    SmallNetSpec,
    build_model,
    load_factory,
    register_model,
)
from gfverify.models.cifar_mobilenet import MOBILENET_V1_CFG
from gfverify.models.cifar_vgg import VGG13_CFG, scale_width

NAMES = ("vgg13", "mobilenet_v1", "resnet56")
TINY_WIDTHS = (0.0625, 0.125, 0.25)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny_factory(num_classes: int = 10, width_mult: float = 1.0, input_size: int = 32) -> nn.Module:
    """A user-style factory that load_factory must find in this module."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * input_size * input_size, num_classes))


NOT_CALLABLE = 42


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """float64, eval mode, generic BN affine parameters and running statistics."""
    gen = torch.Generator().manual_seed(seed)
    model = model.double().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(0.3 * torch.randn(n, generator=gen, dtype=torch.float64))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen, dtype=torch.float64))
                m.weight.copy_(0.5 + torch.rand(n, generator=gen, dtype=torch.float64))
                m.bias.copy_(0.3 * torch.randn(n, generator=gen, dtype=torch.float64))
    return model


# ---------------------------------------------------------------- parameter counts (spec §3.2)


@pytest.mark.parametrize(
    ("name", "num_classes", "expected"),
    [
        ("vgg13", 10, 9_413_066),
        ("vgg13", 100, 9_459_236),
        ("mobilenet_v1", 10, 3_217_226),
        ("mobilenet_v1", 100, 3_309_476),
        ("resnet56", 10, 855_770),
        ("resnet56", 100, 861_620),
    ],
)
def test_exact_parameter_counts(name: str, num_classes: int, expected: int) -> None:
    assert n_params(build_model(name, num_classes=num_classes)) == expected
    # 64×64 inputs add no parameters
    assert n_params(build_model(name, num_classes=num_classes, input_size=64)) == expected


@pytest.mark.parametrize("name", NAMES)
def test_full_size_forward(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=100).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 100)
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------- shapes of scaled variants


@settings(max_examples=20, deadline=None)
@given(
    name=st.sampled_from(NAMES),
    width_mult=st.sampled_from(TINY_WIDTHS),
    num_classes=st.integers(1, 20),
    input_size=st.sampled_from((32, 64)),
    batch=st.integers(1, 3),
)
def test_scaled_forward_shape(
    name: str, width_mult: float, num_classes: int, input_size: int, batch: int
) -> None:
    model = build_model(name, num_classes, width_mult, input_size)
    assert model.input_size == input_size
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(batch, 3, input_size, input_size))
    assert out.shape == (batch, num_classes)
    assert torch.isfinite(out).all()


@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(NAMES), width_mult=st.sampled_from((*TINY_WIDTHS, 0.5, 0.3)))
def test_width_mult_scales_every_channel_count(name: str, width_mult: float) -> None:
    """Same module names as the full net; each conv/BN width = max(1, round(full · width_mult))."""
    full = dict(build_model(name).named_modules())
    scaled = dict(build_model(name, width_mult=width_mult).named_modules())
    assert full.keys() == scaled.keys()
    for key, m in scaled.items():
        f = full[key]
        assert type(m) is type(f)
        if isinstance(m, nn.Conv2d):
            assert m.out_channels == scale_width(f.out_channels, width_mult)
            if f.in_channels != 3:
                assert m.in_channels == scale_width(f.in_channels, width_mult)
            assert m.groups in (1, m.in_channels)
            assert (m.groups == 1) == (f.groups == 1)
        elif isinstance(m, nn.BatchNorm2d):
            assert m.num_features == scale_width(f.num_features, width_mult)
        elif isinstance(m, nn.Linear):
            assert m.in_features == scale_width(f.in_features, width_mult)
            assert m.out_features == f.out_features


def test_scale_width_rounds_half_up_with_floor_one() -> None:
    assert scale_width(64, 0.125) == 8
    assert scale_width(16, 0.0625) == 1
    assert scale_width(16, 0.01) == 1
    assert scale_width(32, 0.078125) == 3  # 2.5 -> 3
    assert scale_width(512, 1.0) == 512


# ---------------------------------------------------------------- functional references
# Independent re-implementations of the official forward passes from torch.nn.functional,
# reading the weights by module name. They pin the layer order (VGG: Conv→ReLU→BN), the
# strides, the shortcuts and the official pooling (avg_pool2d(2) / avg_pool2d(size)).


def _bn(x: torch.Tensor, sd: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    return F.batch_norm(
        x,
        sd[f"{key}.running_mean"],
        sd[f"{key}.running_var"],
        sd[f"{key}.weight"],
        sd[f"{key}.bias"],
        training=False,
        eps=1e-5,
    )


def reference_vgg(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    i = 0
    for v in VGG13_CFG:
        if v == "M":
            x = F.max_pool2d(x, 2)
            i += 1
        else:
            x = F.conv2d(x, sd[f"features.{i}.weight"], padding=1)
            x = _bn(F.relu(x), sd, f"features.{i + 2}")
            i += 3
    return F.linear(x.flatten(1), sd["classifier.weight"], sd["classifier.bias"])


def reference_mobilenet(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    x = F.relu(_bn(F.conv2d(x, sd["stem.conv.weight"], padding=1), sd, "stem.bn"))
    for i, v in enumerate(MOBILENET_V1_CFG):
        stride = 1 if isinstance(v, int) else v[1]
        x = F.conv2d(x, sd[f"blocks.{i}.dw.weight"], stride=stride, padding=1, groups=x.shape[1])
        x = F.relu(_bn(x, sd, f"blocks.{i}.dw_bn"))
        x = F.relu(_bn(F.conv2d(x, sd[f"blocks.{i}.pw.weight"]), sd, f"blocks.{i}.pw_bn"))
    x = F.avg_pool2d(x, 2)
    return F.linear(x.flatten(1), sd["classifier.weight"], sd["classifier.bias"])


def reference_resnet56(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    x = F.relu(_bn(F.conv2d(x, sd["stem.conv.weight"], padding=1), sd, "stem.bn"))
    for stage in (1, 2, 3):
        for b in range(9):
            p = f"layer{stage}.{b}"
            stride = 2 if stage > 1 and b == 0 else 1
            out = F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride, padding=1)
            out = F.relu(_bn(out, sd, f"{p}.bn1"))
            out = _bn(F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1), sd, f"{p}.bn2")
            if stride == 2:
                short = _bn(
                    F.conv2d(x, sd[f"{p}.shortcut.0.weight"], stride=2), sd, f"{p}.shortcut.1"
                )
            else:
                short = x
            x = F.relu(out + short)
    x = F.avg_pool2d(x, x.shape[3])
    return F.linear(x.flatten(1), sd["classifier.weight"], sd["classifier.bias"])


REFERENCES = {
    "vgg13": reference_vgg,
    "mobilenet_v1": reference_mobilenet,
    "resnet56": reference_resnet56,
}


@pytest.mark.parametrize("name", NAMES)
def test_forward_matches_official_functional_reference(name: str) -> None:
    torch.manual_seed(1)
    model = randomize(build_model(name, num_classes=7, width_mult=0.125), seed=2)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    sd = model.state_dict()
    with torch.no_grad():
        torch.testing.assert_close(model(x), REFERENCES[name](sd, x), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- architecture details


def test_vgg_conv_relu_bn_order_and_no_bias() -> None:
    feats = list(build_model("vgg13", width_mult=0.125).features)
    convs = [i for i, m in enumerate(feats) if isinstance(m, nn.Conv2d)]
    bns = [i for i, m in enumerate(feats) if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == 10
    assert bns == [2, 5, 9, 12, 16, 19, 23, 26, 30, 33]  # the official code's BN indices
    for i in convs:
        conv, relu, bn = feats[i : i + 3]
        assert conv.bias is None
        assert conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.stride == (1, 1)
        assert isinstance(relu, nn.ReLU)
        assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == conv.out_channels
    assert sum(isinstance(m, nn.MaxPool2d) for m in feats) == 5
    full = build_model("vgg13")
    widths = [m.out_channels for m in full.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [v for v in VGG13_CFG if v != "M"]
    assert sum(widths) == 2944  # prunable filters (spec §3.2)
    assert full.classifier.in_features == 512


def test_resnet56_batchnorms_and_projection_shortcuts() -> None:
    model = build_model("resnet56", width_mult=0.125)
    modules = dict(model.named_modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in modules.values()) == 57
    blocks = {k: m for k, m in modules.items() if type(m).__name__ == "BasicBlock"}
    assert len(blocks) == 27
    projected = sorted(k for k, b in blocks.items() if b.has_projection)
    assert projected == ["layer2.0", "layer3.0"]
    for key in projected:
        conv, bn = modules[f"{key}.shortcut.0"], modules[f"{key}.shortcut.1"]
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)
        assert conv.stride == (2, 2) and conv.bias is None
        assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == conv.out_channels
        assert modules[f"{key}.conv1"].stride == (2, 2)
    for key, b in blocks.items():
        if key not in projected:
            assert isinstance(b.shortcut, nn.Identity)
            assert b.conv1.stride == (1, 1)
        for c, n in (("conv1", "bn1"), ("conv2", "bn2")):
            assert getattr(b, c).bias is None
            assert getattr(b, n).num_features == getattr(b, c).out_channels
    full = build_model("resnet56")
    assert [full.layer1[0].conv1.out_channels, full.layer2[0].conv1.out_channels] == [16, 32]
    assert full.layer3[8].conv2.out_channels == 64 and full.classifier.in_features == 64
    assert full.stem.conv.out_channels == 16 and full.stem.bn.num_features == 16


def test_mobilenet_depthwise_groups_and_strides() -> None:
    full = build_model("mobilenet_v1")
    assert len(full.blocks) == 13
    assert sum(isinstance(m, nn.BatchNorm2d) for m in full.modules()) == 27
    assert full.stem.conv.out_channels == 32 and full.stem.conv.stride == (1, 1)
    for block, v in zip(full.blocks, MOBILENET_V1_CFG):
        width, stride = (v, 1) if isinstance(v, int) else v
        dw, pw = block.dw, block.pw
        assert dw.groups == dw.in_channels == dw.out_channels
        assert dw.kernel_size == (3, 3) and dw.stride == (stride, stride) and dw.bias is None
        assert pw.kernel_size == (1, 1) and pw.groups == 1 and pw.bias is None
        assert pw.out_channels == width
        assert block.dw_bn.num_features == dw.out_channels
        assert block.pw_bn.num_features == pw.out_channels
    assert full.classifier.in_features == 1024


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_manual_seed(name: str) -> None:
    def build(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return build_model(name, width_mult=0.125).state_dict()

    a, b, c = build(0), build(0), build(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


# ---------------------------------------------------------------- registry


def test_registry_names_and_small_reexports() -> None:
    assert set(NAMES) <= set(MODELS)
    assert (MLP, SmallCNN, SmallNetSpec) == (small.MLP, small.SmallCNN, small.SmallNetSpec)


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ModelError) as exc:
        build_model("vgg16")
    msg = str(exc.value)
    assert "vgg16" in msg and "\n" not in msg
    assert all(n in msg for n in NAMES)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_classes": 0},
        {"num_classes": 2.5},
        {"width_mult": 0.0},
        {"width_mult": -1.0},
        {"width_mult": math.nan},
        {"input_size": 31},  # VGG's five pools need >= 32
        {"depth": 20},  # not an argument of the builder
    ],
)
def test_bad_arguments_raise_model_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ModelError):
        build_model("vgg13", **kwargs)


def test_register_model_adds_one_name_and_refuses_duplicates() -> None:
    try:

        @register_model("_test_tiny")
        def _tiny(num_classes: int = 10, width_mult: float = 1.0, input_size: int = 32):
            return tiny_factory(num_classes, width_mult, input_size)

        out = build_model("_test_tiny", num_classes=4, input_size=8)(torch.randn(2, 3, 8, 8))
        assert out.shape == (2, 4)
        with pytest.raises(ModelError, match="already registered"):
            register_model("_test_tiny")(_tiny)
        with pytest.raises(ModelError, match="already registered"):
            register_model("vgg13")(_tiny)
    finally:
        MODELS.pop("_test_tiny", None)


def test_load_factory_finds_a_callable() -> None:
    factory = load_factory(f"{__name__}:tiny_factory")
    assert factory is tiny_factory
    assert load_factory("gfverify.models:build_model") is build_model
    assert load_factory("gfverify.models.cifar_resnet:BasicBlock.forward") is not None


@pytest.mark.parametrize(
    "spec",
    [
        "no_such_module_gfverify_xyz:factory",
        "gfverify.models:no_such_factory",
        f"{__name__}:NOT_CALLABLE",
        "gfverify.models",
        "gfverify.models:build_model:extra",
        ":build_model",
        "gfverify.models:",
    ],
)
def test_load_factory_fails_cleanly(spec: str) -> None:
    with pytest.raises(ModelError) as exc:
        load_factory(spec)
    assert "\n" not in str(exc.value)


def test_load_factory_reports_import_time_errors_on_one_line(tmp_path, monkeypatch) -> None:
    (tmp_path / "gfv_broken_mod.py").write_text("raise RuntimeError('boom\\nsecond line')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(ModelError) as exc:
            load_factory("gfv_broken_mod:factory")
    finally:
        sys.modules.pop("gfv_broken_mod", None)
    msg = str(exc.value)
    assert "RuntimeError" in msg and "boom" in msg and "\n" not in msg
