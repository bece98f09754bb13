"""Bridges: Torch-Pruning importance, torch.nn.utils.prune scores, Hg parameter sets."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune as torch_prune

from gfverify import flow
from gfverify.integrations import torch_prune as gf_torch_prune
from gfverify.integrations.torch_pruning import Importance
from gfverify.measures import score, weight_names
from gfverify.models import build_model
from gfverify.prune import prune

RATIO = 0.3


def _data(n: int = 10, size: int = 32, classes: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g, dtype=torch.float64)
    y = torch.arange(n) % classes
    return [(x, y)]


def _channels(model: nn.Module) -> dict[str, int]:
    return {n: m.weight.shape[0] for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize(
    "arch, width, measure",
    [
        ("vgg13", 0.125, "magnitude"),
        ("vgg13", 0.125, "grasp"),
        ("mobilenet_v1", 0.125, "magnitude"),
        ("mobilenet_v1", 0.125, "grasp"),
        ("resnet56", 0.25, "magnitude"),
        ("resnet56", 0.25, "taylor_fo"),
    ],
)
def test_metapruner_removes_what_gfverify_surgery_removes(arch, width, measure):
    """MetaPruner(global, ratio 0.3) with our Importance and gfverify.prune.prune with the same
    number of channels (count="channels": one per coupled channel, as Torch-Pruning counts)
    leave identical models: same tensors, bit for bit. Torch-Pruning removes every score tied
    at its threshold, so the count is read off its result and handed to ours. (Where its
    threshold takes every channel of a layer, Torch-Pruning skips that whole group while our
    floor keeps one filter: the widths here have no such layer.)"""
    torch.manual_seed(1)
    model = build_model(arch, 10, width).double().eval()
    batches = _data()
    x = batches[0][0][:1]
    ours, theirs = copy.deepcopy(model), copy.deepcopy(model)
    imp = Importance(measure, batches, samples=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(
            theirs,
            x,
            importance=imp,
            pruning_ratio=RATIO,
            global_pruning=True,
            ignored_layers=[theirs.classifier],
        )
        pruner.step()
    before, after = _channels(model), _channels(theirs)
    scores = score(ours, measure, batches, "filter", samples=10)
    from gfverify.groups import analyze

    info = analyze(ours, x)
    reps = [n for n in scores if n not in {m for g in info.coupled for m in g[1:]}]
    n_removed = sum(before[n] - after[n] for n in reps)
    assert n_removed > 0
    result = prune(
        ours, scores, n=n_removed, measure=measure, example_input=x, min_keep=1, count="channels"
    )
    assert result.plan.n_selected == n_removed
    sa, sb = theirs.state_dict(), ours.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].shape == sb[k].shape, k
        assert torch.equal(sa[k], sb[k]), k


class _GroupedChain(nn.Module):
    """conv -> grouped conv (4 groups) -> grouped conv (2 groups) -> linear, with BatchNorm."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16)
        self.c3, self.b3 = nn.Conv2d(16, 24, 3, padding=1, groups=2), nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        for conv, bn in ((self.c1, self.b1), (self.c2, self.b2), (self.c3, self.b3)):
            x = torch.relu(bn(conv(x)))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize(
    "measure, ratio", [("magnitude", 0.4), ("taylor_fo", 0.4), ("gradient_norm_preservation", 0.5)]
)
def test_metapruner_on_grouped_convs_removes_the_units_gfverify_ranks_lowest(measure, ratio):
    """On grouped convs a filter unit is G channels (one per group, :mod:`gfverify.groups`).
    Whatever number of units MetaPruner's global threshold takes from each layer, with our
    Importance they are the ones gfverify ranks lowest in that layer, and the model equals
    gfverify's surgery removing those same units, bit for bit."""
    torch.manual_seed(2)
    model = _GroupedChain().double().eval()
    batches = _data(size=8)
    x = batches[0][0][:1]
    ours, theirs = copy.deepcopy(model), copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(
            theirs,
            x,
            importance=Importance(measure, batches, samples=10),
            pruning_ratio=ratio,
            global_pruning=True,
            ignored_layers=[theirs.fc],
        )
        pruner.step()
    from gfverify.groups import analyze

    groups = analyze(ours, x).groups
    scores = score(ours, measure, batches, "filter", samples=10)
    plan = {}
    for name in ("c1", "c2", "c3"):
        units = groups[name].channel_groups
        gone = model.get_submodule(name).out_channels - theirs.get_submodule(name).out_channels
        assert gone % units == 0  # Torch-Pruning removes whole units too
        plan[name] = torch.sort(torch.argsort(scores[name], stable=True)[: gone // units]).values
    assert sum(v.numel() for v in plan.values()) > 0
    prune(ours, plan=plan, example_input=x)
    sa, sb = theirs.state_dict(), ours.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].shape == sb[k].shape, k
        assert torch.equal(sa[k], sb[k]), k


def test_importance_gives_none_for_groups_gfverify_does_not_rank():
    model = build_model("vgg13", 10, 0.0625).double().eval()
    batches = _data()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=batches[0][0][:1])
    imp = Importance("magnitude", batches)
    group = graph.get_pruning_group(model.classifier, tp.prune_linear_out_channels, [0, 1])
    assert imp(group) is None
    conv = model.features[0]
    full = graph.get_pruning_group(conv, tp.prune_conv_out_channels, list(range(4)))
    expected = conv.weight.detach().flatten(1).norm(dim=1)
    torch.testing.assert_close(imp(full), expected, rtol=0, atol=1e-15)


