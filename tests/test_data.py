"""manualbp.data: synthetic sets, digits, the MNIST and Fashion-MNIST IDX loaders, preparation."""

from __future__ import annotations

import builtins
import gzip
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manualbp import data

SYNTHETIC = {
    "xor": lambda key: data.xor(key, n=12, noise=0.1),
    "two_moons": lambda key: data.two_moons(key, n=12),
    "spirals": lambda key: data.spirals(key, n=12, classes=3),
    "sine": lambda key: data.sine(key, n=12, noise=0.1),
    "blobs": lambda key: data.blobs(key, n=12, classes=3, dim=4),
}

# (input width, targets shape after n, number of classes or None for regression)
EXPECTED = {
    "xor": (2, (), 2),
    "two_moons": (2, (), 2),
    "spirals": (2, (), 3),
    "sine": (1, (1,), None),
    "blobs": (4, (), 3),
}


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_synthetic_shapes_dtypes_and_determinism(name, key):
    X, Y = SYNTHETIC[name](key)
    width, y_shape, classes = EXPECTED[name]
    assert X.shape == (12, width) and X.dtype == jnp.float32
    assert Y.shape == (12, *y_shape)
    assert bool(jnp.all(jnp.isfinite(X)))
    if classes is None:
        assert Y.dtype == jnp.float32
    else:
        assert Y.dtype == jnp.int32
        assert set(np.asarray(Y).tolist()) <= set(range(classes))
    X_again, Y_again = SYNTHETIC[name](key)
    assert np.array_equal(X, X_again) and np.array_equal(Y, Y_again)
    X_other, _ = SYNTHETIC[name](jax.random.key(1))
    assert not np.array_equal(X, X_other)


def test_xor_without_noise_is_the_truth_table(key):
    X, Y = data.xor(key)
    assert np.array_equal(X, [[0, 0], [0, 1], [1, 0], [1, 1]])
    assert np.array_equal(Y, [0, 1, 1, 0])


def test_sine_targets_are_sin_of_inputs_without_noise(key):
    X, Y = data.sine(key, n=12)
    np.testing.assert_allclose(Y, np.sin(X), rtol=1e-6, atol=1e-6)
    assert float(jnp.min(X)) >= -np.pi and float(jnp.max(X)) <= np.pi


def test_digits_shapes_and_range():
    pytest.importorskip("sklearn")
    X, Y = data.digits()
    assert X.shape == (1797, 64) and X.dtype == jnp.float32
    assert Y.shape == (1797,) and Y.dtype == jnp.int32
    assert float(jnp.min(X)) == 0.0 and float(jnp.max(X)) == 1.0
    assert set(np.asarray(Y).tolist()) == set(range(10))


def test_digits_without_sklearn_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(ImportError, match=r"pip install manualbp\[experiments\]"):
        data.digits()


# --- MNIST IDX files --------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file for a uint8 array: 0, 0, type 0x08, ndim, big-endian sizes, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(directory, n_train=5, n_test=3, gzipped=True):
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)),
        "train_labels": rng.integers(0, 10, (n_train,)),
        "test_images": rng.integers(0, 256, (n_test, 28, 28)),
        "test_labels": rng.integers(0, 10, (n_test,)),
    }
    for key, name in data.MNIST_FILES.items():
        raw = idx_bytes(arrays[key])
        if gzipped:
            (directory / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (directory / name).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("gzipped", [True, False], ids=["gzip", "raw"])
def test_mnist_loads_idx_files(tmp_path, gzipped):
    arrays = write_mnist(tmp_path, gzipped=gzipped)
    (X_train, Y_train), (X_test, Y_test) = data.mnist(tmp_path)
    assert X_train.shape == (5, 784) and X_test.shape == (3, 784)
    assert X_train.dtype == jnp.float32 and Y_train.dtype == jnp.int32
    np.testing.assert_allclose(X_train, arrays["train_images"].reshape(5, 784) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(X_test, arrays["test_images"].reshape(3, 784) / 255.0, rtol=1e-6)
    assert np.array_equal(Y_train, arrays["train_labels"])
    assert np.array_equal(Y_test, arrays["test_labels"])


def test_mnist_directory_from_the_environment(tmp_path, monkeypatch):
    write_mnist(tmp_path)
    monkeypatch.setenv(data.MNIST_ENV, str(tmp_path))
    (X_train, _), _ = data.mnist()
    assert X_train.shape == (5, 784)


def test_mnist_missing_files_say_which_and_where(tmp_path, monkeypatch):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as error:
        data.mnist(tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message
    for name in data.MNIST_FILES.values():
        assert name in message
    assert data.MNIST_MIRRORS[0] in message and data.MNIST_ENV in message

    monkeypatch.delenv(data.MNIST_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=data.MNIST_ENV):
        data.mnist()


def test_fashion_mnist_reads_the_same_format(tmp_path, monkeypatch):
    arrays = write_mnist(tmp_path, gzipped=False)
    (X_train, Y_train), (X_test, _) = data.fashion_mnist(tmp_path)
    assert X_train.shape == (5, 784) and X_test.shape == (3, 784)
    np.testing.assert_allclose(X_train, arrays["train_images"].reshape(5, 784) / 255.0, rtol=1e-6)
    assert np.array_equal(Y_train, arrays["train_labels"])
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(tmp_path))
    (X_env, _), _ = data.fashion_mnist()
    assert np.array_equal(X_env, X_train)
    assert len(data.FASHION_MNIST_CLASSES) == 10


def test_fashion_mnist_missing_files_say_how_to_get_them(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as error:
        data.fashion_mnist(tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message and "apt-get install dataset-fashion-mnist" in message
    assert data.FASHION_MNIST_ENV in message and "train-images-idx3-ubyte" in message
    # Without a directory or the variable, the Debian path is the default.
    monkeypatch.delenv(data.FASHION_MNIST_ENV, raising=False)
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="absent"):
        data.fashion_mnist()


def test_read_idx_rejects_bad_files(tmp_path):
    bad_magic = tmp_path / "bad"
    bad_magic.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 2) + b"\x00\x00")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(bad_magic)
    truncated = tmp_path / "short"
    truncated.write_bytes(idx_bytes(np.zeros((4, 2), np.uint8))[:-3])
    with pytest.raises(ValueError, match=r"shape \(4, 2\)"):
        data.read_idx(truncated)


def test_labels_outside_the_ten_classes_or_not_bytes_are_refused(tmp_path):
    arrays = write_mnist(tmp_path, gzipped=False)
    labels = arrays["train_labels"].copy()
    labels[3] = 255  # one stray byte would make a 256-class net
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte: expected class labels 0..9, "
                       r"got 255 at index 3"):  # fmt: skip
        data.fashion_mnist(tmp_path)
    as_float = arrays["test_labels"].astype(">f4") + 0.9  # IDX type 0x0D, would be truncated
    header = struct.pack(">BBBBI", 0, 0, 0x0D, 1, as_float.size)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(header + as_float.tobytes())
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(arrays["train_labels"]))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte: expected labels of unsigned "
                       r"bytes \(IDX type 0x08\), got >f4"):  # fmt: skip
        data.mnist(tmp_path)


