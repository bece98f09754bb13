"""Write small CIFAR-10 / CIFAR-100 folders in the real python-pickle layout, for tests.

``write_cifar10_folder(root)`` creates ``root/cifar-10-batches-py`` with ``data_batch_1..5``,
``test_batch`` and ``batches.meta``; ``write_cifar100_folder(root)`` creates
``root/cifar-100-python`` with ``train``, ``test`` and ``meta``. Pixel rows are uint8 (N, 3072)
in channel-major order (R plane, G plane, B plane), as in the real archives. Load them with
``load_datasets(DataSpec(name=..., root=root, verify_md5=False))``.

Usable from other tests as ``from cifar_fixture import write_cifar10_folder`` (pytest puts
``tests/`` on ``sys.path``) or ``from tests.cifar_fixture import ...`` from the repo root.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class CifarFolder:
    """What was written: the folder, and the train/test pixels (N, 32, 32, 3) and labels."""

    path: Path
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def _draw(n: int, num_classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 HWC images; labels cycle through every class (balanced), then shuffled."""
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    return images, labels


def _rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) → (N, 3072) in CIFAR's channel-major order."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10_folder(
    root: str | Path, n_train: int = 50, n_test: int = 20, seed: int = 0
) -> CifarFolder:
    """Write ``root/cifar-10-batches-py`` with ``n_train`` images spread over 5 batches."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    tr_x, tr_y = _draw(n_train, 10, rng)
    te_x, te_y = _draw(n_test, 10, rng)
    for k, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        _dump(
            folder / f"data_batch_{k}",
            {
                "batch_label": f"training batch {k} of 5",
                "labels": tr_y[part].tolist(),
                "data": _rows(tr_x[part]),
                "filenames": [f"train_{i}.png" for i in part],
            },
        )
    _dump(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": te_y.tolist(),
            "data": _rows(te_x),
            "filenames": [f"test_{i}.png" for i in range(n_test)],
        },
    )
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    _dump(
        folder / "batches.meta",
        {"num_cases_per_batch": max(1, n_train // 5), "label_names": names, "num_vis": 3072},
    )
    return CifarFolder(folder, tr_x, tr_y, te_x, te_y)


def write_cifar100_folder(
    root: str | Path, n_train: int = 200, n_test: int = 100, seed: int = 0
) -> CifarFolder:
    """Write ``root/cifar-100-python`` (``train``, ``test``, ``meta``; 100 fine labels)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    tr_x, tr_y = _draw(n_train, 100, rng)
    te_x, te_y = _draw(n_test, 100, rng)
    for name, x, y in (("train", tr_x, tr_y), ("test", te_x, te_y)):
        _dump(
            folder / name,
            {
                "filenames": [f"{name}_{i}.png" for i in range(len(y))],
                "batch_label": f"{name}ing batch 1 of 1",
                "fine_labels": y.tolist(),
                "coarse_labels": (y // 5).tolist(),
                "data": _rows(x),
            },
        )
    _dump(
        folder / "meta",
        {
            "fine_label_names": [f"fine_{i:02d}" for i in range(100)],
            "coarse_label_names": [f"coarse_{i:02d}" for i in range(20)],
        },
    )
    return CifarFolder(folder, tr_x, tr_y, te_x, te_y)
