"""Tests of the greyscale idx datasets (fashion_mnist, mnist) and 1-channel paper models.

Every test writes its own idx files; only ``test_debian_fashion_mnist_end_to_end`` reads the
real Debian files, and it is skipped (saying why) where dataset-fashion-mnist is not installed.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

from gfverify.data import DataSpec, grey, load_datasets, make_loaders
from gfverify.data.grey import IDX_FILES, read_idx
from gfverify.data.pipeline import channel_statistics
from gfverify.errors import DataError, ModelError
from gfverify.models import build_model

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    """An idx file of uint8 ``array``: magic 0x0000 08 ND, ND big-endian sizes, data."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path = path.with_name(path.name + ".gz") if gz else path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_idx_folder(
    folder: Path, n_train: int = 60, n_test: int = 20, seed: int = 0, gz: bool = True
) -> dict[str, np.ndarray]:
    """The four idx files with random 28×28 images and balanced labels; returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.permutation(np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.permutation(np.arange(n_test) % 10).astype(np.uint8),
    }
    for key, stem in IDX_FILES.items():
        write_idx(folder / stem, arrays[key], gz)
    return arrays


@pytest.fixture(autouse=True)
def no_system_datasets(tmp_path, monkeypatch):
    """Keep the installed Debian folder out of every search except where a test restores it."""
    monkeypatch.setattr(grey, "DEBIAN_DATASETS", tmp_path / "no-debian")


def padded(img: np.ndarray) -> np.ndarray:
    out = np.zeros((32, 32), dtype=np.uint8)
    out[2:30, 2:30] = img
    return out


# --------------------------------------------------------------------------- idx files


@settings(max_examples=15, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    gz=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_read_idx_round_trips_and_matches_torchvision(tmp_path_factory, shape, gz, seed):
    arr = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    path = write_idx(tmp_path_factory.mktemp("idx") / "a-idx", arr, gz)
    got = read_idx(path)
    np.testing.assert_array_equal(got, arr)
    if not gz:  # torchvision's own reader takes uncompressed files
        np.testing.assert_array_equal(read_sn3_pascalvincent_tensor(str(path)).numpy(), arr)


def test_read_idx_rejects_bad_files(tmp_path):
    bad_magic = tmp_path / "m"
    bad_magic.write_bytes(b"\x01\x02\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(DataError, match="not an idx file"):
        read_idx(bad_magic)
    short = tmp_path / "s"
    short.write_bytes(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + b"abc")
    with pytest.raises(DataError, match=r"shape \(5,\).*3 bytes"):
        read_idx(short)
    wrong_type = tmp_path / "t"
    wrong_type.write_bytes(bytes([0, 0, 0x0D, 1]) + (1).to_bytes(4, "big") + b"abcd")
    with pytest.raises(DataError, match="not uint8"):
        read_idx(wrong_type)
    broken_gz = tmp_path / "b.gz"
    broken_gz.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read idx file"):
        read_idx(broken_gz)


# ---------------------------------------------------------------------------- datasets


@pytest.mark.parametrize(
    ("name", "layout", "gz"),
    [
        ("fashion_mnist", "fashion-mnist", True),
        ("fashion_mnist", "FashionMNIST/raw", False),
        ("fashion_mnist", ".", True),
        ("mnist", "mnist", False),
        ("mnist", "MNIST/raw", True),
    ],
)
def test_loads_exact_padded_pixels_from_each_layout(tmp_path, name, layout, gz):
    arrays = write_idx_folder(tmp_path / layout, n_train=40, n_test=12, seed=5, gz=gz)
    data = load_datasets(DataSpec(name=name, root=str(tmp_path)))
    assert data.input_shape == (1, 32, 32) and data.num_classes == 10
    assert len(data.train) == 40 and len(data.test) == 12 and data.val is None
    for k in range(12):
        x, y = data.test[k]
        assert x.shape == (1, 32, 32) and y == arrays["test_labels"][k]
        want = (torch.from_numpy(padded(arrays["test_images"][k])).float() / 255 - 0.5) / 0.5
        assert torch.equal(x[0], want)
    np.testing.assert_array_equal(data.train.targets, arrays["train_labels"])
    if name == "fashion_mnist":
        assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"


def test_dataset_statistics_come_from_the_training_split_only(tmp_path):
    arrays = write_idx_folder(tmp_path / "fashion-mnist", n_train=50, n_test=10, seed=2)
    spec = DataSpec(name="fashion_mnist", root=str(tmp_path), normalize="cifar", val_fraction=0.2)
    data = load_datasets(spec)
    idx = data.train.indices
    imgs = np.stack([padded(a) for a in arrays["train_images"][idx]]).astype(np.float64) / 255
    (mean,), (std,) = data.train.pipeline.mean, data.train.pipeline.std
    assert mean == pytest.approx(imgs.mean(), rel=1e-12)
    assert std == pytest.approx(imgs.std(), rel=1e-12)
    # The training split, normalised by its own statistics, has mean 0 and std 1 exactly.
    plain = load_datasets(DataSpec(**{**spec.__dict__, "augment": False}))
    xs = torch.stack([plain.train[k][0] for k in range(len(plain.train))]).double()
    assert abs(float(xs.mean())) < 1e-6 and float(xs.std(unbiased=False)) == pytest.approx(1, 1e-6)
    # Changing held-out and test pixels leaves the statistics alone.
    val_idx = data.val.indices
    arrays["train_images"][val_idx] = 255 - arrays["train_images"][val_idx]
    for key in ("train_images", "test_images"):
        arr = arrays[key] if key == "train_images" else np.zeros_like(arrays[key])
        write_idx(tmp_path / "fashion-mnist" / IDX_FILES[key], arr, gz=True)
    again = load_datasets(spec)
    assert again.train.pipeline.mean == data.train.pipeline.mean
    assert again.train.pipeline.std == data.train.pipeline.std


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 6), c=st.sampled_from([1, 3]))
def test_channel_statistics_match_numpy(seed, n, c):
    imgs = np.random.default_rng(seed).integers(0, 256, (n, 5, 7, c), dtype=np.uint8)
    mean, std = channel_statistics(imgs)
    x = imgs.astype(np.float64) / 255
    np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(std, x.std(axis=(0, 1, 2)), rtol=1e-9)


def _left_bright_folder(folder: Path, n: int = 64) -> None:
    """Images bright in columns 0..11 of the 28 and dark elsewhere: a mirror puts the light
    on the right, which a crop shift of ≤ 4 px cannot do."""
    img = np.zeros((28, 28), dtype=np.uint8)
    img[:, :12] = 255
    images = np.repeat(img[None], n, axis=0)
    labels = (np.arange(n) % 10).astype(np.uint8)
    for key, arr in (("train", images), ("test", images[:10])):
        write_idx(folder / IDX_FILES[f"{key}_images"], arr, gz=False)
        write_idx(folder / IDX_FILES[f"{key}_labels"], labels[: len(arr)], gz=False)


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize(("name", "flips"), [("fashion_mnist", True), ("mnist", False)])
def test_flip_augmentation_only_where_labels_survive(tmp_path, name, flips, fast):
    _left_bright_folder(tmp_path / name.replace("_", "-"))
    data = load_datasets(DataSpec(name=name, root=str(tmp_path)))
    loader = make_loaders(data, batch_size=64, fast_path=fast).train
    mirrored = 0
    for epoch in range(2):
        for x, _ in loader.epoch_loader(epoch):
            assert x.shape[1:] == (1, 32, 32)
            left, right = x[:, 0, :, :16].mean(dim=(1, 2)), x[:, 0, :, 16:].mean(dim=(1, 2))
            mirrored += int((right > left).sum())
    assert (mirrored > 0) is flips
    # Random crops still shift the images in both datasets.
    xs = torch.cat([x for x, _ in loader.epoch_loader(0)])
    assert len({tuple(row.flatten().tolist()) for row in xs[:, 0, 16]}) > 1


def test_missing_folder_is_one_line_naming_package_and_download(tmp_path):
    with pytest.raises(DataError) as err:
        load_datasets(DataSpec(name="fashion_mnist", root=str(tmp_path / "nowhere")))
    msg = str(err.value)
    assert "\n" not in msg and "dataset-fashion-mnist" in msg and "--download" in msg
    assert str(tmp_path / "nowhere" / "fashion-mnist") in msg
    with pytest.raises(DataError, match="--download") as err:
        load_datasets(DataSpec(name="mnist", root=str(tmp_path)))
    assert "\n" not in str(err.value)


def test_incomplete_folder_is_not_found(tmp_path):
    write_idx_folder(tmp_path / "fashion-mnist")
    (tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="idx files not found"):
        load_datasets(DataSpec(name="fashion_mnist", root=str(tmp_path)))


def test_mismatched_counts_are_a_data_error(tmp_path):
    write_idx_folder(tmp_path / "fashion-mnist", n_train=30)
    write_idx(tmp_path / "fashion-mnist" / IDX_FILES["train_labels"], np.zeros(29, np.uint8), True)
    with pytest.raises(DataError, match="30 images but labels"):
        load_datasets(DataSpec(name="fashion_mnist", root=str(tmp_path)))


def test_installed_debian_folder_is_the_fallback(tmp_path, monkeypatch):
    system = tmp_path / "usr-share-datasets"
    arrays = write_idx_folder(system / "fashion-mnist", n_train=20, n_test=10, seed=9)
    monkeypatch.setattr(grey, "DEBIAN_DATASETS", system)
    data = load_datasets(DataSpec(name="fashion_mnist", root=str(tmp_path / "empty")))
    np.testing.assert_array_equal(data.test.targets, arrays["test_labels"])


def test_download_uses_torchvision_and_reports_failure(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    calls = []

    class FakeFashion:
        def __init__(self, root, train=True, download=False):
            calls.append((root, train, download))
            write_idx_folder(Path(root) / "FashionMNIST" / "raw", n_train=20, n_test=10)

    monkeypatch.setattr(tvd, "FashionMNIST", FakeFashion)
    data = load_datasets(DataSpec(name="fashion_mnist", root=str(tmp_path), download=True))
    assert calls == [(str(tmp_path.resolve()), True, True)] and len(data.test) == 10

    class Offline:
        def __init__(self, root, train=True, download=False):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nno network")

    monkeypatch.setattr(tvd, "MNIST", Offline)
    with pytest.raises(DataError, match="download into .* failed") as err:
        load_datasets(DataSpec(name="mnist", root=str(tmp_path / "m"), download=True))
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------ models


@pytest.mark.parametrize(("name", "stem"), [("vgg13", 8), ("mobilenet_v1", 4), ("resnet56", 2)])
def test_paper_models_take_one_input_channel(name, stem):
    grey_net = build_model(name, width_mult=0.125, in_channels=1)
    rgb_net = build_model(name, width_mult=0.125)
    first = next(m for m in grey_net.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 1 and first.out_channels == stem
    n_grey = sum(p.numel() for p in grey_net.parameters())
    n_rgb = sum(p.numel() for p in rgb_net.parameters())
    assert n_rgb - n_grey == 2 * 9 * stem  # two fewer 3×3 input planes of the stem conv
    assert grey_net(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(ModelError, match="in_channels"):
        build_model(name, width_mult=0.125, in_channels=0)


# ---------------------------------------------------------------- the real Debian files


def test_debian_fashion_mnist_end_to_end(monkeypatch):
    if not (DEBIAN_FASHION / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(
            f"dataset-fashion-mnist is not installed ({DEBIAN_FASHION} missing): "
            "sudo apt-get install dataset-fashion-mnist to run this test"
        )
    monkeypatch.setattr(grey, "DEBIAN_DATASETS", DEBIAN_FASHION.parent)
    spec = DataSpec(name="fashion_mnist", root=str(DEBIAN_FASHION.parent), normalize="cifar")
    data = load_datasets(spec)
    assert len(data.train) == 60000 and len(data.test) == 10000
    assert np.bincount(data.train.targets).tolist() == [6000] * 10
    assert np.bincount(data.test.targets).tolist() == [1000] * 10
    assert data.test.targets[:5].tolist() == [9, 2, 1, 1, 6]  # Ankle boot, Pullover, ...
    (mean,), (std,) = data.train.pipeline.mean, data.train.pipeline.std
    # 28×28 pixel mean 0.2860 (std 0.3530), diluted by the zero border: 28²/32² are image.
    assert mean == pytest.approx(0.2860 * 28**2 / 32**2, abs=1e-3)
    assert 0.30 < std < 0.36
    loaders = make_loaders(data, batch_size=32, fast_path=True)
    x, y = next(iter(loaders.train.epoch_loader(0)))
    torch.manual_seed(0)
    model = build_model("vgg13", width_mult=0.125, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(model(x) / 5, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
