"""Greyscale 28×28 idx datasets: Fashion-MNIST and MNIST.

Files: the four idx files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each gzipped (``.gz``) or not. For
``data.root`` = R they are searched, in order, in

- fashion_mnist: ``R/fashion-mnist`` (the Debian package's folder name), ``R/FashionMNIST/raw``
  (torchvision's layout, what ``--download`` writes), ``R`` itself, then the Debian package's
  install folder ``/usr/share/datasets/fashion-mnist``;
- mnist: ``R/mnist``, ``R/MNIST/raw``, ``R``, ``/usr/share/datasets/mnist``.

The first folder holding all four files wins. ``download=True`` runs torchvision's
``FashionMNIST``/``MNIST(R, download=True)`` first (needs a network), which writes
``R/FashionMNIST/raw``.

An idx file is: 4-byte big-endian magic ``0x0000 TT ND`` (TT = 0x08 for uint8, ND = number of
dimensions), ND big-endian uint32 sizes, then the row-major data. Images are (N, 28, 28) uint8,
labels (N,) uint8 in 0..9.

Images are zero-padded by 2 pixels on each side to 32×32 (0 is the background of both
datasets), so the paper's CIFAR networks keep their geometry, and have **one** channel.
Horizontal flips keep Fashion-MNIST's clothing classes but change digits, so MNIST is marked
``hflip=False`` (no flip augmentation). ``normalize="cifar"`` (config ``"dataset"``) uses the
training split's own pixel mean/std (see :func:`gfverify.data.builders.load_datasets`).
"""

from __future__ import annotations

import gzip
from pathlib import Path
from urllib.error import URLError

import numpy as np

from gfverify.data.sources import ArraySource, RawData
from gfverify.data.spec import DataSpec, register_dataset
from gfverify.errors import DataError

#: The idx file stems of both datasets (identical names; the folder tells them apart).
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

#: Debian's install folder for its dataset packages.
DEBIAN_DATASETS = Path("/usr/share/datasets")

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: Side of the padded images (28 + 2·2).
PADDED_SIDE = 32


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in idx file ``path`` (gzip-compressed when its name ends in ``.gz``).

    Raises :class:`DataError` naming the file when it is truncated, not uint8, or not idx.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read idx file {path}: {' '.join(str(err).split())}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path} is not an idx file (bad magic number)")
    dtype, ndim = data[2], data[3]
    if dtype != 0x08:
        raise DataError(f"{path}: idx type 0x{dtype:02x} is not uint8 (0x08)")
    header = 4 + 4 * ndim
    if ndim < 1 or len(data) < header:
        raise DataError(f"{path}: idx header is truncated ({ndim} dimensions)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape))
    if len(data) - header != count:
        raise DataError(
            f"{path}: idx header says shape {shape} ({count} bytes) but {len(data) - header} "
            "bytes follow"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _file_in(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def candidate_folders(root: str | Path, name: str) -> list[Path]:
    """Folders searched for dataset ``name`` ("fashion_mnist" or "mnist"), in order."""
    root = Path(root).expanduser().resolve()
    debian, tv = _NAMES[name]
    return [root / debian, root / tv / "raw", root, DEBIAN_DATASETS / debian]


def find_idx_files(root: str | Path, name: str) -> dict[str, Path]:
    """The four idx files of ``name`` from the first candidate folder holding all four."""
    searched = candidate_folders(root, name)
    for folder in searched:
        files = {k: _file_in(folder, stem) for k, stem in IDX_FILES.items()}
        if all(files.values()):
            return files  # type: ignore[return-value]
    where = ", ".join(str(p) for p in dict.fromkeys(searched))
    raise DataError(f"{name} idx files not found: searched {where}; {_HOW_TO_GET[name]}")


def _download(spec: DataSpec) -> None:
    from torchvision.datasets import MNIST, FashionMNIST

    cls = FashionMNIST if spec.name == "fashion_mnist" else MNIST
    root = Path(spec.root).expanduser().resolve()
    try:
        cls(str(root), train=True, download=True)
    except (URLError, TimeoutError, ConnectionError, RuntimeError, OSError) as err:
        raise DataError(
            f"{spec.name}: download into {root} failed ({' '.join(str(err).split())}); "
            f"place the four idx files under {root / _NAMES[spec.name][0]} instead"
        ) from None


def _split(images: np.ndarray, labels: np.ndarray, what: str) -> ArraySource:
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{what}: images have shape {images.shape}, expected (N, 28, 28)")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"{what}: {images.shape[0]} images but labels of shape {labels.shape}")
    pad = (PADDED_SIDE - 28) // 2
    padded = np.zeros((images.shape[0], PADDED_SIDE, PADDED_SIDE, 1), dtype=np.uint8)
    padded[:, pad : pad + 28, pad : pad + 28, 0] = images
    return ArraySource(padded, labels.astype(np.int64))


def load_idx_dataset(spec: DataSpec, class_names: tuple[str, ...], hflip: bool) -> RawData:
    """RawData of an idx dataset: 1×32×32 uint8 (28×28 zero-padded by 2), 10 classes."""
    if spec.download:
        _download(spec)
    files = find_idx_files(spec.root, spec.name)
    arrays = {k: read_idx(p) for k, p in files.items()}
    folder = files["train_images"].parent
    train = _split(arrays["train_images"], arrays["train_labels"], f"{spec.name} in {folder}")
    test = _split(arrays["test_images"], arrays["test_labels"], f"{spec.name} in {folder}")
    return RawData(
        train=train,
        test=test,
        class_names=class_names,
        image_size=PADDED_SIDE,
        channels=1,
        hflip=hflip,
        own_statistics=True,
    )


_NAMES = {"fashion_mnist": ("fashion-mnist", "FashionMNIST"), "mnist": ("mnist", "MNIST")}
_HOW_TO_GET = {
    "fashion_mnist": "install the Debian package (sudo apt-get install dataset-fashion-mnist) "
    "or pass --download (download=True, needs a network)",
    "mnist": "Debian has no MNIST package: pass --download (download=True, needs a network) "
    "or place the four idx files under ROOT/mnist",
}


@register_dataset("fashion_mnist")
def fashion_mnist(spec: DataSpec) -> RawData:
    """Fashion-MNIST (60000/10000 clothing images, 10 classes), 1×32×32, flips allowed."""
    return load_idx_dataset(spec, FASHION_CLASSES, hflip=True)


@register_dataset("mnist")
def mnist(spec: DataSpec) -> RawData:
    """MNIST (60000/10000 handwritten digits, 10 classes), 1×32×32, no horizontal flips."""
    return load_idx_dataset(spec, tuple(str(i) for i in range(10)), hflip=False)
