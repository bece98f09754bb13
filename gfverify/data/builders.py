"""The registered datasets and :func:`load_datasets`.

- cifar10 / cifar100: torchvision's ``CIFAR10``/``CIFAR100`` (``download=spec.download``),
  32×32, 10/100 classes.
- imagefolder: ``ImageFolder(ROOT/train)``; the test split ``ROOT/test`` is read with the
  train split's class→index map. Native side = the first training image's shorter side.
- tinyimagenet: ``ROOT/tiny-imagenet-200`` (or ROOT itself): ``train/`` as an ImageFolder,
  evaluated on the labelled ``val/`` split of the official archive (``val_annotations.txt``),
  or on ``test/`` when that is a class-folder tree. 64×64, crop padding 8 (= 64 // 8, the
  CIFAR 4/32 ratio).
- digits: scikit-learn's bundled ``load_digits`` (1797 8×8 grey images, 0..16), scaled to
  uint8 (v·255/16), upsampled **bilinearly** (align_corners=False) to s×s (s = 32 unless
  ``image_size``), copied to 3 channels; seeded (``data_seed``) split 1440 train / 357 test.
  It then goes through the same PIL pipeline as CIFAR.
- synthetic: ``synthetic_classes`` class-mean images μ_c (3×4×4 standard normals, bilinearly
  upsampled to s×s, scaled to unit pixel std); image = μ_y + σ·ε, ε ~ N(0, I), stored as
  uint8 clip(round(127.5 + 42.5·x)). Labels balanced (i mod C, shuffled). Seeded by
  ``data_seed``; train and test are independent draws.
- fashion_mnist / mnist: idx files (gzipped or not), 1×28×28 zero-padded to 1×32×32, see
  :mod:`gfverify.data.grey`; "cifar" normalisation = the training split's own statistics.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from gfverify.data import grey as _grey  # noqa: F401  (registers fashion_mnist, mnist)
from gfverify.data.pipeline import ImagePipeline, channel_statistics, default_pad, normalization
from gfverify.data.sources import (
    ArraySource,
    FileSource,
    ImageSubset,
    RawData,
    split_indices,
    subset_indices,
)
from gfverify.data.spec import DATASETS, Datasets, DataSpec, register_dataset
from gfverify.errors import DataError


def load_datasets(spec: DataSpec) -> Datasets:
    """Build the train / val / test / scoring splits that ``spec`` describes.

    Raises :class:`~gfverify.errors.DataError` (one line, naming the folder searched and how to
    get the data) when files are missing, corrupt or inconsistent.

    Normalisation: "half" → 0.5/0.5 per channel; "cifar" → CIFAR's statistics, except for a
    dataset with ``own_statistics`` (Fashion-MNIST, MNIST), whose mean/std are computed
    (:func:`~gfverify.data.pipeline.channel_statistics`) over the images of the training split
    actually trained on (after the validation hold-out and any subset; padding included,
    before resizing), so no held-out or test pixel enters them.
    """
    raw = DATASETS[spec.name](spec)
    size = spec.image_size or raw.image_size
    num_classes = len(raw.class_names)
    for split, src in (("train", raw.train), ("test", raw.test)):
        if len(src) == 0:
            raise DataError(f"{spec.name}: the {split} split under {spec.root} has no images")
        lo, hi = int(src.labels.min()), int(src.labels.max())
        if lo < 0 or hi >= num_classes:
            raise DataError(
                f"{spec.name}: {split} labels span {lo}..{hi} but there are {num_classes} classes"
            )
    train_idx, val_idx = split_indices(len(raw.train), spec.val_fraction, spec.seed)
    if spec.train_subset is not None:
        train_idx = subset_indices(train_idx, spec.train_subset, spec.seed)
    if spec.normalize == "cifar" and raw.own_statistics:
        mean, std = channel_statistics(raw.train.images[train_idx])
    else:
        mean, std = normalization(spec.normalize, spec.name, raw.channels)
    pipe = ImagePipeline(
        size=size, pad=default_pad(size), augment=spec.augment, mean=mean, std=std, flip=raw.hflip
    )
    train = ImageSubset(raw.train, train_idx, pipe, train=True)
    val = ImageSubset(raw.train, val_idx, pipe, train=False) if len(val_idx) else None
    test = ImageSubset(raw.test, np.arange(len(raw.test)), pipe, train=False)
    return Datasets(
        train=train,
        val=val,
        test=test,
        scoring=train,
        num_classes=num_classes,
        input_shape=(raw.channels, size, size),
        class_names=tuple(raw.class_names),
        spec=spec,
    )


# --------------------------------------------------------------------------------- CIFAR


class _UnverifiedCIFAR10(CIFAR10):
    """CIFAR10 with md5 checks disabled (``verify_md5=False``): any file of the right name."""

    train_list = [[name, None] for name, _ in CIFAR10.train_list]
    test_list = [[name, None] for name, _ in CIFAR10.test_list]
    meta = {**CIFAR10.meta, "md5": None}


class _UnverifiedCIFAR100(CIFAR100):
    """CIFAR100 with md5 checks disabled (``verify_md5=False``)."""

    train_list = [[name, None] for name, _ in CIFAR100.train_list]
    test_list = [[name, None] for name, _ in CIFAR100.test_list]
    meta = {**CIFAR100.meta, "md5": None}


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _cifar(spec: DataSpec, cls: type[CIFAR10], unverified: type[CIFAR10], title: str) -> RawData:
    root = Path(spec.root).expanduser().resolve()
    folder = root / cls.base_folder
    klass = cls if spec.verify_md5 else unverified
    try:
        train = klass(str(root), train=True, download=spec.download)
        test = klass(str(root), train=False, download=False)
    except (URLError, TimeoutError, ConnectionError) as err:
        raise DataError(
            f"{title}: download into {root} failed ({_one_line(err)}); "
            f"place {cls.base_folder} under {root} instead"
        ) from None
    except RuntimeError as err:
        if not folder.is_dir():
            raise DataError(
                f"{title} not found: searched {folder}; pass --download (DataSpec.download=True) "
                f"or place {cls.base_folder} under {root}"
            ) from None
        if not spec.verify_md5:  # the md5 check is already off: a file is simply missing
            raise DataError(
                f"{title} under {folder} is incomplete ({_one_line(err)}); "
                "re-fetch it with --download"
            ) from None
        raise DataError(
            f"{title} under {folder} is incomplete or fails torchvision's md5 check "
            f"({_one_line(err)}); re-fetch it with --download, or set verify_md5=False for a "
            "hand-made folder"
        ) from None
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as err:
        raise DataError(f"{title} under {folder} is malformed: {_one_line(err)}") from None
    return RawData(
        train=ArraySource(np.ascontiguousarray(train.data), train.targets),
        test=ArraySource(np.ascontiguousarray(test.data), test.targets),
        class_names=tuple(str(c) for c in train.classes),
        image_size=32,
    )


@register_dataset("cifar10")
def cifar10(spec: DataSpec) -> RawData:
    """CIFAR-10 via torchvision (50000/10000 images, 10 classes, 32×32)."""
    return _cifar(spec, CIFAR10, _UnverifiedCIFAR10, "CIFAR-10")


@register_dataset("cifar100")
def cifar100(spec: DataSpec) -> RawData:
    """CIFAR-100 via torchvision (50000/10000 images, 100 fine classes, 32×32)."""
    return _cifar(spec, CIFAR100, _UnverifiedCIFAR100, "CIFAR-100")


# ---------------------------------------------------------------------------- image folders


def _image_folder(train_dir: Path, what: str) -> ImageFolder:
    if not train_dir.is_dir():
        raise DataError(
            f"{what} not found: searched {train_dir}; place one sub-folder of images per class "
            f"under {train_dir}"
        )
    try:
        return ImageFolder(str(train_dir))
    except (FileNotFoundError, OSError) as err:
        msg = f"{what}: {train_dir} is not a class-folder tree: {_one_line(err)}"
        raise DataError(msg) from None


def _class_folder_samples(test_dir: Path, class_to_idx: dict[str, int], what: str) -> list:
    """Samples of a class-folder tree, labelled by the *training* split's class→index map."""
    extra = sorted(d.name for d in test_dir.iterdir() if d.is_dir() and d.name not in class_to_idx)
    if extra:
        raise DataError(f"{what}: {test_dir} has classes absent from the train split: {extra[:5]}")
    return make_dataset(str(test_dir), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)


