"""Writers of small synthetic datasets in torchvision's on-disk formats.

Every image carries its global index (train examples first, then test) in
recognisable places, so a test can check that pixels, channels, rows, columns
and labels survive the round trip exactly. ``expected_*`` give the arrays the
loader must return, built independently of the loader's reshaping code.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

# ----------------------------------------------------------------------------- MNIST family


def mnist_images(n: int, offset: int = 0) -> np.ndarray:
    """(n, 28, 28) uint8: image i has a gradient identifying (row, col) plus a marker of i."""
    rows = np.arange(28)[:, None]
    cols = np.arange(28)[None, :]
    base = (3 * rows + 5 * cols) % 200  # rows and columns distinguishable
    images = np.repeat(base[None], n, axis=0).astype(np.uint8)
    for i in range(n):
        images[i, 0, 0] = 200 + (offset + i) % 56  # the index, top-left corner
        images[i, 27, 1] = 255 - (offset + i) % 50  # bottom row, near the left: catches flips
    return images


def _idx_bytes(array: np.ndarray) -> bytes:
    """The IDX format: 0, 0, type code 0x08 (unsigned byte), ndim, big-endian dims, data."""
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx_dataset(folder: Path, n_train: int, n_test: int, gz: bool = False
                      ) -> tuple[np.ndarray, ...]:
    """The four MNIST IDX files in ``folder``; returns (x_train, y_train, x_test, y_test)."""
    folder.mkdir(parents=True, exist_ok=True)
    x_train, x_test = mnist_images(n_train), mnist_images(n_test, offset=n_train)
    y_train = (np.arange(n_train) * 3 % 10).astype(np.uint8)
    y_test = ((np.arange(n_test) + 7) % 10).astype(np.uint8)
    for stem, arr in (("train-images-idx3-ubyte", x_train), ("train-labels-idx1-ubyte", y_train),
                      ("t10k-images-idx3-ubyte", x_test), ("t10k-labels-idx1-ubyte", y_test)):
        data = _idx_bytes(arr)
        if gz:
            with gzip.open(folder / f"{stem}.gz", "wb") as f:
                f.write(data)
        else:
            (folder / stem).write_bytes(data)
    return x_train[:, None], y_train.astype(np.int64), x_test[:, None], y_test.astype(np.int64)


# ----------------------------------------------------------------------------- CIFAR


def cifar_rows(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR rows (N, 3072) -- 1024 red, then 1024 green, then 1024 blue values, each plane
    row-major -- and the (N, 3, 32, 32) images they encode, built plane by plane."""
    images = np.zeros((len(indices), 3, 32, 32), dtype=np.uint8)
    rows = []
    for k, i in enumerate(indices):
        red = np.full((32, 32), 10 + i % 40, dtype=np.uint8)
        red[3, 5] = 250  # a marker at row 3, column 5 of the red plane
        green = np.full((32, 32), 100 + i % 40, dtype=np.uint8)
        green[0, 31] = 251  # top-right corner of the green plane
        blue = np.tile(np.arange(32, dtype=np.uint8)[None, :] * 2, (32, 1))  # a column ramp
        blue[31, 0] = 252  # bottom-left corner of the blue plane
        rows.append(np.concatenate([red.ravel(), green.ravel(), blue.ravel()]))
        images[k, 0], images[k, 1], images[k, 2] = red, green, blue
    return np.stack(rows).astype(np.uint8), images


def _write_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar10(root: Path, per_batch: int, n_test: int) -> tuple[np.ndarray, ...]:
    """``root/cifar-10-batches-py/data_batch_1..5`` and ``test_batch``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for b in range(5):
        idx = np.arange(b * per_batch, (b + 1) * per_batch)
        data, images = cifar_rows(idx)
        labels = [int(i % 10) for i in idx]
        _write_pickle(folder / f"data_batch_{b + 1}",
                      {b"batch_label": f"training batch {b + 1} of 5".encode(), b"labels": labels,
                       b"data": data, b"filenames": [f"{i}.png".encode() for i in idx]})
        xs.append(images)
        ys.append(labels)
    idx = np.arange(5 * per_batch, 5 * per_batch + n_test)
    data, test_images = cifar_rows(idx)
    test_labels = [int((i * 7) % 10) for i in idx]
    _write_pickle(folder / "test_batch", {b"batch_label": b"testing batch 1 of 1",
                                          b"labels": test_labels, b"data": data})
    return (np.concatenate(xs), np.concatenate(ys).astype(np.int64), test_images,
            np.asarray(test_labels, dtype=np.int64))


def write_cifar100(root: Path, n_train: int, n_test: int) -> tuple[np.ndarray, ...]:
    """``root/cifar-100-python/train`` and ``test`` (labels under b'fine_labels')."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, idx in (("train", np.arange(n_train)), ("test", np.arange(n_train, n_train + n_test))):
        data, images = cifar_rows(idx)
        fine = [int(99 - (i * 13) % 100) for i in idx]  # reaches 99: 100 classes
        coarse = [f // 5 for f in fine]
        _write_pickle(folder / name, {b"filenames": [f"{i}.png".encode() for i in idx],
                                      b"fine_labels": fine, b"coarse_labels": coarse,
                                      b"data": data})
        out += [images, np.asarray(fine, dtype=np.int64)]
    return tuple(out)


# ----------------------------------------------------------------------------- SVHN


def write_svhn(root: Path, n_train: int, n_test: int) -> tuple[np.ndarray, ...]:
    """``root/train_32x32.mat`` and ``test_32x32.mat``: X (32, 32, 3, N), y (N, 1), 0 -> 10."""
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    out = []
    for name, idx in (("train", np.arange(n_train)), ("test", np.arange(n_train, n_train + n_test))):
        images = np.zeros((len(idx), 3, 32, 32), dtype=np.uint8)  # (N, C, H, W), what we expect
        for k, i in enumerate(idx):
            images[k, 0] = 20 + i % 30
            images[k, 1] = np.arange(32, dtype=np.uint8)[:, None] * 3  # a row ramp
            images[k, 2] = np.arange(32, dtype=np.uint8)[None, :] * 5  # a column ramp
            images[k, 0, 2, 7] = 240  # row 2, column 7 of channel 0
            images[k, 1, 30, 1] = 241
        digits = (idx * 3 % 10).astype(np.int64)
        x_mat = np.ascontiguousarray(images.transpose(2, 3, 1, 0))  # (H, W, C, N)
        y_mat = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)
        savemat(str(root / f"{name}_32x32.mat"), {"X": x_mat, "y": y_mat})
        out += [images, digits]
    return tuple(out)
