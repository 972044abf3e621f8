"""MNIST-format files: the IDX reader, and the four files of a set read and checked.

MNIST and Fashion-MNIST share the format and the file names (`MNIST_FILES`),
each file raw or gzipped. `read_idx` reads one file as untrusted input;
`image_set` reads a set's four, checks that images and labels fit together
and that every label is a class, and scales the pixels to [0, 1]. Where the
files are, and what to say when they are missing, is `manualbp.data`'s.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
"""The four standard IDX files; each may also be gzipped (name + ``.gz``)."""

MNIST_CLASSES = 10
"""MNIST and Fashion-MNIST both label ten classes, 0..9."""


_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped when the name ends in ``.gz``) into a NumPy array.

    The format: two zero bytes, a type code (0x08 for unsigned bytes), the
    number of dimensions d, then d big-endian uint32 sizes, then the data in
    row-major order.

    Raises:
        ValueError: naming the file, when it is not IDX, holds more or fewer
            values than its header says, or its gzip stream is truncated or
            fails its CRC check.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # truncated, or a CRC mismatch
        raise ValueError(f"{path}: the gzip data is damaged ({e}); fetch the file again") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: the header promises {ndim} sizes, the file ends before them")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    held = (len(raw) - 4 - 4 * ndim) / dtype.itemsize
    if held != math.prod(shape):
        raise ValueError(
            f"{path}: the header says shape {shape} ({math.prod(shape)} values), "
            f"the file holds {held:g}"
        )
    return np.frombuffer(raw, dtype, offset=4 + 4 * ndim).reshape(shape)


def image_set(
    name: str, directory, missing_message: Callable, dtype
) -> tuple[tuple[Array, Array], tuple[Array, Array]]:
    """The four IDX files of an MNIST-format set: checked, flattened, scaled to [0, 1].

    Raises:
        FileNotFoundError: a file is missing, with ``missing_message(directory)``.
        ValueError: naming the file, when one is damaged, or images and labels
            do not fit together, or a label is no class 0..9.
    """
    paths = {key: _find_idx(Path(directory), file) for key, file in MNIST_FILES.items()}
    if None in paths.values():
        raise FileNotFoundError(missing_message(directory))
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        _check_split(name, split, arrays, paths)
    return (
        _scaled(arrays["train_images"], arrays["train_labels"], dtype),
        _scaled(arrays["test_images"], arrays["test_labels"], dtype),
    )


def _find_idx(directory: Path, name: str) -> Path | None:
    for candidate in (directory / (name + ".gz"), directory / name):
        if candidate.is_file():
            return candidate
    return None


def _check_split(name: str, split: str, arrays: dict, paths: dict) -> None:
    """One split's images (n, rows, cols) and labels (n,), both bytes, every label a class."""
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{name} {split}: expected images (n, rows, cols) and labels (n,), got "
            f"{images.shape} and {labels.shape}"
        )
    for kind in ("images", "labels"):
        if arrays[f"{split}_{kind}"].dtype != np.uint8:
            raise ValueError(
                f"{paths[f'{split}_{kind}']}: expected {kind} of unsigned bytes (IDX type 0x08), "
                f"got {arrays[f'{split}_{kind}'].dtype}"
            )
    _check_labels(paths[f"{split}_labels"], labels, MNIST_CLASSES)


def _check_labels(path: Path, labels: np.ndarray, classes: int) -> None:
    """Every label a class index 0..classes-1; a stray byte would add classes silently."""
    bad = np.flatnonzero(labels >= classes)
    if bad.size:
        raise ValueError(
            f"{path}: expected class labels 0..{classes - 1}, got {labels[bad[0]]} at index "
            f"{bad[0]} ({bad.size} such labels)"
        )


def _scaled(images: np.ndarray, labels: np.ndarray, dtype) -> tuple[Array, Array]:
    """Images flattened to rows of pixels in [0, 1], labels as int32."""
    # Divide in float32 unless float64 is asked for: exact pixel values, one rounding,
    # and a fraction of the time of NumPy's default float64 arithmetic.
    work = np.float64 if jnp.dtype(dtype) == np.float64 else np.float32
    scaled = images.reshape(images.shape[0], -1).astype(work) / work(255)
    return jnp.asarray(scaled, dtype), jnp.asarray(labels, jnp.int32)