def _native_side(source: FileSource) -> int:
    w, h = source.image(0).size
    return min(w, h)


@register_dataset("imagefolder")
def imagefolder(spec: DataSpec) -> RawData:
    """``ImageFolder(ROOT/train)`` and ``ROOT/test`` (class sub-folders, any image format)."""
    root = Path(spec.root).expanduser().resolve()
    train = _image_folder(root / "train", "image folder")
    test_dir = root / "test"
    if not test_dir.is_dir():
        raise DataError(f"image folder: no test split, searched {test_dir}; add {test_dir}")
    test = _class_folder_samples(test_dir, train.class_to_idx, "image folder")
    src = FileSource(train.samples)
    return RawData(src, FileSource(test), tuple(train.classes), _native_side(src))


@register_dataset("tinyimagenet")
def tinyimagenet(spec: DataSpec) -> RawData:
    """Tiny-ImageNet-200: ``train/`` + labelled ``val/`` (or a class-folder ``test/``), 64×64."""
    root = Path(spec.root).expanduser().resolve()
    base = root / "tiny-imagenet-200" if (root / "tiny-imagenet-200").is_dir() else root
    what = "Tiny-ImageNet"
    train = _image_folder(base / "train", what)
    annotations = base / "val" / "val_annotations.txt"
    if annotations.is_file():
        test = []
        for line in annotations.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) < 2 or parts[1] not in train.class_to_idx:
                raise DataError(f"{what}: bad line in {annotations}: {line[:60]!r}")
            test.append((str(base / "val" / "images" / parts[0]), train.class_to_idx[parts[1]]))
    elif (base / "test").is_dir() and any(
        d.name in train.class_to_idx for d in (base / "test").iterdir()
    ):
        test = _class_folder_samples(base / "test", train.class_to_idx, what)
    else:
        raise DataError(
            f"{what}: no labelled evaluation split, searched {annotations} and {base / 'test'}; "
            "unpack tiny-imagenet-200.zip under ROOT"
        )
    return RawData(FileSource(train.samples), FileSource(test), tuple(train.classes), 64)


