"""Per-epoch deterministic loaders (torchvision path) and :func:`make_loaders`.

Epoch e of a loader with seed S and stream k visits the items in the order
``randperm(N, generator=Generator().manual_seed(derive_seed(S, k, e)))`` (or 0..N−1 without
shuffling), and the random crop/flip of the item at position j is drawn from the CPU RNG
re-seeded with the j-th of N seeds drawn from that same generator. So epoch e's batches are a
pure function of (S, k, e): a resumed run sees the same data, whatever the number of workers,
and iterating never touches the caller's global RNG state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from gfverify.data.spec import Datasets
from gfverify.errors import ConfigError

#: Streams separate the random draws of loaders sharing one seed.
STREAM_TRAIN, STREAM_SCORING, STREAM_EVAL = 1, 2, 3


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that is a pure function of the non-negative integer ``keys``
    (numpy ``SeedSequence(keys)``; platform independent)."""
    a, b = np.random.SeedSequence(list(keys)).generate_state(2, dtype=np.uint32)
    return ((int(a) << 32) | int(b)) & (2**63 - 1)


def epoch_generator(seed: int, stream: int, epoch: int) -> torch.Generator:
    """The CPU generator all of epoch ``epoch``'s draws of one loader come from."""
    return torch.Generator().manual_seed(derive_seed(seed, stream, epoch))


def epoch_order(n: int, seed: int, stream: int, epoch: int, shuffle: bool = True) -> Tensor:
    """The item order of an epoch: a seeded permutation of range(n) (identity if not shuffled).
    Both loader paths use it, so they visit items in the same order."""
    if not shuffle:
        return torch.arange(n)
    return torch.randperm(n, generator=epoch_generator(seed, stream, epoch))


class EpochLoader(Protocol):
    """What training code iterates: ``epoch_loader(e)`` → batches (x, y) of epoch e."""

    def epoch_loader(self, epoch: int) -> Iterable[tuple[Tensor, Tensor]]: ...

    def set_epoch(self, epoch: int) -> None: ...

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]: ...

    def __len__(self) -> int: ...


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, item_seed)`` in the order of :func:`epoch_order`; ``set_epoch`` picks
    the epoch. The item seeds come after the permutation from the same generator."""

    def __init__(self, n: int, seed: int, stream: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.stream, self.shuffle = n, seed, stream, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = epoch_generator(self.seed, self.stream, self.epoch)
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        item_seeds = torch.randint(0, 2**62, (self.n,), generator=g)
        return zip(order.tolist(), item_seeds.tolist())


class SeededItems(Dataset):
    """``dataset[index]`` computed with the CPU RNG seeded by ``item_seed``; the caller's RNG
    state is restored afterwards. Keys are ``(index, item_seed)`` pairs from
    :class:`EpochSampler`."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        index, item_seed = key
        state = torch.get_rng_state()
        torch.default_generator.manual_seed(item_seed)
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(state)


class TorchEpochLoader:
    """A torch ``DataLoader`` per epoch over a map-style dataset, ordered and augmented as a
    pure function of (seed, stream, epoch). Yields CPU tensors."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        seed: int = 0,
        stream: int = STREAM_TRAIN,
        shuffle: bool = True,
        drop_last: bool = False,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be ≥ 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size, self.seed, self.stream = batch_size, seed, stream
        self.shuffle, self.drop_last = shuffle, drop_last
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_loader(self, epoch: int) -> DataLoader:
        """The DataLoader of epoch ``epoch`` (fresh each call, same batches each call)."""
        sampler = EpochSampler(self.num_samples, self.seed, self.stream, self.shuffle)
        sampler.set_epoch(epoch)
        return DataLoader(
            SeededItems(self.dataset),
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            drop_last=self.drop_last,
            pin_memory=self.pin_memory,
            # Worker base seeds come from here, not from the caller's global RNG.
            generator=torch.Generator().manual_seed(derive_seed(self.seed, self.stream, epoch, 0)),
        )

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return iter(self.epoch_loader(self.epoch))


@dataclass
class Loaders:
    """Loaders of one run. ``train``/``scoring`` shuffle and augment (separate streams);
    ``val``/``test`` are in index order with the test transform."""

    train: EpochLoader
    scoring: EpochLoader
    val: EpochLoader | None
    test: EpochLoader


def make_loaders(
    datasets: Datasets,
    batch_size: int = 128,
    seed: int | None = None,
    *,
    eval_batch_size: int | None = None,
    fast_path: bool | None = None,
    num_workers: int | None = None,
    device: torch.device | str = "cpu",
    drop_last: bool = False,
) -> Loaders:
    """Loaders for ``datasets`` (official batch size 128 for train and test).

    ``seed``, ``fast_path`` and ``num_workers`` default to the datasets' ``DataSpec``.
    The fast path (:class:`~gfverify.data.fast.TensorAugmentLoader`) keeps uint8 images on
    ``device`` and yields batches there; the torchvision path yields CPU tensors (pinned when
    ``device`` is CUDA).
    """
    from gfverify.data.fast import TensorAugmentLoader

    spec = datasets.spec
    seed = spec.seed if seed is None else seed
    fast = spec.fast_path if fast_path is None else fast_path
    workers = spec.num_workers if num_workers is None else num_workers
    eval_bs = eval_batch_size or batch_size
    device = torch.device(device)

    uint8_cache: dict[int, torch.Tensor] = {}  # train and scoring share one device copy

    def build(ds, bs: int, stream: int, shuffle: bool, drop: bool) -> EpochLoader:
        if fast:
            if id(ds) not in uint8_cache:
                uint8_cache[id(ds)] = ds.uint8_images().to(device)
            return TensorAugmentLoader.from_dataset(
                ds,
                bs,
                images=uint8_cache[id(ds)],
                seed=seed,
                stream=stream,
                shuffle=shuffle,
                drop_last=drop,
                device=device,
            )
        return TorchEpochLoader(
            ds,
            bs,
            seed=seed,
            stream=stream,
            shuffle=shuffle,
            drop_last=drop,
            num_workers=workers,
            pin_memory=device.type == "cuda",
        )

    val = None if datasets.val is None else build(datasets.val, eval_bs, STREAM_EVAL, False, False)
    return Loaders(
        train=build(datasets.train, batch_size, STREAM_TRAIN, True, drop_last),
        scoring=build(datasets.scoring, batch_size, STREAM_SCORING, True, False),
        val=val,
        test=build(datasets.test, eval_bs, STREAM_EVAL, False, False),
    )
