"""Data for manualbp: random batches, the sets, and their preparation.

Every set comes back as ``(X, Y)``: inputs X of shape (n, N_1) in a floating
dtype, and targets Y as integer class labels (n,) for classification sets (use
`one_hot` for (n, N_L) targets) or values (n, N_L) for regression. Synthetic
sets are drawn from a `jax.random` key, so the same key gives the same set.

`random_batch` draws inputs and targets that suit a net's loss, for checking
gradients on nets that have no dataset of their own.

Every name is imported from here. The synthetic sets (xor, two_moons, spirals,
sine, blobs) live in `_data_synthetic`, the IDX reader and the checks of the
MNIST-format files in `_data_idx`; this module says where the MNIST and
Fashion-MNIST files are, and prepares any set (split, standardize, one-hot).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from manualbp import losses
from manualbp._data_idx import MNIST_CLASSES, MNIST_FILES, image_set, read_idx
from manualbp._data_synthetic import blobs, sine, spirals, two_moons, xor
from manualbp.network import MLP

__all__ = [  # the data's surface, whichever module of it a name lives in
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_ENV",
    "MNIST_CLASSES",
    "MNIST_ENV",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "blobs",
    "digits",
    "fashion_mnist",
    "fashion_mnist_missing_message",
    "mnist",
    "mnist_missing_message",
    "one_hot",
    "random_batch",
    "read_idx",
    "sine",
    "spirals",
    "standardize",
    "train_test_split",
    "two_moons",
    "xor",
]

Array = jax.Array


def random_batch(
    net: MLP, key: Array | np.random.Generator, batch: int, dtype=jnp.float32
) -> tuple[Array, Array]:
    """X ~ N(0, 1) of shape (B, N_1) and targets Y that suit the net's loss.

    Targets: integer class labels (B,) for cross-entropy (with N_L > 1),
    0/1 values (B, N_L) for binary cross-entropy, N(0, 1) values (B, N_L)
    otherwise. The one random batch of the verifiers, the benchmarks and the
    tests.

    Args:
        key: a `jax.random` key, or a NumPy ``Generator``: the same
            distributions drawn with NumPy (X first, then Y, from the
            generator's current state), so that no JAX random program compiles.
    """
    N_1, N_L = net.sizes[0], net.sizes[-1]
    if isinstance(key, np.random.Generator):
        X = jnp.asarray(key.normal(size=(batch, N_1)), dtype)
        return X, _numpy_targets(net, key, batch, dtype)
    key_X, key_Y = jax.random.split(key)
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


def _numpy_targets(net: MLP, rng: np.random.Generator, batch: int, dtype) -> Array:
    """`random_batch`'s targets drawn with NumPy."""
    N_L = net.sizes[-1]
    if net.loss is losses.cross_entropy and N_L > 1:
        return jnp.asarray(rng.integers(0, N_L, size=batch))
    if net.loss is losses.cross_entropy:
        return jnp.ones((batch, 1), dtype)
    if net.loss is losses.binary_cross_entropy:
        return jnp.asarray(rng.integers(0, 2, size=(batch, N_L)), dtype)
    return jnp.asarray(rng.normal(size=(batch, N_L)), dtype)


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

MNIST_MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


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
    return image_set("MNIST", directory, mnist_missing_message, dtype)


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
    return image_set("Fashion-MNIST", directory, fashion_mnist_missing_message, dtype)


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
