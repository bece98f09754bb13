"""Data-loading throughput: the on-device fast path vs the torchvision DataLoader path.

Both read the same CIFAR-format folder (random uint8 images written by
``tests/cifar_fixture.py``) through ``load_datasets``, with the official training transform
(RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize) and batch size 128.
Throughput = training images per second over one full epoch, after one warm-up epoch; the
DataLoader's per-epoch worker start-up is included (as in training). The fast path's one-time
upload of the uint8 tensor is reported separately. Ratios are measured in the same run.
"""

from __future__ import annotations

import tempfile
import time

import torch

from gfverify.data import DataSpec, TensorAugmentLoader, TorchEpochLoader, load_datasets
from tests.cifar_fixture import write_cifar10_folder


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _images_per_s(loader, device: torch.device, epoch: int = 1) -> float:
    n = 0
    _sync(device)
    t0 = time.perf_counter()
    for x, _ in loader.epoch_loader(epoch):
        x = x.to(device, non_blocking=True)
        n += x.shape[0]
    _sync(device)
    return n / (time.perf_counter() - t0)


def _measure(quick: bool, device: torch.device) -> dict:
    n_train = 2048 if quick else 20000
    workers = [0] if quick else [0, 2]
    result: dict = {"device": str(device), "n_images": n_train, "batch_size": 128}
    with tempfile.TemporaryDirectory() as root:
        write_cifar10_folder(root, n_train=n_train, n_test=10, seed=0)
        data = load_datasets(DataSpec(name="cifar10", root=root, verify_md5=False))
        for w in workers:
            pin = device.type == "cuda"
            loader = TorchEpochLoader(data.train, 128, num_workers=w, pin_memory=pin)
            if not quick:
                _images_per_s(loader, device, epoch=0)  # warm-up
            result[f"torchvision_workers{w}_images_per_s"] = _images_per_s(loader, device)
        t0 = time.perf_counter()
        fast = TensorAugmentLoader.from_dataset(data.train, 128, device=device)
        _sync(device)
        result["fast_setup_s"] = time.perf_counter() - t0
        _images_per_s(fast, device, epoch=0)  # warm-up
        result["fast_images_per_s"] = _images_per_s(fast, device)
    best = max(result[f"torchvision_workers{w}_images_per_s"] for w in workers)
    result["ratio_fast_vs_torchvision_workers0"] = (
        result["fast_images_per_s"] / result["torchvision_workers0_images_per_s"]
    )
    result["ratio_fast_vs_best_torchvision"] = result["fast_images_per_s"] / best
    return result


def run(quick: bool = False) -> dict:
    """Images/s of both paths on the available device, and their ratio."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = torch.get_num_threads()
    if device.type == "cpu":
        # Per-image transforms and 128-image batch ops are too small to gain from intra-op
        # threads (on a busy 2-core machine they lose badly): time both paths single-threaded.
        torch.set_num_threads(1)
    try:
        result = _measure(quick, device)
        result["torch_threads"] = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    return result


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
