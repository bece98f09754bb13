"""Tests of gfverify.data: every dataset is loaded through load_datasets, as users do."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import stats

from gfverify.data import (
    ArraySource,
    DataSpec,
    ImagePipeline,
    ImageSubset,
    TensorAugmentLoader,
    TorchEpochLoader,
    crop_flip,
    load_datasets,
    make_loaders,
    normalization,
    split_indices,
)
from gfverify.errors import ConfigError, DataError
from tests.cifar_fixture import write_cifar10_folder, write_cifar100_folder

HALF = normalization("half", "cifar10")


def expected_tensor(img: np.ndarray, mean, std) -> torch.Tensor:
    """torchvision's own ToTensor + Normalize of a uint8 HWC image (the reference)."""
    return TF.normalize(TF.to_tensor(Image.fromarray(np.ascontiguousarray(img))), mean, std)


# ------------------------------------------------------------------------------ CIFAR


def test_cifar10_fixture_loads_exact_pixels_and_labels(tmp_path):
    f = write_cifar10_folder(tmp_path, n_train=60, n_test=20, seed=3)
    data = load_datasets(DataSpec(name="cifar10", root=str(tmp_path), verify_md5=False))
    assert data.num_classes == 10 and data.input_shape == (3, 32, 32)
    assert len(data.train) == 60 and len(data.test) == 20 and data.val is None
    assert data.class_names[0] == "airplane"
    for k in range(20):
        x, y = data.test[k]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert y == f.test_labels[k]
        assert torch.equal(x, expected_tensor(f.test_images[k], *HALF))
    np.testing.assert_array_equal(data.train.targets, f.train_labels)
    assert data.scoring is data.train and data.scoring.augmenting


def test_cifar100_fixture_loads_fine_labels(tmp_path):
    f = write_cifar100_folder(tmp_path, n_train=200, n_test=100, seed=1)
    spec = DataSpec(name="cifar100", root=tmp_path, verify_md5=False, normalize="cifar")
    data = load_datasets(spec)
    assert data.num_classes == 100 and len(data.class_names) == 100
    assert set(data.train.targets.tolist()) == set(range(100))
    np.testing.assert_array_equal(data.test.targets, f.test_labels)
    mean, std = normalization("cifar", "cifar100")
    assert mean[0] == pytest.approx(0.5071)
    x, y = data.test[7]
    assert torch.equal(x, expected_tensor(f.test_images[7], mean, std)) and y == f.test_labels[7]