class _ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.b1 = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 5, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = torch.tanh(self.b1(self.c1(x)))
        x = torch.tanh(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


def _conv_bn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = _ConvBN().double()
    with torch.no_grad():
        for bn in (m.b1, m.b2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    return m.eval()


def _balanced(n_per_class: int = 4, classes: int = 3, size: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_per_class * classes, 3, size, size, generator=g, dtype=torch.float64)
    y = torch.arange(n_per_class * classes) % classes
    return [(x, y)]


def _autograd_grasp(model: nn.Module, batches, names: set[str], temperature: float):
    """θ_p ⊙ (H_pp g_p) for the parameter set ``names`` by plain double backward (float64)."""
    x, y = batches[0]
    params = {n: p for n, p in model.named_parameters() if n in names}
    loss = nn.functional.cross_entropy(model(x) / temperature, y)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    dot = sum((g * g.detach()).sum() for g in grads)
    hg = torch.autograd.grad(dot, list(params.values()))
    return {n: (p * h).detach() for (n, p), h in zip(params.items(), hg)}


@pytest.mark.parametrize("hg_params", ["weights", "all"])
def test_hg_parameter_set_matches_autograd_reference(hg_params):
    """GraSP per weight with Hg over the weights only (H_ww g_w) or over every parameter
    equals the double-backward reference over that set, to 1e-12 (float64)."""
    model = _conv_bn()
    batches = _balanced()
    got = score(model, "grasp", batches, "weight", samples=12, hg_params=hg_params)
    names = (
        weight_names(model) if hg_params == "weights" else {n for n, _ in model.named_parameters()}
    )
    ref = _autograd_grasp(model, batches, names, 200.0)
    for mod, s in got.items():
        torch.testing.assert_close(s, ref[f"{mod}.weight"], rtol=1e-10, atol=1e-14)


def test_hg_parameter_sets_differ_on_a_conv_bn_net():
    """The choice matters: weights-only and all-parameter Hg give different GraSP scores."""
    model = _conv_bn()
    batches = _balanced()
    w = score(model, "grasp", batches, "weight", samples=12, hg_params="weights")
    a = score(model, "grasp", batches, "weight", samples=12)
    gap = max(float((w[k] - a[k]).abs().max() / a[k].abs().max()) for k in w)
    assert gap > 1e-3


def test_hg_filter_scores_default_to_all_parameters():
    model = _conv_bn()
    batches = _balanced()
    default = score(model, "grasp", batches, "filter", samples=12)
    explicit = score(model, "grasp", batches, "filter", samples=12, hg_params="all")
    for k in default:
        assert torch.equal(default[k], explicit[k])


@pytest.mark.parametrize("measure", ["snip", "magnitude", "grasp"])
def test_global_unstructured_prunes_exactly_the_lowest_scored_weights(measure):
    model = _conv_bn()
    batches = _balanced()
    opts = {"samples": 12}
    if measure == "grasp":
        opts["hg_params"] = "weights"
    raw = score(model, measure, batches, "weight", **opts)
    amount = 0.4
    gf_torch_prune.global_unstructured(model, measure, batches, amount, **opts)
    flat = torch.cat([raw[k].flatten() for k in raw])
    k = round(amount * flat.numel())
    threshold = flat.sort().values[k - 1]
    assert int((flat == threshold).sum()) == 1  # no tie at the threshold
    for name, s in raw.items():
        mask = model.get_submodule(name).weight_mask
        torch.testing.assert_close(mask, (s > threshold).to(mask.dtype), rtol=0, atol=0)
    assert sum(int((model.get_submodule(n).weight_mask == 0).sum()) for n in raw) == k


def test_importance_scores_keys_fit_torch_prune():
    model = _conv_bn()
    scores = gf_torch_prune.importance_scores(model, "grasp", _balanced(), samples=12)
    assert all(float(v.min()) >= 0 for v in scores.values())
    torch_prune.global_unstructured(
        list(scores), pruning_method=torch_prune.L1Unstructured, importance_scores=scores, amount=5
    )
    assert sum(int((m.weight_mask == 0).sum()) for m, _ in scores) == 5


def test_hg_method_fallback_is_exact_for_attention():
    """nn.MultiheadAttention has no forward-mode AD: Hg falls back to reverse-over-reverse with
    math attention, warns, and equals double backward."""

    class Att(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(4, 8)
            self.att = nn.MultiheadAttention(8, 2, batch_first=True)
            self.out = nn.Linear(8, 3)

        def forward(self, x):
            z = self.inp(x)
            z, _ = self.att(z, z, z, need_weights=False)
            return self.out(z.mean(1))

    torch.manual_seed(0)
    model = Att().double().eval()
    x = torch.randn(6, 5, 4, dtype=torch.float64)
    y = torch.arange(6) % 3
    loss = flow.LossSpec("cross_entropy", 1.0)
    g = flow.gradient(model, [(x, y)], loss)
    with pytest.warns(flow.HgFallbackWarning, match="_native_multi_head_attention"):
        hv, method = flow.hessian_vector_exact(model, [(x, y)], loss, g)
    assert method.startswith("reverse_over_reverse")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        ref = flow.hvp_double_backward(model, [(x, y)], loss, g)
    for k in ref:
        torch.testing.assert_close(hv[k], ref[k], rtol=1e-10, atol=1e-13)


def test_no_double_backward_is_a_one_line_model_error_naming_op_and_module():
    from gfverify.errors import ModelError

    model = nn.Sequential(nn.Linear(4, 6), nn.Hardsigmoid(), nn.Linear(6, 3)).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    with pytest.raises(ModelError, match=r"hardsigmoid_backward.*'1'") as err:
        score(model, "grasp", [(x, torch.arange(6) % 3)], "weight", samples=6)
    assert "\n" not in str(err.value)


class _Attention(nn.Module):
    """Timm-style attention: one fused qkv Linear, reshape(B, N, 3, H, d), unbind, proj."""

    def __init__(self, dim: int = 16, heads: int = 4):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        a = (q @ k.transpose(-2, -1) * self.head_dim**-0.5).softmax(-1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class _TokenNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.attn, self.fc = nn.Linear(6, 16), _Attention(16, 4), nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.attn(self.embed(x))).mean(1))


def test_metapruner_removes_the_heads_with_the_lowest_mean_gfverify_score():
    """Head pruning where Torch-Pruning does it (num_heads, prune_num_heads): with our
    Importance on the fused qkv layer, the heads kept are those whose mean magnitude over
    their channels is highest, channel c scored ‖(q_c, k_c, v_c) rows and biases‖₂ (computed
    here from the weights); the pruned qkv and proj are the kept rows / columns, bit for bit."""
    torch.manual_seed(0)
    model = _TokenNet().double().eval()
    x = torch.randn(8, 5, 6, dtype=torch.float64)
    batches = [(x, torch.arange(8) % 3)]
    qkv_w, qkv_b = model.attn.qkv.weight.detach().clone(), model.attn.qkv.bias.detach().clone()
    proj_w = model.attn.proj.weight.detach().clone()
    dim, heads, d = 16, 4, 4
    rows = torch.cat([qkv_w, qkv_b[:, None]], dim=1)
    channel = torch.stack([rows[[c, c + dim, c + 2 * dim]].pow(2).sum().sqrt() for c in range(dim)])
    kept_heads = channel.view(heads, d).mean(1).argsort(descending=True)[:2].sort().values
    kept = torch.cat([torch.arange(h * d, (h + 1) * d) for h in kept_heads.tolist()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(
            model,
            x[:1],
            importance=Importance("magnitude", batches, qkv_layers=[model.attn.qkv]),
            num_heads={model.attn.qkv: heads},
            prune_num_heads=True,
            prune_head_dims=False,
            head_pruning_ratio=0.5,
            ignored_layers=[model.fc, model.embed],
        )
        pruner.step()
    model.attn.num_heads = pruner.num_heads[model.attn.qkv]
    assert model.attn.num_heads == 2
    kept_rows = torch.cat([kept + s * dim for s in range(3)])
    assert torch.equal(model.attn.qkv.weight, qkv_w[kept_rows])
    assert torch.equal(model.attn.qkv.bias, qkv_b[kept_rows])
    assert torch.equal(model.attn.proj.weight, proj_w[:, kept])
    assert model(x).shape == (8, 3)
