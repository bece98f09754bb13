"""Fashion-MNIST on this CPU: loader facts and the paper's nets' images/s at a few widths.

- loader facts: image counts, class balance, the training split's normalisation statistics
  and one augmented training batch's mean/std after normalisation (should be ≈ 0 / ≈ 1);
- throughput, 1 thread: training images/s (forward at logits/5, cross-entropy, backward, SGD
  step with momentum, batch 128) and evaluation images/s (eval mode, no grad, batch 256) on
  real Fashion-MNIST batches, for VGG-13, MobileNet-V1 and ResNet-56 at width multipliers
  0.125 / 0.25 / 0.5 (quick: 0.125 only). Median of ``reps`` timed batches after 2 warm-up
  batches.

Skipped (``{"skipped": reason}``) where dataset-fashion-mnist is not installed.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEBIAN = Path("/usr/share/datasets")
NETS = ("vgg13", "mobilenet_v1", "resnet56")


def loader_facts(root: Path = DEBIAN) -> dict[str, Any]:
    """Counts, class balance, normalisation and one batch's statistics of the Debian files."""
    from gfverify.data import DataSpec, load_datasets, make_loaders

    spec = DataSpec(name="fashion_mnist", root=str(root), normalize="cifar", val_fraction=0.1)
    t0 = time.perf_counter()
    data = load_datasets(spec)
    load_s = time.perf_counter() - t0
    x, _ = next(iter(make_loaders(data, batch_size=128, fast_path=True).train.epoch_loader(0)))
    return {
        "load_s": round(load_s, 2),
        "train_images": len(data.train),
        "val_images": len(data.val) if data.val is not None else 0,
        "test_images": len(data.test),
        "train_class_counts": np.bincount(data.train.targets, minlength=10).tolist(),
        "test_class_counts": np.bincount(data.test.targets, minlength=10).tolist(),
        "input_shape": list(data.input_shape),
        "norm_mean": round(data.train.pipeline.mean[0], 5),
        "norm_std": round(data.train.pipeline.std[0], 5),
        "batch_mean": round(float(x.mean()), 4),
        "batch_std": round(float(x.std()), 4),
    }


def _time(fn, reps: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def throughput(net: str, width: float, x: torch.Tensor, y: torch.Tensor, reps: int) -> dict:
    """Training and evaluation images/s of ``net`` at ``width`` on batch (x, y)."""
    from gfverify.models import build_model

    torch.manual_seed(0)
    model = build_model(net, width_mult=width, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    xb, yb = x[:128], y[:128]

    def train_step() -> None:
        model.train()
        loss = torch.nn.functional.cross_entropy(model(xb) / 5, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def eval_step() -> None:
        model.eval()
        with torch.no_grad():
            model(x)

    t_train = _time(train_step, reps)
    t_eval = _time(eval_step, reps)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "train_img_s": round(len(xb) / t_train, 1),
        "eval_img_s": round(len(x) / t_eval, 1),
    }


def run(quick: bool = False) -> dict:
    if not (DEBIAN / "fashion-mnist").is_dir():
        return {"skipped": "dataset-fashion-mnist is not installed (/usr/share/datasets)"}
    from gfverify.data import DataSpec, load_datasets, make_loaders

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        facts = loader_facts()
        data = load_datasets(DataSpec(name="fashion_mnist", root=str(DEBIAN), normalize="cifar"))
        x, y = next(iter(make_loaders(data, batch_size=256, fast_path=True).train.epoch_loader(0)))
        widths = (0.125,) if quick else (0.125, 0.25, 0.5)
        reps = 3 if quick else 5
        table = {f"{net}@{w}": throughput(net, w, x, y, reps) for net in NETS for w in widths}
    finally:
        torch.set_num_threads(threads)
    return {"threads": 1, "loader": facts, "throughput": table}


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
