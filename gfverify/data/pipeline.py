"""Per-image transforms of the torchvision path (the official code's pipeline).

train: [EnsureSize] → RandomCrop(s, padding=p) → RandomHorizontalFlip(0.5) → ToTensor →
Normalize(mean, std);  test: [EnsureSize] → ToTensor → Normalize(mean, std).

RandomCrop pads with zeros *before* normalisation, so a padded pixel becomes (0 − mean)/std
(−1 for the official mean = std = 0.5). The crop offset (dy, dx) is uniform on {0..2p}², the
flip a fair coin, and ToTensor maps uint8 v to v/255 in float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torchvision.transforms as T
from PIL import Image

Triple = tuple[float, float, float]

#: Per-channel (mean, std). "half" is the official code's choice (not the data statistics).
NORMALIZATIONS: dict[str, tuple[Triple, Triple]] = {
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def normalization(normalize: str, dataset: str) -> tuple[Triple, Triple]:
    """(mean, std) for ``DataSpec.normalize``: "half", or "cifar" = the CIFAR statistics
    (CIFAR-100's for "cifar100", CIFAR-10's for every other dataset)."""
    if normalize == "half":
        return NORMALIZATIONS["half"]
    return NORMALIZATIONS["cifar100" if dataset == "cifar100" else "cifar10"]


def default_pad(size: int) -> int:
    """Crop padding p = max(1, s // 8): CIFAR's 4 px at s = 32, 8 px for Tiny-ImageNet's 64."""
    return max(1, size // 8)


class EnsureSize:
    """Identity on an s×s PIL image; otherwise Resize(s) (shorter side) then CenterCrop(s)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._resize = T.Compose([T.Resize(size), T.CenterCrop(size)])

    def __call__(self, img: Image.Image) -> Image.Image:
        if img.size == (self.size, self.size):
            return img
        return self._resize(img)

    def __repr__(self) -> str:
        return f"EnsureSize({self.size})"


@dataclass(frozen=True)
class ImagePipeline:
    """Image side ``size``, crop padding ``pad``, whether training images are augmented, and the
    per-channel normalisation x ↦ (x − mean)/std. Shared by both loader paths."""

    size: int
    pad: int
    augment: bool
    mean: Triple
    std: Triple

    def transform(self, train: bool) -> Callable[[Image.Image], object]:
        """The torchvision transform of a PIL image (train → augmented if ``augment``)."""
        steps: list[Callable] = [EnsureSize(self.size)]
        if train and self.augment:
            steps += [T.RandomCrop(self.size, padding=self.pad), T.RandomHorizontalFlip()]
        steps += [T.ToTensor(), T.Normalize(self.mean, self.std)]
        return T.Compose(steps)
