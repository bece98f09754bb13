"""One real-size ResNet-56 training epoch: gfverify's fast data path vs the DataLoader path.

The question (issue #5): on a whole epoch of CIFAR-sized training, how many images per second
does the training loop reach when batches come from the on-device fast path
(:class:`~gfverify.data.fast.TensorAugmentLoader`: uint8 images in memory, crop + flip +
normalise on whole batches) and from the torchvision DataLoader path (PIL transforms per image,
the official code's 2 worker processes)?

Set-up, identical for both paths except the loader:

- model: full-size ResNet-56 (855,770 parameters, 10 classes), float32, SGD (lr 0.1,
  momentum 0.9, weight decay 1e-4), loss CE(f(x)/5, y), through
  :func:`gfverify.train.loop.train_epoch` — the loop every run uses;
- data: gfverify's ``synthetic`` dataset, CIFAR-shaped (3×32×32 uint8, 10 classes), 50,000
  training images (CIFAR-10's count; ``quick``: 1,024), the official augmentation (RandomCrop 32
  pad 4 + RandomHorizontalFlip, normalise 0.5/0.5), batch 128, shuffled;
- each path: one untimed warm-up of 2 batches (allocator, worker start-up of the first epoch
  excluded), then one full epoch timed (worker start-up of that epoch included, as in training).

``images_per_s`` = images in the epoch / wall time; ``fast_vs_dataloader`` = fast / DataLoader
images/s (> 1: the fast path is faster). On a CPU the two share the same cores with the model,
so the gain is bounded by the data-loading share of an epoch; on a GPU the PIL pipeline is the
bottleneck and the fast path is expected to matter more.
"""

from __future__ import annotations

import os
import time

import torch

from gfverify.data import DataSpec, load_datasets, make_loaders
from gfverify.models import build_model
from gfverify.train.loop import Placement, train_epoch

BATCH = 128
TEMPERATURE = 5.0
CIFAR_TRAIN = 50_000
OFFICIAL_WORKERS = 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _spec(n_train: int, fast: bool) -> DataSpec:
    return DataSpec(
        name="synthetic",
        augment=True,
        val_fraction=0.0,
        synthetic_train=n_train,
        synthetic_test=BATCH,
        fast_path=fast,
        num_workers=0 if fast else OFFICIAL_WORKERS,
        image_size=32,
    )


def _epoch(model, optimizer, loader, epoch: int, place: Placement, max_batches=None) -> dict:
    return train_epoch(
        model,
        optimizer,
        loader.epoch_loader(epoch),
        epoch=epoch,
        lr=0.1,
        temperature=TEMPERATURE,
        place=place,
        num_batches=len(loader),
        max_batches=max_batches,
    )


def _time_path(fast: bool, n_train: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = build_model("resnet56", num_classes=10).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    place = Placement(device, torch.float32)
    t0 = time.perf_counter()
    loaders = make_loaders(load_datasets(_spec(n_train, fast)), batch_size=BATCH, device=device)
    _sync(device)
    setup_s = time.perf_counter() - t0
    _epoch(model, optimizer, loaders.train, 0, place, max_batches=2)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    metrics = _epoch(model, optimizer, loaders.train, 1, place)
    _sync(device)
    wall = time.perf_counter() - t0
    images = loaders.train.num_samples
    return {
        "loader": "fast path" if fast else f"DataLoader, {OFFICIAL_WORKERS} workers",
        "setup_s": round(setup_s, 3),
        "epoch_s": round(wall, 2),
        "images": images,
        "batches": int(metrics["train_batches"]),
        "images_per_s": round(images / wall, 2),
        "train_loss": round(float(metrics["train_loss"]), 4),
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
    }


def run(quick: bool = False) -> dict:
    """Images/s of one full ResNet-56 epoch with each data path, and their ratio."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_train = 1024 if quick else CIFAR_TRAIN
    fast = _time_path(True, n_train, device)
    loader = _time_path(False, n_train, device)
    ratio = fast["images_per_s"] / loader["images_per_s"]
    return {
        "device": str(device),
        "model": "resnet56 (855,770 parameters)",
        "batch_size": BATCH,
        "n_train": n_train,
        "torch_threads": torch.get_num_threads(),
        "cases": {"fast_path": fast, "dataloader": loader},
        "summary": {
            "fast_path.images_per_s": fast["images_per_s"],
            "dataloader.images_per_s": loader["images_per_s"],
            "fast_vs_dataloader": round(ratio, 4),
        },
    }


if __name__ == "__main__":  # pragma: no cover
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
