"""Per-image transforms of the torchvision path (the official code's pipeline).

train: [EnsureSize] → RandomCrop(s, padding=p) → RandomHorizontalFlip(0.5) → ToTensor →
Normalize(mean, std);  test: [EnsureSize] → ToTensor → Normalize(mean, std). The flip is left
out for datasets whose labels a mirror image changes (MNIST digits).

RandomCrop pads with zeros *before* normalisation, so a padded pixel becomes (0 − mean)/std
(−1 for the official mean = std = 0.5). The crop offset (dy, dx) is uniform on {0..2p}², the
flip a fair coin, and ToTensor maps uint8 v to v/255 in float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torchvision.transforms as T
from PIL import Image

#: Per-channel values (3 for RGB, 1 for greyscale).
Triple = tuple[float, ...]

#: Per-channel (mean, std). "half" is the official code's choice (not the data statistics).
NORMALIZATIONS: dict[str, tuple[Triple, Triple]] = {
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def normalization(normalize: str, dataset: str, channels: int = 3) -> tuple[Triple, Triple]:
    """(mean, std) for ``DataSpec.normalize``: "half", or "cifar" = the CIFAR statistics
    (CIFAR-100's for "cifar100", CIFAR-10's for every other dataset). ``channels=1`` gives the
    one-channel "half" pair (0.5,), (0.5,); greyscale datasets take their "cifar" statistics
    from their training split instead (:func:`channel_statistics`)."""
    if normalize == "half":
        mean, std = NORMALIZATIONS["half"]
        return mean[:channels], std[:channels]
    return NORMALIZATIONS["cifar100" if dataset == "cifar100" else "cifar10"]


def channel_statistics(images: np.ndarray) -> tuple[Triple, Triple]:
    """Per-channel mean and (population) std of uint8 images (N, H, W, C) on the ToTensor
    scale v/255: mean_c = Σ v/(255·n), std_c = sqrt(Σ (v/255 − mean_c)²/n) over all n = N·H·W
    pixels of channel c (float64 accumulation)."""
    n, c = images.shape[0] * images.shape[1] * images.shape[2], images.shape[-1]
    flat = images.reshape(n, c)
    total = np.zeros(c)
    total_sq = np.zeros(c)
    for start in range(0, n, 1 << 22):  # chunks keep the float64 copy small
        chunk = flat[start : start + (1 << 22)].astype(np.float64) / 255.0
        total += chunk.sum(axis=0)
        total_sq += np.square(chunk).sum(axis=0)
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


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
    """Image side ``size``, crop padding ``pad``, whether training images are augmented, the
    per-channel normalisation x ↦ (x − mean)/std, and whether augmentation mirrors images
    (``flip``). Shared by both loader paths."""

    size: int
    pad: int
    augment: bool
    mean: Triple
    std: Triple
    flip: bool = True

    def transform(self, train: bool) -> Callable[[Image.Image], object]:
        """The torchvision transform of a PIL image (train → augmented if ``augment``)."""
        steps: list[Callable] = [EnsureSize(self.size)]
        if train and self.augment:
            steps.append(T.RandomCrop(self.size, padding=self.pad))
            if self.flip:
                steps.append(T.RandomHorizontalFlip())
        steps += [T.ToTensor(), T.Normalize(self.mean, self.std)]
        return T.Compose(steps)
