"""Data layer: datasets (CIFAR-10/100, image folders, Tiny-ImageNet, Fashion-MNIST, MNIST,
digits, synthetic) and per-epoch deterministic loaders, with an on-device augmentation fast
path.

    spec = DataSpec(name="cifar10", root="data")
    data = load_datasets(spec)                 # train / val / test / scoring splits
    loaders = make_loaders(data, batch_size=128)
    for x, y in loaders.train.epoch_loader(epoch): ...

Modules: ``spec`` (DataSpec, Datasets, registry), ``pipeline`` (torchvision transforms),
``sources`` (raw images, subsets, seeded splits), ``builders`` (the datasets,
``load_datasets``), ``grey`` (idx files: Fashion-MNIST, MNIST), ``loaders`` (seeded epoch
loaders), ``fast`` (TensorAugmentLoader).
"""

from gfverify.data.builders import load_datasets
from gfverify.data.fast import TensorAugmentLoader, crop_flip, normalize_uint8
from gfverify.data.loaders import (
    STREAM_EVAL,
    STREAM_SCORING,
    STREAM_TRAIN,
    EpochLoader,
    EpochSampler,
    Loaders,
    SeededItems,
    TorchEpochLoader,
    derive_seed,
    epoch_order,
    make_loaders,
)
from gfverify.data.pipeline import NORMALIZATIONS, ImagePipeline, default_pad, normalization
from gfverify.data.sources import (
    ArraySource,
    FileSource,
    ImageSubset,
    RawData,
    split_indices,
    subset_indices,
)
from gfverify.data.spec import DATASETS, Datasets, DataSpec, register_dataset

__all__ = [
    "DATASETS",
    "NORMALIZATIONS",
    "STREAM_EVAL",
    "STREAM_SCORING",
    "STREAM_TRAIN",
    "ArraySource",
    "DataSpec",
    "Datasets",
    "EpochLoader",
    "EpochSampler",
    "FileSource",
    "ImagePipeline",
    "ImageSubset",
    "Loaders",
    "RawData",
    "SeededItems",
    "TensorAugmentLoader",
    "TorchEpochLoader",
    "crop_flip",
    "default_pad",
    "derive_seed",
    "epoch_order",
    "load_datasets",
    "make_loaders",
    "normalization",
    "normalize_uint8",
    "register_dataset",
    "split_indices",
    "subset_indices",
]