def test_missing_cifar_offline_raises_one_line_data_error(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        load_datasets(DataSpec(name="cifar10", root=str(root)))
    msg = str(err.value)
    assert "\n" not in msg
    assert str(root.resolve() / "cifar-10-batches-py") in msg
    assert "--download" in msg and "cifar-10-batches-py" in msg
    with pytest.raises(DataError, match="cifar-100-python"):
        load_datasets(DataSpec(name="cifar100", root=str(root)))


def test_test_made_folder_fails_real_md5_check(tmp_path):
    write_cifar10_folder(tmp_path, n_train=10, n_test=5)
    with pytest.raises(DataError, match="md5") as err:
        load_datasets(DataSpec(name="cifar10", root=str(tmp_path), verify_md5=True))
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------- offline datasets


def test_digits_offline_split_and_shapes():
    from sklearn.datasets import load_digits

    data = load_datasets(DataSpec(name="digits"))
    assert (len(data.train), len(data.test)) == (1440, 357)
    assert data.num_classes == 10 and data.input_shape == (3, 32, 32)
    all_labels = np.concatenate([data.train.targets, data.test.targets])
    assert Counter(all_labels.tolist()) == Counter(load_digits().target.tolist())
    x, _ = data.test[0]
    assert x.shape == (3, 32, 32) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert x.min() >= -1 and x.max() <= 1
    # train ∪ test is exactly the 1797 sklearn digits, each bilinearly upsampled ×4 (v·255/16
    # rounded to uint8), each once, with its own label
    d = load_digits()
    x8 = torch.from_numpy(d.images / 16.0).float()[:, None]
    up = torch.nn.functional.interpolate(x8, size=(32, 32), mode="bilinear", align_corners=False)
    ref = (255 * up).round().clamp(0, 255).to(torch.uint8)[:, 0]
    want = Counter((ref[i].numpy().tobytes(), int(d.target[i])) for i in range(len(ref)))
    got = Counter()
    for split in (data.train, data.test):
        u8 = split.uint8_images()
        assert torch.equal(u8[:, 0], u8[:, 2])
        got.update((u8[k, 0].numpy().tobytes(), int(y)) for k, y in enumerate(split.targets))
    assert got == want
    again = load_datasets(DataSpec(name="digits"))
    assert torch.equal(again.test.uint8_images(), data.test.uint8_images())
    other = load_datasets(DataSpec(name="digits", data_seed=1))
    assert not np.array_equal(other.test.targets, data.test.targets)


def test_synthetic_offline_seeded_and_learnable():
    spec = DataSpec(name="synthetic", synthetic_classes=4, synthetic_train=400, synthetic_test=200)
    data = load_datasets(spec)
    assert data.num_classes == 4 and (len(data.train), len(data.test)) == (400, 200)
    assert sorted(Counter(data.train.targets.tolist()).values()) == [100] * 4
    a = data.train.uint8_images()
    assert a.shape == (400, 3, 32, 32) and a.dtype == torch.uint8
    assert torch.equal(a, load_datasets(spec).train.uint8_images())
    reseeded = load_datasets(DataSpec(**{**vars(spec), "data_seed": 5}))
    assert not torch.equal(a, reseeded.train.uint8_images())
    # nearest class mean (estimated on train) classifies the test split well above chance
    ytr = torch.from_numpy(data.train.targets)
    means = torch.stack([a[ytr == c].float().mean(0) for c in range(4)]).flatten(1)
    te = data.test.uint8_images().float().flatten(1)
    pred = torch.cdist(te, means).argmin(1).numpy()
    assert (pred == data.test.targets).mean() > 0.9


def test_offline_smoke_loaders_on_digits():
    data = load_datasets(DataSpec(name="digits", train_subset=256, val_fraction=0.1))
    for fast in (False, True):
        loaders = make_loaders(data, batch_size=64, fast_path=fast)
        batches = list(loaders.train.epoch_loader(0))
        assert len(batches) == len(loaders.train) == 4
        assert sum(len(y) for _, y in batches) == 256
        assert batches[0][0].shape == (64, 3, 32, 32)
        assert sum(len(y) for _, y in loaders.test) == 357


# -------------------------------------------------------- fast path vs torchvision path


def pattern_image() -> np.ndarray:
    """R = 10 + row, G = 10 + col, B = 200: a crop's offset and flip are readable off it."""
    r, c = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    return np.stack([10 + r, 10 + c, np.full_like(r, 200)], axis=-1).astype(np.uint8)


def recover(x: torch.Tensor, mean, std) -> tuple[int, int, bool]:
    """(dy, dx, flip) of a crop of the padded pattern, read at the centre pixel."""
    m, s = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    u = torch.round((x * s + m) * 255)
    g = u[1, 16]
    flip = bool(g[17] < g[16])
    return int(u[0, 16, 16]) - 22, int(g[16]) - (21 if flip else 22), flip


def reference_crop(img: np.ndarray, dy: int, dx: int, flip: bool, pad: int = 4) -> np.ndarray:
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
    crop = padded[dy : dy + img.shape[0], dx : dx + img.shape[1]]
    return crop[:, ::-1] if flip else crop


def pattern_subset(n: int, normalize: str = "half") -> ImageSubset:
    mean, std = normalization(normalize, "cifar10")
    src = ArraySource(np.repeat(pattern_image()[None], n, axis=0), np.zeros(n, dtype=np.int64))
    pipe = ImagePipeline(size=32, pad=4, augment=True, mean=mean, std=std)
    return ImageSubset(src, np.arange(n), pipe, train=True)


def draws(loader, epochs=(0,)) -> list[torch.Tensor]:
    return [x for e in epochs for xb, _ in loader.epoch_loader(e) for x in xb]


def both_paths(ds: ImageSubset, batch: int = 256):
    torch_path = TorchEpochLoader(ds, batch, seed=11)
    fast_path = TensorAugmentLoader.from_dataset(ds, batch, seed=11)
    return torch_path, fast_path


@pytest.mark.parametrize("normalize", ["half", "cifar"])
def test_both_paths_equal_torchvision_reference_exactly(normalize):
    """Every output, of both paths, is bit-identical to torchvision's ToTensor+Normalize of the
    zero-padded crop with the recovered (dy, dx, flip): padding value (0 − mean)/std, crop
    geometry and flip direction all match, and with no shift/flip the two paths coincide."""
    ds = pattern_subset(300, normalize)
    mean, std = ds.pipeline.mean, ds.pipeline.std
    img = pattern_image()
    pad_value = -torch.tensor(mean) / torch.tensor(std)
    seen_padding = 0
    for loader in both_paths(ds):
        for x in draws(loader):
            dy, dx, flip = recover(x, mean, std)
            assert 0 <= dy <= 8 and 0 <= dx <= 8
            assert torch.equal(x, expected_tensor(reference_crop(img, dy, dx, flip), mean, std))
            if dy == 0:
                assert torch.equal(x[:, :4], pad_value[:, None, None].expand(3, 4, 32))
                seen_padding += 1
    assert seen_padding > 0


def test_fast_path_augmentation_distribution_matches_torchvision():
    """Offsets (dy, dx) uniform on {0..8}² and flips fair in both paths (chi-square and
    binomial tests, fixed seeds), and the two paths' offset histograms agree."""
    n = 81 * 50
    counts, flips = {}, {}
    for name, loader in zip(("torch", "fast"), both_paths(pattern_subset(n), batch=512)):
        params = [recover(x, *HALF) for x in draws(loader)]
        hist = np.zeros((9, 9), dtype=np.int64)
        for dy, dx, _ in params:
            hist[dy, dx] += 1
        counts[name], flips[name] = hist, sum(f for *_, f in params)
        assert stats.chisquare(hist.ravel()).pvalue > 1e-3, name
        assert stats.binomtest(flips[name], n, 0.5).pvalue > 1e-3, name
        # marginals separately (more power against a shifted range)
        assert stats.chisquare(hist.sum(1)).pvalue > 1e-3, name
        assert stats.chisquare(hist.sum(0)).pvalue > 1e-3, name
    table = np.stack([counts["torch"].ravel(), counts["fast"].ravel()])
    assert stats.chi2_contingency(table).pvalue > 1e-3


def test_distribution_test_has_power():
    """The chi-square check rejects offsets drawn from {0..7} (an off-by-one crop range)."""
    rng = np.random.default_rng(0)
    bad = np.zeros((9, 9), dtype=np.int64)
    for dy, dx in rng.integers(0, 8, size=(81 * 50, 2)):
        bad[dy, dx] += 1
    assert stats.chisquare(bad.ravel()).pvalue < 1e-6


@given(
    b=st.integers(1, 5),
    size=st.integers(2, 9),
    pad=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_crop_flip_matches_numpy_reference(b, size, pad, seed):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, size=(b, size, size, 3), dtype=np.uint8)
    dy, dx = rng.integers(0, 2 * pad + 1, size=(2, b))
    flip = rng.random(b) < 0.5
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2)
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    dy_t, dx_t, flip_t = (torch.from_numpy(v) for v in (dy, dx, flip))
    out = crop_flip(padded, dy_t, dx_t, flip_t, size)
    for k in range(b):
        ref = reference_crop(imgs[k], dy[k], dx[k], flip[k], pad)
        assert torch.equal(out[k], torch.from_numpy(np.ascontiguousarray(ref)).permute(2, 0, 1))


