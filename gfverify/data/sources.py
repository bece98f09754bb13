"""Raw image sources (uint8 pixels + integer labels) and the transformed views of them.

A *source* yields PIL RGB images by index; an :class:`ImageSubset` is a torch ``Dataset`` over
some of a source's indices with one transform, and can hand its raw pixels to the fast path as
one uint8 tensor (N, 3, s, s).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets.folder import default_loader

from gfverify.data.pipeline import EnsureSize, ImagePipeline
from gfverify.errors import DataError


class Source(Protocol):
    """Indexable uint8 images with integer labels."""

    labels: np.ndarray

    def __len__(self) -> int: ...

    def image(self, i: int) -> Image.Image: ...


class ArraySource:
    """Images held in memory as uint8 (N, H, W, C), C = 3 (RGB) or 1 (greyscale); ``image(i)``
    is ``Image.fromarray`` of row i (mode "RGB", or "L" for C = 1), exactly as torchvision's
    CIFAR and MNIST datasets produce their items."""

    def __init__(self, images: np.ndarray, labels: Sequence[int] | np.ndarray) -> None:
        images = np.asarray(images)
        labels = np.asarray(labels, dtype=np.int64)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise DataError(
                f"images must be uint8 (N, H, W, 3) or (N, H, W, 1), got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise DataError(f"{images.shape[0]} images but labels of shape {labels.shape}")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return int(self.images.shape[-1])

    def image(self, i: int) -> Image.Image:
        if self.images.shape[-1] == 1:
            return Image.fromarray(self.images[i, :, :, 0], mode="L")
        return Image.fromarray(self.images[i])


class FileSource:
    """Image files ``[(path, label), ...]`` decoded to RGB by torchvision's default loader."""

    def __init__(self, samples: Sequence[tuple[str, int]]) -> None:
        self.samples = list(samples)
        self.labels = np.asarray([y for _, y in self.samples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, i: int) -> Image.Image:
        return default_loader(self.samples[i][0])


@dataclass
class RawData:
    """What a dataset builder returns: unsplit train and test sources, class names, the
    native image side (used when ``DataSpec.image_size`` is None), the number of image
    ``channels`` (3 RGB, 1 greyscale), whether a horizontal flip keeps every label (``hflip``;
    False → no flip augmentation), and whether ``normalize="cifar"`` means the training
    split's own statistics (``own_statistics``) rather than CIFAR's."""

    train: Source
    test: Source
    class_names: tuple[str, ...]
    image_size: int
    channels: int = 3
    hflip: bool = True
    own_statistics: bool = False


class ImageSubset(Dataset):
    """``source`` restricted to ``indices``; item k = (transform(image(indices[k])), label).

    ``train`` selects the pipeline's training (augmenting) transform.
    """

    def __init__(
        self, source: Source, indices: np.ndarray, pipeline: ImagePipeline, train: bool
    ) -> None:
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.pipeline = pipeline
        self.train = train
        self.transform = pipeline.transform(train)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[Tensor, int]:
        i = int(self.indices[k])
        return self.transform(self.source.image(i)), int(self.source.labels[i])

    @property
    def targets(self) -> np.ndarray:
        """Labels of the subset, in item order."""
        return self.source.labels[self.indices]

    @property
    def augmenting(self) -> bool:
        """Whether items are randomly cropped and flipped."""
        return self.train and self.pipeline.augment

    def uint8_images(self) -> Tensor:
        """All images of the subset, resized to the pipeline's side s, as uint8 (N, C, s, s)."""
        s = self.pipeline.size
        src = self.source
        if isinstance(src, ArraySource) and src.images.shape[1:3] == (s, s):
            hwc = torch.from_numpy(src.images[self.indices])
        else:
            fit = EnsureSize(s)
            c = src.channels if isinstance(src, ArraySource) else 3
            hwc = torch.empty((len(self), s, s, c), dtype=torch.uint8)
            for k, i in enumerate(self.indices):
                px = np.array(fit(src.image(int(i))), dtype=np.uint8)
                hwc[k] = torch.from_numpy(px.reshape(s, s, c))
        return hwc.permute(0, 3, 1, 2).contiguous()


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) sorted index arrays: val = the first round(f·n) of a permutation seeded by
    ``(seed, "val")``; disjoint, together all of range(n), and the same on every call."""
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and not (1 <= n_val < n):
        raise DataError(f"val_fraction={val_fraction} of {n} training images leaves no split")
    perm = np.random.default_rng([seed, _STREAM_VAL]).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def subset_indices(indices: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The first ``n`` of ``indices`` after a permutation seeded by ``(seed, "subset")``,
    sorted."""
    if n > len(indices):
        raise DataError(f"train_subset={n} exceeds the {len(indices)} training images available")
    perm = np.random.default_rng([seed, _STREAM_SUBSET]).permutation(len(indices))
    return np.sort(np.asarray(indices)[perm[:n]])


_STREAM_VAL = 0x7A1
_STREAM_SUBSET = 0x5B5
