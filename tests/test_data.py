"""adt.core.data: the embedded mnist5k, torchvision's on-disk formats, batching, augmentation."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_data import write_cifar10, write_cifar100, write_idx_dataset, write_svhn

import adt.core.data as data_mod
from adt.core.data import (
    DATASETS,
    DatasetNotFoundError,
    ImageDataset,
    load_dataset,
    random_crop_flip,
)


@pytest.fixture(scope="module")
def mnist5k() -> ImageDataset:
    return load_dataset("mnist5k")


def assert_loaded(ds: ImageDataset, expected: tuple[np.ndarray, ...], name: str,
                  epsilon: float, num_classes: int, shape: tuple[int, int, int]) -> None:
    x_train, y_train, x_test, y_test = expected
    assert ds.name == name
    assert ds.spec.epsilon == pytest.approx(epsilon, abs=0, rel=1e-12)
    assert ds.spec.num_classes == num_classes
    assert ds.spec.image_shape == shape
    for got, want in ((ds.x_train, x_train), (ds.x_test, x_test)):
        assert got.dtype == torch.uint8
        assert tuple(got.shape) == (len(want), *shape)
        assert np.array_equal(got.numpy(), want)
    for got, want in ((ds.y_train, y_train), (ds.y_test, y_test)):
        assert got.dtype == torch.int64
        assert got.tolist() == want.tolist()


# ----------------------------------------------------------------------------- mnist5k


def test_mnist5k_split_shapes_and_epsilon(mnist5k: ImageDataset) -> None:
    ds = mnist5k
    assert ds.name == "mnist5k"
    assert ds.x_train.shape == (4000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    assert ds.x_train.dtype == torch.uint8 and ds.x_test.dtype == torch.uint8
    assert ds.y_train.shape == (4000,) and ds.y_test.shape == (1000,)
    assert set(ds.y_train.tolist()) == set(range(10)) and set(ds.y_test.tolist()) == set(range(10))
    assert ds.spec.epsilon == 0.3 and ds.spec.num_classes == 10
    assert int(ds.x_train.max()) > 200 and int(ds.x_train.min()) == 0  # real digits, not blank
    assert ds.device == torch.device("cpu")


def test_mnist5k_split_is_fixed_and_disjoint(mnist5k: ImageDataset) -> None:
    np.random.seed(123)  # the split must not depend on the global RNGs
    torch.manual_seed(123)
    again = load_dataset("mnist5k")
    for a, b in ((mnist5k.x_train, again.x_train), (mnist5k.y_train, again.y_train),
                 (mnist5k.x_test, again.x_test), (mnist5k.y_test, again.y_test)):
        assert torch.equal(a, b)
    # the 5,000 digits are split, not duplicated: no test image is also a training image
    train_rows = {bytes(r) for r in mnist5k.x_train.flatten(1).numpy()}
    shared = sum(bytes(r) in train_rows for r in mnist5k.x_test.flatten(1).numpy())
    assert shared <= 5  # (a handful of exact duplicates among real digits would be tolerable)


# ----------------------------------------------------------------------------- on-disk formats


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("name,folder,epsilon", [("mnist", "MNIST", 0.3),
                                                 ("fashion_mnist", "FashionMNIST", 0.1)])
def test_idx_formats_round_trip(tmp_path: Path, name: str, folder: str, epsilon: float,
                                gz: bool) -> None:
    expected = write_idx_dataset(tmp_path / folder / "raw", n_train=12, n_test=5, gz=gz)
    ds = load_dataset(name, root=tmp_path)
    assert_loaded(ds, expected, name, epsilon, 10, (1, 28, 28))
    # the markers sit where they were written (rows/columns not swapped or flipped)
    assert ds.x_train[3, 0, 0, 0] == 203 and ds.x_test[0, 0, 0, 0] == 212
    assert ds.x_train[0, 0, 27, 1] == 255 and ds.x_train[0, 0, 1, 27] == (3 + 5 * 27) % 200


def test_cifar10_format_round_trip(tmp_path: Path) -> None:
    expected = write_cifar10(tmp_path, per_batch=3, n_test=4)
    ds = load_dataset("cifar10", root=tmp_path)
    assert_loaded(ds, expected, "cifar10", 8 / 255, 10, (3, 32, 32))
    assert ds.x_train.shape[0] == 15  # the five batches, in order
    assert ds.y_train.tolist() == [i % 10 for i in range(15)]
    # channel planes and pixel positions: red marker at (3, 5), green at (0, 31), blue at (31, 0)
    assert ds.x_train[:, 0, 3, 5].eq(250).all() and ds.x_train[:, 1, 0, 31].eq(251).all()
    assert ds.x_test[:, 2, 31, 0].eq(252).all()
    assert ds.x_train[7, 0, 0, 0] == 17 and ds.x_train[7, 1, 5, 5] == 107
    assert ds.x_train[0, 2, 10, 6] == 12  # blue is a column ramp: value 2 * column
    assert ds.spec.augment


def test_cifar100_format_round_trip(tmp_path: Path) -> None:
    expected = write_cifar100(tmp_path, n_train=9, n_test=4)
    ds = load_dataset("cifar100", root=tmp_path)
    assert_loaded(ds, expected, "cifar100", 8 / 255, 100, (3, 32, 32))
    assert ds.y_train[0] == 99  # fine labels, not coarse ones
    assert ds.x_test[:, 0, 3, 5].eq(250).all()


def test_svhn_format_round_trip(tmp_path: Path) -> None:
    expected = write_svhn(tmp_path, n_train=10, n_test=4)
    ds = load_dataset("svhn", root=tmp_path)
    assert_loaded(ds, expected, "svhn", 4 / 255, 10, (3, 32, 32))
    assert ds.y_train[0] == 0 and ds.y_test[0] == 0  # stored as 10 in the .mat files
    assert 10 not in ds.y_train.tolist() + ds.y_test.tolist()
    assert ds.x_train[:, 0, 2, 7].eq(240).all() and ds.x_train[:, 1, 30, 1].eq(241).all()
    assert ds.x_train[0, 1, 4, 0] == 12 and ds.x_train[0, 2, 0, 4] == 20  # rows vs columns
    assert not ds.spec.augment  # no crop/flip for SVHN (REPRODUCTION.md)


def test_dataset_registry_facts() -> None:
    eps = {name: spec.epsilon for name, spec in DATASETS.items()}
    assert eps == {"mnist5k": 0.3, "mnist": 0.3, "fashion_mnist": 0.1, "cifar10": 8 / 255,
                   "cifar100": 8 / 255, "svhn": 4 / 255}
    assert {n: s.num_classes for n, s in DATASETS.items()} == {
        "mnist5k": 10, "mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100, "svhn": 10}
    assert [n for n, s in DATASETS.items() if s.augment] == ["cifar10", "cifar100"]


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100", "svhn"])
def test_missing_files_raise_with_instructions(tmp_path: Path, name: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # hide the Debian copy of Fashion-MNIST, so the test means the same on every machine
    monkeypatch.setattr(data_mod, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-package")
    root = tmp_path / "data"
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, root=root, download=False)
    assert isinstance(info.value, FileNotFoundError)
    msg = str(info.value)
    spec = DATASETS[name]
    assert name in msg
    for f in spec.files:
        assert f in msg
    assert str(root / spec.folder) in msg
    assert "download=True" in msg
    assert "http" in msg


def test_partial_cifar10_counts_as_missing(tmp_path: Path) -> None:
    write_cifar10(tmp_path, per_batch=2, n_test=2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_3"):
        load_dataset("cifar10", root=tmp_path)


def test_fashion_mnist_from_debian_package(tmp_path: Path) -> None:
    if not data_mod.DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip(f"machine-dependent: {data_mod.DEBIAN_FASHION_MNIST} is absent (Debian package "
                    "dataset-fashion-mnist not installed), so the real Fashion-MNIST cannot be read")
    ds = load_dataset("fashion_mnist", root=tmp_path / "empty")  # nothing under root
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.x_train.dtype == torch.uint8
    assert set(ds.y_train.tolist()) == set(range(10)) and len(ds.y_test) == 10000
    assert ds.spec.epsilon == 0.1


def test_unknown_dataset_names_allowed() -> None:
    with pytest.raises(ValueError, match="cifar10") as info:
        load_dataset("imagenet")
    assert "imagenet" in str(info.value)
    for name in DATASETS:
        assert name in str(info.value)


# ----------------------------------------------------------------------------- batching


def _indexed_dataset(n_train: int = 10, n_test: int = 3) -> ImageDataset:
    """A cifar10-shaped dataset whose label is the example's index."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n_train + n_test, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.arange(n_train + n_test)
    return ImageDataset(DATASETS["cifar10"], x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def test_batches_are_float_on_device_and_in_order() -> None:
    ds = _indexed_dataset()
    batches = list(ds.batches("train", 4))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    for x, _ in batches:
        assert x.dtype == torch.float32 and x.device == ds.device
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert torch.equal(torch.cat([x for x, _ in batches]), ds.x_train.float() / 255)
    assert torch.cat([y for _, y in batches]).tolist() == list(range(10))
    (xt, yt), = list(ds.batches("test", 100))
    assert torch.equal(xt, ds.x_test.float() / 255) and yt.tolist() == [10, 11, 12]


@pytest.mark.parametrize("augment", [False, True])
def test_shuffled_epoch_covers_every_example_once(augment: bool) -> None:
    ds = _indexed_dataset(n_train=23)
    for seed in range(3):
        seen = [y for _, y in ds.batches("train", 5, shuffle=True, augment=augment, seed=seed)]
        ys = torch.cat(seen)
        assert sorted(ys.tolist()) == list(range(23))
        if not augment:  # the images travel with their labels
            xs = torch.cat([x for x, _ in ds.batches("train", 5, shuffle=True, seed=seed)])
            assert torch.equal(xs, ds.x_train[ys].float() / 255)


def test_same_seed_same_order_and_augmentation() -> None:
    ds = _indexed_dataset(n_train=40)

    def epoch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = list(ds.batches("train", 16, shuffle=True, augment=True, seed=seed))
        return torch.cat([x for x, _ in out]), torch.cat([y for _, y in out])

    x1, y1 = epoch(7)
    x2, y2 = epoch(7)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, y3 = epoch(8)
    assert not torch.equal(y1, y3)
    assert not torch.equal(x1[y1.argsort()], x3[y3.argsort()])  # other crops/flips too
    # augmentation changes images (crop/flip), shuffling alone does not
    assert not torch.equal(x1, ds.x_train[y1].float() / 255)


def test_batch_and_subset_arguments_are_checked() -> None:
    ds = _indexed_dataset()
    with pytest.raises(ValueError, match="batch_size"):
        list(ds.batches("train", 0))
    with pytest.raises(ValueError, match="valid"):
        list(ds.batches("valid", 4))
    for kwargs in ({"train": 0}, {"test": 0}, {"train": -3}):
        with pytest.raises(ValueError, match="subset"):
            ds.subset(**kwargs)
    sub = ds.subset(train=4, test=2)
    assert torch.equal(sub.x_train, ds.x_train[:4]) and torch.equal(sub.y_test, ds.y_test[:2])
    assert len(ds.subset().x_train) == 10


# ----------------------------------------------------------------------------- crop and flip


def _reference_crop(x: torch.Tensor, padding: int, dy: int, dx: int, flip: bool) -> torch.Tensor:
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    crop = padded[..., dy:dy + h, dx:dx + w]
    return crop.flip(-1) if flip else crop


def _matching_transforms(out: torch.Tensor, x: torch.Tensor, padding: int) -> list[tuple]:
    return [(dy, dx, flip) for dy, dx, flip in itertools.product(
        range(2 * padding + 1), range(2 * padding + 1), (False, True))
        if torch.equal(out, _reference_crop(x, padding, dy, dx, flip))]


def test_random_crop_flip_is_a_crop_of_the_padded_image_maybe_flipped() -> None:
    padding, n = 4, 60
    # unique values per pixel: a crop determines its offsets and flip
    x = (torch.arange(n * 3 * 12 * 10, dtype=torch.float32).view(n, 3, 12, 10) + 1)
    out = random_crop_flip(x, padding=padding, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    used = []
    for i in range(n):
        match = _matching_transforms(out[i], x[i], padding)
        assert match, f"output {i} is no (dy, dx, flip) crop of the zero-padded input"
        used += match
    dys = {m[0] for m in used}
    flips = {m[2] for m in used}
    assert flips == {False, True}
    assert min(dys) <= 1 and max(dys) >= 2 * padding - 1 and len(dys) >= 5  # offsets spread out


def test_random_crop_flip_uint8_unique_pixel() -> None:
    x = torch.zeros(200, 1, 28, 28, dtype=torch.uint8)
    x[:, 0, 5, 9] = 255  # a unique bright pixel
    out = random_crop_flip(x, padding=4, generator=torch.Generator().manual_seed(3))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    flipped = 0
    for i in range(len(x)):
        pos = (out[i, 0] == 255).nonzero().tolist()
        # padding 4 can never push this pixel out of the 28x28 window
        assert len(pos) == 1 and int((out[i] > 0).sum()) == 1
        (r, c), = pos
        assert 0 <= 5 + 4 - r <= 8  # dy in range
        # column 9 of the image is column 13 of the padded one: unflipped, c = 13 - dx;
        # flipped, c = 27 - (13 - dx), both with dx in [0, 8]
        assert 0 <= 13 - c <= 8 or 0 <= c - 14 <= 8
        flipped += c >= 14
    assert 0 < flipped < len(x)


def test_random_crop_flip_without_padding_is_identity_or_mirror() -> None:
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(x, padding=0, generator=torch.Generator().manual_seed(1))
    flipped = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x, strict=True)]
    same = [torch.equal(o, xi) for o, xi in zip(out, x, strict=True)]
    assert all(f or s for f, s in zip(flipped, same, strict=True))
    assert any(flipped) and any(same)


def test_random_crop_flip_is_reproducible_with_a_generator() -> None:
    x = torch.rand(16, 3, 32, 32)
    a = random_crop_flip(x, generator=torch.Generator().manual_seed(5))
    b = random_crop_flip(x, generator=torch.Generator().manual_seed(5))
    c = random_crop_flip(x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
