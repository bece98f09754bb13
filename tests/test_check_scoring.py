"""Issue 12, scoring speed: the gradient measures' ḡ by plain ``loss.backward()`` per batch,
and the filter groups analysed once per model structure. Same numbers as before."""

from __future__ import annotations

import torch
from torch import nn

from gfverify import flow, measures
from gfverify.flow import LossSpec
from gfverify.models.small import SmallNetSpec


def _net_and_data():
    spec = SmallNetSpec(kind="cnn", widths=(4, 6), residual=True, image_size=5, seed=3)
    return spec.build().double(), spec.data(18, 4)


def test_plain_gradient_equals_torch_func_gradient_and_restores_grads():
    model, data = _net_and_data()
    loss = LossSpec("cross_entropy", 5.0, 2.5)
    model.train()
    for p in model.parameters():  # a training loop's leftover gradients must survive
        p.grad = torch.full_like(p, 7.0)
    names = list(flow.trainable_params(model))
    mine = measures.plain_gradient(model, data, loss, names)
    ref = flow.gradient(model, data, loss)
    assert set(mine) == set(ref)
    for k in ref:
        torch.testing.assert_close(mine[k], ref[k], rtol=1e-12, atol=1e-15)
    assert all(bool((p.grad == 7.0).all()) for p in model.parameters())
    assert model.training  # eval mode only inside


def test_plain_gradient_weights_batches_by_size():
    model, data = _net_and_data()
    loss = LossSpec("cross_entropy", 1.0)
    names = list(flow.trainable_params(model))
    uneven = [(data[0][0][:1], data[0][1][:1]), *data[1:]]
    mine = measures.plain_gradient(model, uneven, loss, names)
    ref = flow.gradient(model, uneven, loss)
    for k in ref:
        torch.testing.assert_close(mine[k], ref[k], rtol=1e-12, atol=1e-15)


def test_unused_parameter_gets_zero_gradient():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(4, 3)
            self.unused = nn.Linear(2, 2)

        def forward(self, x):
            return self.used(x.flatten(1))

    model = Net().double()
    x = torch.randn(6, 1, 2, 2, dtype=torch.float64)
    y = torch.arange(6) % 3
    g = measures.plain_gradient(model, [(x, y)], LossSpec(), ["used.weight", "unused.weight"])
    assert torch.equal(g["unused.weight"], torch.zeros(2, 2, dtype=torch.float64))
    assert g["used.weight"].abs().sum() > 0


def test_filter_groups_cached_per_structure(monkeypatch):
    import gfverify.groups as groups

    model, data = _net_and_data()
    calls = []
    real = groups.filter_groups

    def counting(m, x):
        calls.append(1)
        return real(m, x)

    monkeypatch.setattr(groups, "filter_groups", counting)
    a = measures.score(model, "loss_preservation", data, samples=18)
    b = measures.score(model, "loss_preservation", data, samples=18)
    assert len(calls) == 1 and all(torch.equal(a[k], b[k]) for k in a)
    model.classifier = nn.Linear(model.classifier.in_features, 5).double()  # structure changes
    measures.score(model, "magnitude", data)
    assert len(calls) == 2