@pytest.mark.parametrize("augment", [False, True])
def test_paths_identical_without_augmentation_end_to_end(tmp_path, augment):
    """Unaugmented loaders (all of them with augment=False; val/test always) give bit-identical
    batches in both paths, in the same order."""
    write_cifar10_folder(tmp_path, n_train=70, n_test=30)
    spec = DataSpec(root=str(tmp_path), verify_md5=False, augment=augment, val_fraction=0.2)
    data = load_datasets(spec)
    slow, fast = make_loaders(data, 16, fast_path=False), make_loaders(data, 16, fast_path=True)
    for name in ("val", "test") if augment else ("train", "scoring", "val", "test"):
        a, b = getattr(slow, name), getattr(fast, name)
        assert len(a) == len(b)
        for (xa, ya), (xb, yb) in zip(a.epoch_loader(2), b.epoch_loader(2), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb), name


# ------------------------------------------------------------------ splits and order


def test_val_split_disjoint_seeded_and_stable(tmp_path):
    write_cifar10_folder(tmp_path, n_train=100, n_test=10)
    spec = DataSpec(root=str(tmp_path), verify_md5=False, val_fraction=0.25, seed=4)
    a, b = load_datasets(spec), load_datasets(spec)
    tr, va = a.train.indices, a.val.indices
    assert len(va) == 25 and len(tr) == 75
    assert set(tr).isdisjoint(va) and set(tr) | set(va) == set(range(100))
    np.testing.assert_array_equal(va, b.val.indices)
    other = load_datasets(DataSpec(**{**vars(spec), "seed": 5}))
    assert set(other.val.indices) != set(va)
    assert not a.val.augmenting and torch.equal(a.val[0][0], a.val[0][0])
    sub = load_datasets(DataSpec(**{**vars(spec), "train_subset": 30}))
    assert len(sub.train) == 30 and set(sub.train.indices) <= set(tr)
    np.testing.assert_array_equal(sub.val.indices, va)  # the subset never eats into val
    with pytest.raises(DataError, match="train_subset"):
        load_datasets(DataSpec(**{**vars(spec), "train_subset": 76}))


