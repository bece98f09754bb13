"""A RegNet-Y-like block (1×1 conv, grouped 3×3 conv, squeeze-excitation, 1×1 conv, residual add):
measure formulas and surgery on layers whose filters are units of channels (torchvision's RegNets
erred on both in the torchvision record)."""

from __future__ import annotations

import json

import torch
from torch import nn

from gfverify import measures
from gfverify.claims.measure_claims import FORMULA_CHECKED, _score_opts, reference_scores
from gfverify.claims.problems import FlowProblem
from gfverify.cli import main
from gfverify.flow import LossSpec
from gfverify.groups import filter_groups


class RegNetYBlock(nn.Module):
    """stem → [a: 1×1 → b: 3×3 groups=2 → SE (x·σ(…)) → c: 1×1] + stem → classifier."""

    def __init__(self, width: int = 8, classes: int = 3):
        super().__init__()
        bn_act = lambda c: nn.Sequential(nn.BatchNorm2d(c), nn.ReLU())  # noqa: E731
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width))
        self.a = nn.Sequential(nn.Conv2d(width, width, 1), bn_act(width))
        self.b = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=2), bn_act(width))
        self.se_reduce, self.se_expand = nn.Conv2d(width, 2, 1), nn.Conv2d(2, width, 1)
        self.c = nn.Sequential(nn.Conv2d(width, width, 1), nn.BatchNorm2d(width))
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        s = self.stem(x)
        h = self.b(self.a(s))
        e = h.mean((2, 3), keepdim=True)
        h = h * torch.sigmoid(self.se_expand(torch.relu(self.se_reduce(e))))
        return self.fc(torch.relu(self.c(h) + s).mean((2, 3)))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return RegNetYBlock()


def _problem() -> FlowProblem:
    model = _model().double().eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(12, 3, 5, 5, generator=gen, dtype=torch.float64)
    y = torch.arange(12) % 3
    return FlowProblem("regnet-y-block", model, [(x[:6], y[:6]), (x[6:], y[6:])], LossSpec())


def test_the_block_has_layers_whose_filters_are_channel_units():
    groups = filter_groups(_model().double(), torch.zeros(1, 3, 5, 5, dtype=torch.float64))
    assert groups["a.0"].channel_groups == 2  # feeds the grouped conv
    assert groups["a.0"].num_filters == 4


def test_every_measure_equals_its_formula_on_channel_units():
    """M-<name>'s autograd reference sums a unit's channels before the formula's outer
    function, as the measures do; it used to return one score per channel."""
    problem = _problem()
    for name in FORMULA_CHECKED:
        if name == "bn_fisher" or name == "bn_scale":
            continue  # need a BatchNorm on every layer: `c` has one, the SE convs do not
        mine = measures.score(problem.model, name, problem.batches, **_score_opts(problem))
        ref = reference_scores(problem, name)
        assert mine.keys() == ref.keys()
        for k in ref:
            torch.testing.assert_close(mine[k], ref[k], rtol=1e-10, atol=1e-300, msg=name + k)


def test_check_on_the_block_passes_M_grasp_and_P2_in_both_modes(tmp_path):
    out = tmp_path / "check.json"
    argv = ["check", "--quiet", "--model", "tests.test_grouped_residual:_model"]
    code = main(
        [
            *argv,
            "--input-shape",
            "3,5,5",
            "--num-classes",
            "3",
            "--claims",
            "M-grasp,P2",
            "--json",
            str(out),
        ]
    )
    records = json.loads(out.read_text())["results"]
    assert code == 0, records
    assert {(r["id"], r["details"].get("mode")) for r in records} >= {
        ("M-grasp", None),
        ("P2", "full"),
        ("P2", "paper"),
    }
    assert all(r["verdict"] == "pass" for r in records), records


def test_paper_mode_masks_a_coupled_layers_channel_units_whole():
    """b.0 (a grouped conv, coupled to se_expand by the SE product) has filters of G = 2
    channels; paper mode masks them: filter k zeroes channels k and k + 4, and
    masked_channels reports filters, so a later round ranks only the unmasked ones."""
    from gfverify.surgery import ChannelMask, masked_channels, prune_filters

    model = _model().double().eval()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    prune_filters(model, {"b.0": torch.tensor([1, 3])}, x, "paper")
    masks = {n: m for n, m in model.named_modules() if isinstance(m, ChannelMask)}
    assert list(masks) == ["b.1.0.channel_mask"]
    assert masks["b.1.0.channel_mask"].mask.tolist() == [1, 0, 1, 0, 1, 0, 1, 0]
    assert masked_channels(model) == {"b.0": [1, 3]}
    prune_filters(model, {"b.0": torch.tensor([0])}, x, "paper")
    assert masked_channels(model) == {"b.0": [0, 1, 3]}
    assert (model.b[0].weight.flatten(1).abs().sum(1) == 0).nonzero().flatten().tolist() == [
        0,
        1,
        3,
        4,
        5,
        7,
    ]
