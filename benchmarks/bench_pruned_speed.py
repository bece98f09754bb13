"""CPU inference time of physically pruned ResNet-56 vs the dense net, next to the MAC ratio.

ResNet-56 (CIFAR-10 head, 32×32) with a random plan (fixed seed) that takes the same fraction
of filters from every prunable layer: 25/50/75 % in ``full`` mode (coupled residual groups lose
channels through their representative), and 60 % in both ``full`` and ``paper`` mode (paper:
block-internal filters removed, block outputs/shortcuts/stem only masked). Eval mode, batch 128,
``torch.no_grad``, CPU with torch's current thread count; the median of several interleaved
repeats. ``mac_ratio`` is dense / pruned analytic MACs (masked channels counted as gone);
``executed_mac_ratio`` is dense / the MACs the pruned model actually executes (torch's
FlopCounterMode / 2, which still sees masked channels); ``speedup`` is the ratio of the median
times, ``speedup_min`` that of the fastest repeats (less sensitive to other processes on a
shared machine; ``loadavg_1min`` records how busy it was).
"""

from __future__ import annotations

import copy
import os

import torch

from benchmarks.common import timeit_interleaved
from gfverify.complexity import count_complexity
from gfverify.groups import coupled_groups, filter_groups
from gfverify.models import build_model
from gfverify.surgery import prune_filters

SHAPE = (3, 32, 32)


def _plan(model: torch.nn.Module, frac: float, mode: str, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    skip = {n for g in coupled_groups(model) for n in g[1:]} if mode == "full" else set()
    return {
        name: torch.randperm(g.num_filters, generator=gen)[: int(frac * g.num_filters)]
        for name, g in filter_groups(model).items()
        if name not in skip
    }


def _executed_macs(model: torch.nn.Module) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *SHAPE))
    return counter.get_total_flops() // 2


def run(quick: bool = False) -> dict:
    torch.manual_seed(0)
    dense = build_model("resnet56", num_classes=10).eval()
    configs = [(0.25, "full"), (0.5, "full"), (0.75, "full"), (0.6, "full"), (0.6, "paper")]
    if quick:
        configs = [(0.5, "full"), (0.6, "paper")]
    models = {"dense": dense}
    meta = {"dense": {"fraction": 0.0, "mode": None}}
    for frac, mode in configs:
        key = f"{mode}_{int(frac * 100)}"
        pruned = copy.deepcopy(dense)
        prune_filters(pruned, _plan(pruned, frac, mode, seed=0), mode=mode)
        models[key] = pruned.eval()
        meta[key] = {"fraction": frac, "mode": mode}

    batch = 32 if quick else 128
    x = torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(1))

    def call(m: torch.nn.Module):
        def f() -> None:
            with torch.no_grad():
                m(x)

        return f

    load_before = os.getloadavg()[0]
    times = timeit_interleaved(
        {k: call(m) for k, m in models.items()}, repeats=2 if quick else 9, warmup=1
    )
    base = count_complexity(dense, SHAPE)
    base_t = times["dense"]["median_s"]
    out: dict = {
        "model": "resnet56",
        "batch_size": batch,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        # 1-min load average before/after timing: other processes on the machine slow every
        # variant and blur the ratios (interleaving only evens out slow drift)
        "loadavg_1min": [load_before, os.getloadavg()[0]],
        "results": {},
    }
    for key, m in models.items():
        c = count_complexity(m, SHAPE)
        executed = _executed_macs(m)
        t = times[key]["median_s"]
        t_min = times[key]["min_s"]
        out["results"][key] = {
            **meta[key],
            "macs": c.macs,
            "params": c.params,
            "executed_macs": executed,
            "mac_ratio": base.macs / c.macs,
            "executed_mac_ratio": base.macs / executed,
            "median_s": t,
            "min_s": t_min,
            "speedup": base_t / t,
            "speedup_min": times["dense"]["min_s"] / t_min,
        }
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=False), indent=2))