@given(n=st.integers(2, 500), frac=st.floats(0.01, 0.9), seed=st.integers(0, 2**31))
@settings(max_examples=50, deadline=None)
def test_split_indices_partition(n, frac, seed):
    n_val = int(round(frac * n))
    if not 1 <= n_val < n:
        with pytest.raises(DataError):
            split_indices(n, frac, seed)
        return
    tr, va = split_indices(n, frac, seed)
    assert len(va) == n_val and np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(n))
    assert np.array_equal(va, split_indices(n, frac, seed)[1])


@pytest.mark.parametrize("fast", [False, True])
def test_epoch_order_and_augmentation_deterministic(tmp_path, fast):
    write_cifar10_folder(tmp_path, n_train=64, n_test=8)
    data = load_datasets(DataSpec(root=str(tmp_path), verify_md5=False))
    make = lambda: make_loaders(data, 16, seed=7, fast_path=fast).train  # noqa: E731
    rng_before = torch.get_rng_state()
    run = make()
    epochs = [list(run.epoch_loader(e)) for e in range(3)]
    resumed = list(make().epoch_loader(2))  # a fresh loader, as after a restart
    assert torch.equal(torch.get_rng_state(), rng_before)  # caller's RNG untouched
    for (xa, ya), (xb, yb) in zip(epochs[2], resumed, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    labels = [torch.cat([y for _, y in ep]) for ep in epochs]
    assert not torch.equal(labels[0], labels[1])
    assert sorted(labels[0].tolist()) == sorted(data.train.targets.tolist())
    run.set_epoch(1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(run, epochs[1], strict=True))
    other_seed = list(make_loaders(data, 16, seed=8, fast_path=fast).train.epoch_loader(2))
    assert not torch.equal(other_seed[0][0], epochs[2][0][0])


def test_worker_count_does_not_change_batches(tmp_path):
    write_cifar10_folder(tmp_path, n_train=32, n_test=8)
    data = load_datasets(DataSpec(root=str(tmp_path), verify_md5=False))
    a = list(make_loaders(data, 8, num_workers=0).train.epoch_loader(1))
    b = list(make_loaders(data, 8, num_workers=1).train.epoch_loader(1))
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b, strict=True))