def test_a_truncated_or_corrupted_gzip_names_the_file(tmp_path):
    write_mnist(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    whole = images.read_bytes()
    images.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=f"{images}: the gzip data is damaged"):
        data.mnist(tmp_path)
    corrupted = bytearray(whole)
    corrupted[-8] ^= 0xFF  # the CRC-32 in the gzip trailer
    images.write_bytes(bytes(corrupted))
    with pytest.raises(ValueError, match=f"{images}: the gzip data is damaged .*CRC check failed"):
        data.mnist(tmp_path)
    images.write_bytes(whole)
    assert data.mnist(tmp_path)[0][0].shape == (5, 784)


# --- preparation -------------------------------------------------------------------


def test_train_test_split_partitions_the_examples(key):
    X = jnp.arange(20, dtype=jnp.float32).reshape(10, 2)
    Y = jnp.arange(10, dtype=jnp.int32)
    (X_train, Y_train), (X_test, Y_test) = data.train_test_split(key, X, Y, test_fraction=0.3)
    assert X_train.shape == (7, 2) and X_test.shape == (3, 2)
    # Rows stay paired with their labels, and every example lands in exactly one set.
    assert np.array_equal(X_train[:, 0], 2 * Y_train) and np.array_equal(X_test[:, 0], 2 * Y_test)
    assert sorted(np.concatenate([Y_train, Y_test]).tolist()) == list(range(10))
    (_, Y_train_again), _ = data.train_test_split(key, X, Y, test_fraction=0.3)
    assert np.array_equal(Y_train, Y_train_again)


def test_train_test_split_rejects_empty_sides(key):
    X, Y = jnp.zeros((3, 2)), jnp.zeros((3,), jnp.int32)
    with pytest.raises(ValueError, match="empty"):
        data.train_test_split(key, X, Y, test_fraction=0.1)
    with pytest.raises(ValueError, match="same number of rows"):
        data.train_test_split(key, X, Y[:2])


def test_standardize_uses_the_training_statistics():
    X_train = jnp.array([[1.0, 5.0], [3.0, 5.0]])
    X_test = jnp.array([[2.0, 6.0]])
    S_train, S_test = data.standardize(X_train, X_test)
    # Column 0: mean 2, std 1. Column 1 is constant: only centred.
    np.testing.assert_allclose(S_train, [[-1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(S_test, [[0.0, 1.0]])


def test_one_hot():
    np.testing.assert_array_equal(data.one_hot(jnp.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])
    with pytest.raises(ValueError, match=r"0\.\.2"):
        data.one_hot(jnp.array([3]), 3)
    with pytest.raises(ValueError, match="integer labels"):
        data.one_hot(jnp.array([0.0]), 3)


@pytest.mark.parametrize(
    "output, loss",
    [
        ("softmax", "cross_entropy"),
        ("sigmoid", "cross_entropy"),
        ("sigmoid", "binary_cross_entropy"),
        ("identity", "mse"),
    ],
)
def test_random_batch_draws_alike_from_a_key_and_from_a_numpy_generator(output, loss):
    from manualbp.network import MLP

    sizes = (3, 4, 1) if (output, loss) == ("sigmoid", "cross_entropy") else (3, 4, 2)
    net = MLP(sizes, "tanh", output, loss)
    from_key = data.random_batch(net, jax.random.key(0), 6, jnp.float32)
    from_rng = data.random_batch(net, np.random.default_rng(0), 6, jnp.float32)
    for a, b in zip(from_key, from_rng, strict=True):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)
    Y = np.asarray(from_rng[1])
    if loss == "cross_entropy" and sizes[-1] > 1:
        assert set(np.unique(Y)) <= {0, 1}
    elif loss == "cross_entropy":
        assert np.all(Y == 1)
    elif loss == "binary_cross_entropy":
        assert set(np.unique(Y)) <= {0.0, 1.0}
    else:
        assert len(np.unique(Y)) == Y.size  # N(0, 1) draws
    again = data.random_batch(net, np.random.default_rng(0), 6, jnp.float32)
    assert all(np.array_equal(a, b) for a, b in zip(from_rng, again, strict=True))
