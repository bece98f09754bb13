"""Training throughput on CPU: gfverify's train loop vs a plain DataLoader loop (same model).

One "epoch" = ``batches`` SGD steps (momentum 0.9, weight decay 1e-4, lr 0.1) at batch 128
with loss CE(f(x)/5, y), on gfverify's ``synthetic`` CIFAR-shaped data (3×32×32, 10 classes).
Each case has its own copy of the same initial ResNet-56 (``width_mult`` scaled) and is timed
round-robin with the others (:func:`benchmarks.common.timeit_interleaved`):

- ``gfverify``: :func:`gfverify.train.loop.train_epoch` over gfverify's fast-path loader
  (uint8 images in memory, batched normalisation), augmentation off — the same work as
  ``plain``;
- ``gfverify_augment``: the same with the protocol's crop + flip augmentation on (what runs do);
- ``plain``: ``torch.utils.data.DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True)``
  over the same images, pre-normalised to float32, and a hand-written step;
- ``channels_last`` / ``bf16_autocast``: the plain loop with the model and inputs in
  channels_last memory format / the forward pass under ``torch.autocast("cpu", bfloat16)``
  (measurements only: gfverify has no such flags).

``images_per_s`` = batches × 128 / median epoch time; ``speedup_vs_plain`` = plain median /
case median (> 1: faster than plain). The goal is ``gfverify.speedup_vs_plain`` ≥ 1.
"""

from __future__ import annotations

import copy
import os

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import timeit_interleaved
from gfverify.data import DataSpec, load_datasets, make_loaders
from gfverify.models import build_model
from gfverify.train.loop import Placement, train_epoch

BATCH = 128
TEMPERATURE = 5.0


def _sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)


def _plain_epoch(model, optimizer, loader, batches, memory_format=None, bf16=False) -> None:
    model.train()
    for k, (x, y) in enumerate(loader):
        if k >= batches:
            break
        if memory_format is not None:
            x = x.contiguous(memory_format=memory_format)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float() / TEMPERATURE, y)
        loss.backward()
        optimizer.step()


def run(quick: bool = False) -> dict:
    # ResNet-56 at width 0.5 takes ~16 s per step of 128 on a loaded 2-core CPU: too slow here
    width = 0.125 if quick else 0.25
    batches = 1 if quick else 2
    repeats = 2
    n_train = BATCH * (batches + 1)
    torch.manual_seed(0)
    base = build_model("resnet56", num_classes=10, width_mult=width)

    def spec(augment: bool) -> DataSpec:
        return DataSpec(
            name="synthetic",
            augment=augment,
            val_fraction=0.0,
            synthetic_train=n_train,
            synthetic_test=BATCH,
            fast_path=True,
            num_workers=0,
            image_size=32,
        )

    place = Placement(torch.device("cpu"), torch.float32)
    cases: dict = {}

    def gfverify_case(augment: bool):
        loaders = make_loaders(load_datasets(spec(augment)), batch_size=BATCH, seed=0)
        model = copy.deepcopy(base)
        opt = _sgd(model)
        epoch = [0]

        def fn() -> None:
            epoch[0] += 1
            train_epoch(
                model,
                opt,
                loaders.train.epoch_loader(epoch[0]),
                epoch=epoch[0],
                lr=0.1,
                temperature=TEMPERATURE,
                place=place,
                num_batches=len(loaders.train),
                max_batches=batches,
            )

        return fn

    cases["gfverify"] = gfverify_case(False)
    cases["gfverify_augment"] = gfverify_case(True)

    # the same images for the plain loop: gfverify's test-transform output (normalised float32)
    plain_loaders = make_loaders(load_datasets(spec(False)), batch_size=n_train, seed=0)
    x_all, y_all = next(iter(plain_loaders.train.epoch_loader(0)))
    dataset = TensorDataset(x_all.float().contiguous(), y_all)

    def plain_case(memory_format=None, bf16=False):
        model = copy.deepcopy(base)
        if memory_format is not None:
            model = model.to(memory_format=memory_format)
        opt = _sgd(model)
        gen = torch.Generator().manual_seed(0)
        loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, generator=gen)
        return lambda: _plain_epoch(model, opt, loader, batches, memory_format, bf16)

    cases["plain"] = plain_case()
    cases["channels_last"] = plain_case(memory_format=torch.channels_last)
    cases["bf16_autocast"] = plain_case(bf16=True)

    timings = timeit_interleaved(cases, repeats=repeats, warmup=1)
    plain = timings["plain"]["median_s"]
    plain_min = timings["plain"]["min_s"]
    out_cases = {}
    for name, t in timings.items():
        out_cases[name] = {
            **t,
            "images_per_s": round(batches * BATCH / t["median_s"], 2),
            "speedup_vs_plain": round(plain / t["median_s"], 4),
            "speedup_vs_plain_min": round(plain_min / t["min_s"], 4),
        }
    return {
        "model": f"resnet56 width_mult={width}",
        "batch_size": BATCH,
        "batches_per_epoch": batches,
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "loadavg_1min": round(os.getloadavg()[0], 2),
        "cases": out_cases,
        "summary": {f"{name}.images_per_s": c["images_per_s"] for name, c in out_cases.items()}
        | {
            f"{name}.speedup_vs_plain": c["speedup_vs_plain"]
            for name, c in out_cases.items()
            if name != "plain"
        },
    }


if __name__ == "__main__":  # pragma: no cover
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