# ------------------------------------------------------------------------ offline datasets


def _to_hwc_uint8(x: torch.Tensor, offset: float, scale: float) -> np.ndarray:
    """float (N, C, H, W) → uint8 (N, H, W, 3) as clip(round(offset + scale·x), 0, 255)."""
    u8 = (offset + scale * x).round().clamp(0, 255).to(torch.uint8)
    if u8.shape[1] == 1:
        u8 = u8.expand(-1, 3, -1, -1)
    return u8.permute(0, 2, 3, 1).contiguous().numpy()


@register_dataset("digits")
def digits(spec: DataSpec) -> RawData:
    """scikit-learn's 8×8 digits, bilinearly upsampled to 3×s×s uint8; 1440/357 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    s = spec.image_size or 32
    x = torch.from_numpy(d.images / 16.0).float()[:, None]
    x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
    images = _to_hwc_uint8(x, 0.0, 255.0)
    perm = np.random.default_rng([spec.data_seed, 0xD161]).permutation(len(images))
    tr, te = perm[:1440], perm[1440:]
    labels = d.target.astype(np.int64)
    return RawData(
        ArraySource(images[tr], labels[tr]),
        ArraySource(images[te], labels[te]),
        tuple(str(i) for i in range(10)),
        s,
    )


def _synthetic_split(
    means: torch.Tensor, n: int, noise: float, rng: np.random.Generator
) -> ArraySource:
    c = means.shape[0]
    labels = rng.permutation(np.arange(n) % c)
    out = np.empty((n, *means.shape[2:], 3), dtype=np.uint8)
    for start in range(0, n, 4096):
        y = labels[start : start + 4096]
        eps = torch.from_numpy(rng.standard_normal((len(y), *means.shape[1:]), dtype=np.float32))
        out[start : start + len(y)] = _to_hwc_uint8(means[y] + noise * eps, 127.5, 42.5)
    return ArraySource(out, labels)


@register_dataset("synthetic")
def synthetic(spec: DataSpec) -> RawData:
    """Gaussian class-mean images: x = μ_y + σ·ε, μ_c smooth (4×4 upsampled), 3×s×s uint8."""
    s = spec.image_size or 32
    rng = np.random.default_rng([spec.data_seed, 0x5E7])
    low = torch.from_numpy(rng.standard_normal((spec.synthetic_classes, 3, 4, 4))).float()
    means = F.interpolate(low, size=(s, s), mode="bilinear", align_corners=False)
    means = means / means.std(dim=(1, 2, 3), keepdim=True)
    train = _synthetic_split(means, spec.synthetic_train, spec.synthetic_noise, rng)
    test = _synthetic_split(means, spec.synthetic_test, spec.synthetic_noise, rng)
    return RawData(train, test, tuple(str(i) for i in range(spec.synthetic_classes)), s)
