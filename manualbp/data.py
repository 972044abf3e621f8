"""Data for manualbp: random batches, synthetic sets, digits, MNIST, Fashion-MNIST, preparation.

Every set comes back as ``(X, Y)``: inputs X of shape (n, N_1) in a floating
dtype, and targets Y as integer class labels (n,) for classification sets (use
`one_hot` for (n, N_L) targets) or values (n, N_L) for regression. Synthetic
sets are drawn from a `jax.random` key, so the same key gives the same set.

`random_batch` draws inputs and targets that suit a net's loss, for checking
gradients on nets that have no dataset of their own.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from manualbp import losses
from manualbp.network import MLP

Array = jax.Array


def random_batch(net: MLP, key: Array, batch: int, dtype=jnp.float32) -> tuple[Array, Array]:
    """X ~ N(0, 1) of shape (B, N_1) and targets Y that suit the net's loss.

    Targets: integer class labels (B,) for cross-entropy (with N_L > 1),
    0/1 values (B, N_L) for binary cross-entropy, N(0, 1) values (B, N_L)
    otherwise.
    """
    key_X, key_Y = jax.random.split(key)
    N_1, N_L = net.sizes[0], net.sizes[-1]
    X = jax.random.normal(key_X, (batch, N_1), dtype)
    if net.loss is losses.cross_entropy and N_L > 1:
        Y = jax.random.randint(key_Y, (batch,), 0, N_L)
    elif net.loss is losses.cross_entropy:
        Y = jnp.ones((batch, 1), dtype)
    elif net.loss is losses.binary_cross_entropy:
        Y = jax.random.bernoulli(key_Y, 0.5, (batch, N_L)).astype(dtype)
    else:
        Y = jax.random.normal(key_Y, (batch, N_L), dtype)
    return X, Y


# --- synthetic sets -------------------------------------------------------------
# Each generator is jitted whole (sizes and dtype static), so a call compiles once
# instead of once per primitive.


@functools.partial(jax.jit, static_argnames=("n", "dtype"))
def xor(key: Array, n: int = 4, noise: float = 0.0, dtype=jnp.float32) -> tuple[Array, Array]:
    """The XOR problem: corners of the unit square, label x_1 XOR x_2.

    Example i sits on corner i mod 4, so ``n=4`` with no noise is exactly the
    truth table (0,0)→0, (0,1)→1, (1,0)→1, (1,1)→0.

    Args:
        key: a `jax.random` key (used for the noise).
        n: the number of examples.
        noise: the standard deviation of Gaussian noise added to the corners.

    Returns:
        X of shape (n, 2) and integer labels Y of shape (n,).
    """
    corners = jnp.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype)
    index = jnp.arange(n) % 4
    X = corners[index] + noise * jax.random.normal(key, (n, 2), dtype)
    Y = jnp.array([0, 1, 1, 0], jnp.int32)[index]
    return X, Y


@functools.partial(jax.jit, static_argnames=("n", "dtype"))
def two_moons(
    key: Array, n: int = 200, noise: float = 0.1, dtype=jnp.float32
) -> tuple[Array, Array]:
    """Two interleaved half circles (scikit-learn's ``make_moons``), labels 0 and 1.

    Class 0 is the upper half of the unit circle, class 1 the lower half
    shifted by (1, 0.5); each example draws its angle uniformly.

    Returns:
        X of shape (n, 2) and integer labels Y of shape (n,).
    """
    key_label, key_angle, key_noise = jax.random.split(key, 3)
    Y = jax.random.bernoulli(key_label, 0.5, (n,)).astype(jnp.int32)
    angle = jax.random.uniform(key_angle, (n,), dtype, 0.0, math.pi)
    upper = jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)
    lower = jnp.stack([1.0 - jnp.cos(angle), 0.5 - jnp.sin(angle)], axis=1)
    X = jnp.where((Y == 1)[:, None], lower, upper)
    X = X + noise * jax.random.normal(key_noise, (n, 2), dtype)
    return X.astype(dtype), Y


@functools.partial(jax.jit, static_argnames=("n", "classes", "dtype"))
def spirals(
    key: Array,
    n: int = 300,
    classes: int = 3,
    turns: float = 1.0,
    noise: float = 0.05,
    dtype=jnp.float32,
) -> tuple[Array, Array]:
    """Interleaved spiral arms, one per class, in the unit disc (CS231n's spiral set).

    Arm c starts at the origin and winds ``turns`` times, rotated by 2πc/classes.

    Returns:
        X of shape (n, 2) and integer labels Y of shape (n,), in 0..classes-1.
    """
    key_label, key_radius, key_noise = jax.random.split(key, 3)
    Y = jax.random.randint(key_label, (n,), 0, classes, jnp.int32)
    radius = jax.random.uniform(key_radius, (n,), dtype)
    angle = 2 * math.pi * (turns * radius + Y.astype(dtype) / classes)
    X = radius[:, None] * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)
    X = X + noise * jax.random.normal(key_noise, (n, 2), dtype)
    return X.astype(dtype), Y


@functools.partial(jax.jit, static_argnames=("n", "dtype"))
def sine(key: Array, n: int = 256, noise: float = 0.0, dtype=jnp.float32) -> tuple[Array, Array]:
    """Regression of y = sin(x) for x uniform on [−π, π], plus optional Gaussian noise.

    Returns:
        X of shape (n, 1) and Y of shape (n, 1).
    """
    key_x, key_noise = jax.random.split(key)
    X = jax.random.uniform(key_x, (n, 1), dtype, -math.pi, math.pi)
    Y = jnp.sin(X) + noise * jax.random.normal(key_noise, (n, 1), dtype)
    return X, Y


@functools.partial(jax.jit, static_argnames=("n", "classes", "dim", "dtype"))
def blobs(
    key: Array,
    n: int = 300,
    classes: int = 3,
    dim: int = 2,
    spread: float = 5.0,
    std: float = 1.0,
    dtype=jnp.float32,
) -> tuple[Array, Array]:
    """Gaussian blobs: centers uniform in [−spread, spread]^dim, examples N(center, std²).

    Returns:
        X of shape (n, dim) and integer labels Y of shape (n,), in 0..classes-1.
    """
    key_center, key_label, key_noise = jax.random.split(key, 3)
    centers = jax.random.uniform(key_center, (classes, dim), dtype, -spread, spread)
    Y = jax.random.randint(key_label, (n,), 0, classes, jnp.int32)
    X = centers[Y] + std * jax.random.normal(key_noise, (n, dim), dtype)
    return X, Y


# --- digits (scikit-learn) --------------------------------------------------------


def digits(dtype=jnp.float32) -> tuple[Array, Array]:
    """scikit-learn's bundled 8×8 digits: 1,797 images, no download.

    Needs scikit-learn, the ``experiments`` extra.

    Returns:
        X of shape (1797, 64), pixel values scaled from 0..16 to [0, 1], and
        integer labels Y of shape (1797,), in 0..9.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            "manualbp.data.digits needs scikit-learn: pip install manualbp[experiments]"
        ) from error
    bunch = load_digits()
    X = jnp.asarray(bunch.data / 16.0, dtype)
    Y = jnp.asarray(bunch.target, jnp.int32)
    return X, Y


# --- MNIST from IDX files -----------------------------------------------------------

MNIST_ENV = "MANUALBP_MNIST_DIR"
"""The environment variable naming the MNIST directory when no directory is passed."""

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
"""The four standard IDX files; each may also be gzipped (name + ``.gz``)."""

MNIST_MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

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


def mnist_missing_message(directory: str | os.PathLike | None) -> str:
    """What to do when the MNIST files are not found: which files, where to get them."""
    where = (
        f"in {directory}"
        if directory is not None
        else f"(no directory given: pass one or set the environment variable {MNIST_ENV})"
    )
    files = "\n".join(f"  {name}.gz (or {name})" for name in MNIST_FILES.values())
    mirrors = "\n".join(f"  {url}" for url in MNIST_MIRRORS)
    return (
        f"MNIST not found {where}. manualbp downloads nothing; put these four files in one "
        f"directory:\n{files}\nfrom one of the usual mirrors, e.g.\n{mirrors}\n"
        f"and pass that directory or set {MNIST_ENV}=/path/to/mnist."
    )


def _find_idx(directory: Path, name: str) -> Path | None:
    for candidate in (directory / (name + ".gz"), directory / name):
        if candidate.is_file():
            return candidate
    return None


def mnist(
    directory: str | os.PathLike | None = None, dtype=jnp.float32
) -> tuple[tuple[Array, Array], tuple[Array, Array]]:
    """MNIST from the four standard IDX files, gzipped or raw; downloads nothing.

    Args:
        directory: the folder holding the files; defaults to the environment
            variable ``MANUALBP_MNIST_DIR``.
        dtype: the dtype of the images.

    Returns:
        ((X_train, Y_train), (X_test, Y_test)): images flattened to 784 pixels
        scaled to [0, 1] (shapes (60000, 784) and (10000, 784)) and integer
        labels in 0..9.

    Raises:
        FileNotFoundError: a file is missing; the message names the files and
            where to get them.
    """
    if directory is None:
        directory = os.environ.get(MNIST_ENV) or None
    if directory is None:
        raise FileNotFoundError(mnist_missing_message(None))
    return _idx_image_set("MNIST", directory, mnist_missing_message, dtype)


# --- Fashion-MNIST from Debian's dataset-fashion-mnist --------------------------------

FASHION_MNIST_ENV = "MANUALBP_FASHION_MNIST_DIR"
"""The environment variable naming the Fashion-MNIST directory when no directory is passed."""

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where Debian's and Ubuntu's ``dataset-fashion-mnist`` package puts the four IDX files."""

FASHION_MNIST_CLASSES = (
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
"""The class names; label i is ``FASHION_MNIST_CLASSES[i]``."""


def fashion_mnist_missing_message(directory: str | os.PathLike) -> str:
    """What to do when the Fashion-MNIST files are not found: the package, or a directory."""
    files = "\n".join(f"  {name}.gz (or {name})" for name in MNIST_FILES.values())
    return (
        f"Fashion-MNIST not found in {directory}. manualbp downloads nothing; install "
        f"Debian's or Ubuntu's package (it puts the files in {FASHION_MNIST_DIR}):\n"
        f"  sudo apt-get install dataset-fashion-mnist\n"
        f"or put these four files (the same names as MNIST's) in one directory:\n{files}\n"
        f"and pass that directory or set {FASHION_MNIST_ENV}=/path/to/fashion-mnist."
    )


def fashion_mnist(
    directory: str | os.PathLike | None = None, dtype=jnp.float32
) -> tuple[tuple[Array, Array], tuple[Array, Array]]:
    """Fashion-MNIST (Xiao, Rasul, Vollgraf 2017): MNIST's format, ten kinds of clothing.

    Read from the four IDX files of Debian's ``dataset-fashion-mnist``; downloads
    nothing. Labels index `FASHION_MNIST_CLASSES`. The full set loads in about a
    second (decompression dominates).

    Args:
        directory: the folder holding the files; defaults to the environment
            variable ``MANUALBP_FASHION_MNIST_DIR``, then to `FASHION_MNIST_DIR`.
        dtype: the dtype of the images.

    Returns:
        ((X_train, Y_train), (X_test, Y_test)) as `mnist` returns them: shapes
        (60000, 784) and (10000, 784), pixels in [0, 1], integer labels in 0..9.

    Raises:
        FileNotFoundError: a file is missing; the message says how to get them.
    """
    if directory is None:
        directory = os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR
    return _idx_image_set("Fashion-MNIST", directory, fashion_mnist_missing_message, dtype)


MNIST_CLASSES = 10
"""MNIST and Fashion-MNIST both label ten classes, 0..9."""


def _check_labels(path: Path, labels: np.ndarray, classes: int) -> None:
    """Every label a class index 0..classes-1; a stray byte would add classes silently."""
    bad = np.flatnonzero(labels >= classes)
    if bad.size:
        raise ValueError(
            f"{path}: expected class labels 0..{classes - 1}, got {labels[bad[0]]} at index "
            f"{bad[0]} ({bad.size} such labels)"
        )


def _idx_image_set(name: str, directory, missing_message, dtype):
    """The four IDX files of an MNIST-format set: checked, flattened, scaled to [0, 1]."""
    paths = {key: _find_idx(Path(directory), file) for key, file in MNIST_FILES.items()}
    if None in paths.values():
        raise FileNotFoundError(missing_message(directory))
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{name} {split}: expected images (n, rows, cols) and labels (n,), got "
                f"{images.shape} and {labels.shape}"
            )
        for kind, path in (
            ("images", paths[f"{split}_images"]),
            ("labels", paths[f"{split}_labels"]),
        ):
            if arrays[f"{split}_{kind}"].dtype != np.uint8:
                raise ValueError(
                    f"{path}: expected {kind} of unsigned bytes (IDX type 0x08), got "
                    f"{arrays[f'{split}_{kind}'].dtype}"
                )
        _check_labels(paths[f"{split}_labels"], labels, MNIST_CLASSES)

    def prepare(images: np.ndarray, labels: np.ndarray) -> tuple[Array, Array]:
        # Divide in float32 unless float64 is asked for: exact pixel values, one rounding,
        # and a fraction of the time of NumPy's default float64 arithmetic.
        work = np.float64 if jnp.dtype(dtype) == np.float64 else np.float32
        scaled = images.reshape(images.shape[0], -1).astype(work) / work(255)
        return jnp.asarray(scaled, dtype), jnp.asarray(labels, jnp.int32)

    return (
        prepare(arrays["train_images"], arrays["train_labels"]),
        prepare(arrays["test_images"], arrays["test_labels"]),
    )


# --- preparation ---------------------------------------------------------------------


def train_test_split(
    key: Array, X: Array, Y: Array, test_fraction: float = 0.2
) -> tuple[tuple[Array, Array], tuple[Array, Array]]:
    """Shuffle the examples with the key, then hold out ``round(test_fraction · n)`` for testing.

    Returns:
        ((X_train, Y_train), (X_test, Y_test)).
    """
    n = X.shape[0]
    if Y.shape[0] != n:
        raise ValueError(f"X and Y: expected the same number of rows, got {n} and {Y.shape[0]}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected a value in (0, 1), got {test_fraction}")
    n_test = round(test_fraction * n)
    if not 0 < n_test < n:
        raise ValueError(
            f"test_fraction={test_fraction} of {n} examples leaves an empty train or test set"
        )
    order = jax.random.permutation(key, n)
    test, train = order[:n_test], order[n_test:]
    return (X[train], Y[train]), (X[test], Y[test])


def standardize(X_train: Array, *others: Array, eps: float = 1e-8) -> tuple[Array, ...]:
    """Scale each feature to zero mean and unit variance using the training set's statistics.

    The other arrays (test sets) are scaled with the same mean and standard
    deviation, so no test information leaks into training. Constant features
    (std < eps) are only centred.

    Returns:
        (X_train, *others), standardized.
    """
    mean = jnp.mean(X_train, axis=0, keepdims=True)
    std = jnp.std(X_train, axis=0, keepdims=True)
    std = jnp.where(std < eps, jnp.ones_like(std), std)
    return tuple((X - mean) / std for X in (X_train, *others))


def one_hot(labels: Array, classes: int, dtype=jnp.float32) -> Array:
    """Integer labels (n,) as one-hot rows (n, classes); labels outside 0..classes-1 raise."""
    labels = jnp.asarray(labels)
    if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"labels: expected integer labels of shape (n,), got {labels.dtype} {labels.shape}"
        )
    bad = (np.asarray(labels) < 0) | (np.asarray(labels) >= classes)
    if bad.any():
        raise ValueError(f"labels: expected values in 0..{classes - 1}, got {labels[bad][0]}")
    return jax.nn.one_hot(labels, classes, dtype=dtype)
