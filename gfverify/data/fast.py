"""Fast path: the whole split as one uint8 tensor on the device, augmented a batch at a time.

Per epoch e (seed S, stream k): order = :func:`~gfverify.data.loaders.epoch_order` (the same
permutation as the torchvision path), and for the item at position j an offset
(dy_j, dx_j) ~ U{0..2p}² and a flip f_j ~ Bernoulli(½), drawn on the device from a generator
seeded by derive_seed(S, k, e, 1). A batch x (uint8, B×C×s×s) becomes

    out[b, c, i, j] = P[b, c, dy_b + i, dx_b + (s−1−j if f_b else j)],   P = zero-pad(x, p)

(RandomCrop(s, padding=p) then RandomHorizontalFlip, as torchvision; with ``flip=False``,
for datasets a mirror changes, f_j is still drawn, so the offsets stay the same, but unused), then
(out/255 − mean)/std with the same float32 operations as ToTensor + Normalize, so with no
shift and no flip both paths give bit-identical tensors.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from gfverify.data.loaders import STREAM_TRAIN, derive_seed, epoch_order
from gfverify.data.sources import ImageSubset
from gfverify.errors import ConfigError, DataError


def crop_flip(padded: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, size: int) -> Tensor:
    """Per-sample crops out[b] = padded[b, :, dy_b:dy_b+s, dx_b:dx_b+s], mirrored left-right
    where ``flip[b]``; ``padded`` is (B, C, H', W'), the result (B, C, s, s). One ``gather``
    over the flattened H'×W' plane with index (dy_b + i)·W' + dx_b + (s−1−j if flip_b else j)."""
    b, c, hp, wp = padded.shape
    ar = torch.arange(size, device=padded.device)
    rows = dy[:, None] + ar
    cols = dx[:, None] + torch.where(flip[:, None], size - 1 - ar, ar)
    flat = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, size * size)
    out = padded.reshape(b, c, hp * wp).gather(2, flat.expand(b, c, size * size))
    return out.view(b, c, size, size)


def normalize_uint8(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(x/255 − mean)/std in float32: the same operations, in the same order, as ToTensor then
    Normalize (so the results are bit-identical)."""
    return x.to(torch.float32, copy=True).div_(255).sub_(mean).div_(std)


class TensorAugmentLoader:
    """Batches (x, y) on ``device`` from uint8 ``images`` (N, C, s, s) and ``labels`` (N,).

    ``augment`` → random zero-padded crop (padding ``pad``) and, if ``flip``, a horizontal
    flip per sample; then normalisation by ``mean``/``std``. ``epoch_loader(e)`` is a pure
    function of (seed, stream, e) on a given device type.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor | Sequence[int],
        batch_size: int,
        *,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        augment: bool = True,
        pad: int = 4,
        flip: bool = True,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        stream: int = STREAM_TRAIN,
        device: torch.device | str | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError(f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}")
        if images.shape[2] != images.shape[3]:
            raise DataError(f"images must be square, got {tuple(images.shape[2:])}")
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.shape != (images.shape[0],):
            raise DataError(f"{images.shape[0]} images but labels of shape {tuple(labels.shape)}")
        if batch_size < 1 or pad < 0:
            raise ConfigError(f"need batch_size ≥ 1 and pad ≥ 0, got {batch_size}, {pad}")
        device = torch.device(device) if device is not None else images.device
        self.images = images.to(device)
        self.labels = labels.to(device)
        c = images.shape[1]
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, c, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, c, 1, 1)
        self.batch_size, self.augment, self.pad, self.flip = batch_size, augment, pad, flip
        self.shuffle, self.drop_last, self.seed, self.stream = shuffle, drop_last, seed, stream
        self.device = device
        self.epoch = 0

    @classmethod
    def from_dataset(
        cls,
        dataset: ImageSubset,
        batch_size: int,
        *,
        images: Tensor | None = None,
        **kwargs,
    ) -> TensorAugmentLoader:
        """Wrap an :class:`ImageSubset` with its pipeline's padding, augmentation and
        normalisation (``images`` = its ``uint8_images()`` if already computed)."""
        pipe = dataset.pipeline
        return cls(
            dataset.uint8_images() if images is None else images,
            torch.from_numpy(dataset.targets),
            batch_size,
            mean=pipe.mean,
            std=pipe.std,
            augment=dataset.augmenting,
            pad=pipe.pad,
            flip=pipe.flip,
            **kwargs,
        )

    @property
    def num_samples(self) -> int:
        return self.images.shape[0]

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def augment_params(self, epoch: int) -> tuple[Tensor, Tensor, Tensor]:
        """(dy, dx, flip) for every position of epoch ``epoch``, each of shape (N,); flip is
        all False when ``self.flip`` is off (drawn all the same, so dy, dx do not change)."""
        n, p = self.num_samples, self.pad
        g = torch.Generator(device=self.device)
        g.manual_seed(derive_seed(self.seed, self.stream, epoch, 1))
        kw = {"generator": g, "device": self.device}
        dy = torch.randint(0, 2 * p + 1, (n,), **kw)
        dx = torch.randint(0, 2 * p + 1, (n,), **kw)
        flip = torch.rand(n, **kw) < 0.5
        if not self.flip:
            flip = torch.zeros_like(flip)
        return dy, dx, flip

    def epoch_loader(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The batches of epoch ``epoch``."""
        order = epoch_order(self.num_samples, self.seed, self.stream, epoch, self.shuffle)
        order = order.to(self.device)
        params = self.augment_params(epoch) if self.augment else None
        size, p = self.images.shape[-1], self.pad
        for k in range(len(self)):
            pos = slice(k * self.batch_size, (k + 1) * self.batch_size)
            idx = order[pos]
            x = self.images.index_select(0, idx)
            if params is not None:
                dy, dx, flip = (t[pos] for t in params)
                x = crop_flip(F.pad(x, (p, p, p, p)), dy, dx, flip, size)
            yield normalize_uint8(x, self.mean, self.std), self.labels.index_select(0, idx)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.epoch_loader(self.epoch)
