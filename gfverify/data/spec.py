"""What data a run uses: the typed :class:`DataSpec` and the :class:`Datasets` it loads to.

Dataset builders register themselves by name in :data:`DATASETS` (see
:func:`register_dataset`); adding a dataset is one registration, nothing else changes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gfverify.errors import ConfigError

if TYPE_CHECKING:
    from gfverify.data.sources import ImageSubset, RawData

#: ``normalize`` choices: "half" (mean = std = 0.5 per channel, as the official code) or
#: "cifar" (the dataset's own per-channel statistics; CIFAR-10's for non-CIFAR datasets).
NORMALIZE_CHOICES = ("half", "cifar")


@dataclass(frozen=True)
class DataSpec:
    """Which dataset, where, and how it is split, augmented and normalised.

    - ``name``: a key of :data:`DATASETS` ("cifar10", "cifar100", "imagefolder",
      "tinyimagenet", "digits", "synthetic", "fashion_mnist", "mnist").
    - ``root``: folder searched for the files (CIFAR: ``ROOT/cifar-10-batches-py`` or
      ``ROOT/cifar-100-python``; imagefolder: ``ROOT/train`` and ``ROOT/test``).
    - ``download``: let torchvision download CIFAR / Fashion-MNIST / MNIST into ``root``
      (needs internet).
    - ``normalize``: "half" → x ↦ (x − 0.5)/0.5 per channel (official code); "cifar" → true
      CIFAR channel statistics (Fashion-MNIST / MNIST: their training split's statistics).
    - ``augment``: training transform = RandomCrop(size, padding=size//8) + RandomHorizontalFlip
      (official: crop 32, pad 4; no flip for MNIST digits); off → the test transform.
    - ``val_fraction``: round(f·N) training images held out (seeded by ``seed``), evaluated
      with the test transform.
    - ``train_subset``: keep the first N training images of a seeded shuffle (smoke runs).
    - ``image_size``: side length fed to the model; ``None`` → the dataset's native size.
    - ``fast_path``: loaders keep uint8 images on the device and augment whole batches there.
    - ``num_workers``: DataLoader worker processes (torchvision path).
    - ``seed``: validation split, subset and per-epoch data order / augmentation draws.
    - ``data_seed``: the content of generated datasets (synthetic images, the digits
      train/test split), fixed across run seeds by default.
    - ``verify_md5``: check torchvision's CIFAR md5 sums; ``False`` accepts any file with the
      right name and layout (hand-made or test-made folders).
    - ``synthetic_*``: classes, train/test sizes and per-pixel noise of "synthetic".
    """

    name: str = "cifar10"
    root: str = "data"
    download: bool = False
    normalize: str = "half"
    augment: bool = True
    val_fraction: float = 0.0
    train_subset: int | None = None
    image_size: int | None = None
    fast_path: bool = False
    num_workers: int = 0
    seed: int = 0
    data_seed: int = 0
    verify_md5: bool = True
    synthetic_classes: int = 10
    synthetic_train: int = 2048
    synthetic_test: int = 512
    synthetic_noise: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.root, os.PathLike):
            object.__setattr__(self, "root", os.fspath(self.root))
        if self.name not in DATASETS:
            raise ConfigError(f"unknown dataset name {self.name!r}; choose from {sorted(DATASETS)}")
        if self.normalize not in NORMALIZE_CHOICES:
            raise ConfigError(
                f"normalize={self.normalize!r} is not one of {list(NORMALIZE_CHOICES)}"
            )
        if not (0.0 <= self.val_fraction < 1.0):
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        for key in ("train_subset", "image_size"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ConfigError(f"{key} must be a positive integer or None, got {v!r}")
        for key in ("num_workers", "seed", "data_seed"):
            v = getattr(self, key)
            if not isinstance(v, int) or v < 0:
                raise ConfigError(f"{key} must be a non-negative integer, got {v!r}")
        for key in ("synthetic_classes", "synthetic_train", "synthetic_test"):
            v = getattr(self, key)
            lo = 2 if key == "synthetic_classes" else 1
            if not isinstance(v, int) or v < lo:
                raise ConfigError(f"{key} must be an integer ≥ {lo}, got {v!r}")
        if not (self.synthetic_noise >= 0 and math.isfinite(self.synthetic_noise)):
            raise ConfigError(f"synthetic_noise must be ≥ 0, got {self.synthetic_noise}")


@dataclass
class Datasets:
    """The loaded splits.

    ``scoring`` is the training set with the *same augmenting transform* (the official code
    scores importance on augmented training batches); it is the same object as ``train``.
    ``val`` is ``None`` unless ``val_fraction > 0``. Items are ``(image, label)`` with
    ``image`` a normalised float tensor of ``input_shape``.
    """

    train: ImageSubset
    val: ImageSubset | None
    test: ImageSubset
    scoring: ImageSubset
    num_classes: int
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    spec: DataSpec = field(repr=False)


#: name -> builder(spec) -> RawData (unsplit train/test sources, class names, native size).
DATASETS: dict[str, Callable[[DataSpec], RawData]] = {}


def register_dataset(name: str) -> Callable[[Callable[[DataSpec], RawData]], Callable]:
    """Decorator: make ``builder(spec) -> RawData`` loadable as ``DataSpec(name=name)``."""

    def deco(fn: Callable[[DataSpec], RawData]) -> Callable[[DataSpec], RawData]:
        if name in DATASETS:
            raise ConfigError(f"dataset {name!r} is already registered")
        DATASETS[name] = fn
        return fn

    return deco