def test_same_order_in_both_paths(tmp_path):
    write_cifar10_folder(tmp_path, n_train=50, n_test=8)
    data = load_datasets(DataSpec(root=str(tmp_path), verify_md5=False))
    ys = [
        torch.cat([y for _, y in make_loaders(data, 8, fast_path=f).train.epoch_loader(3)])
        for f in (False, True)
    ]
    assert torch.equal(ys[0], ys[1])


# ------------------------------------------------------------------------ image folders


def write_png_tree(base: Path, classes: dict[str, int], size=(16, 16), seed=0) -> dict:
    rng = np.random.default_rng(seed)
    written = {}
    for cls, n in classes.items():
        (base / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            path = base / cls / f"img_{i}.png"
            Image.fromarray(arr).save(path)
            written[str(path)] = arr
    return written


def test_imagefolder_from_pngs(tmp_path):
    train = write_png_tree(tmp_path / "train", {"cat": 3, "dog": 2, "emu": 4})
    test = write_png_tree(tmp_path / "test", {"dog": 2, "emu": 1}, seed=1)  # no "cat"
    data = load_datasets(DataSpec(name="imagefolder", root=str(tmp_path), augment=False))
    assert data.num_classes == 3 and data.class_names == ("cat", "dog", "emu")
    assert data.input_shape == (3, 16, 16) and data.train.pipeline.pad == 2
    assert sorted(data.test.targets.tolist()) == [1, 1, 2]  # labelled by train's class map
    for k, (path, label) in enumerate(data.test.source.samples):
        x, y = data.test[k]
        assert y == label == ("cat", "dog", "emu").index(Path(path).parent.name)
        assert torch.equal(x, expected_tensor(test[path], *HALF))
    assert len(data.train) == len(train) == 9
    resized = load_datasets(DataSpec(name="imagefolder", root=str(tmp_path), image_size=8))
    assert resized.train[0][0].shape == (3, 8, 8)
    assert resized.train.uint8_images().shape == (9, 3, 8, 8)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "train")):
        load_datasets(DataSpec(name="imagefolder", root=str(tmp_path)))
    write_png_tree(tmp_path / "train", {"a": 1, "b": 1})
    with pytest.raises(DataError, match="test"):
        load_datasets(DataSpec(name="imagefolder", root=str(tmp_path)))
    write_png_tree(tmp_path / "test", {"a": 1, "zebra": 1})
    with pytest.raises(DataError, match="zebra"):
        load_datasets(DataSpec(name="imagefolder", root=str(tmp_path)))


def test_tinyimagenet_archive_layout(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    rng = np.random.default_rng(0)
    wnids = ["n01", "n02"]
    for w in wnids:
        (base / "train" / w / "images").mkdir(parents=True)
        for i in range(2):
            arr = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
            Image.fromarray(arr).save(base / "train" / w / "images" / f"{w}_{i}.JPEG")
        (base / "train" / w / f"{w}_boxes.txt").write_text("ignored\n")
    (base / "val" / "images").mkdir(parents=True)
    lines = []
    for i, w in enumerate(["n02", "n01", "n02"]):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            base / "val" / "images" / f"val_{i}.JPEG"
        )
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (base / "test" / "images").mkdir(parents=True)  # unlabelled split, must be ignored
    data = load_datasets(DataSpec(name="tinyimagenet", root=str(tmp_path)))
    assert data.num_classes == 2 and data.input_shape == (3, 64, 64)
    assert data.train.pipeline.pad == 8 and len(data.train) == 4
    assert data.test.targets.tolist() == [1, 0, 1]
    assert data.train[0][0].shape == (3, 64, 64)


# ------------------------------------------------------------------------------- spec


@pytest.mark.parametrize(
    "kw",
    [
        {"name": "imagenet1k"},
        {"normalize": "imagenet"},
        {"val_fraction": 1.0},
        {"train_subset": 0},
        {"num_workers": -1},
        {"synthetic_classes": 1},
    ],
)
def test_bad_spec_raises_config_error(kw):
    with pytest.raises(ConfigError, match=next(iter(kw))):
        DataSpec(**kw)
