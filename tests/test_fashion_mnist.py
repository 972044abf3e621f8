"""Fashion-MNIST for real: Debian's dataset-fashion-mnist files, loaded and trained on.

Skipped, with the reason, where the package is not installed (`.ci/run` installs
it where apt-get runs as root); the loader's logic is tested on small IDX files
in test_data.py either way.
"""

import time

import jax
import numpy as np
import optax
import pytest

import manualbp as mbp
from manualbp import data


@pytest.fixture(scope="module")
def fashion():
    try:
        started = time.perf_counter()
        loaded = data.fashion_mnist()
        return loaded, time.perf_counter() - started
    except FileNotFoundError:
        pytest.skip(
            "Fashion-MNIST files absent: apt-get install dataset-fashion-mnist, "
            f"or set {data.FASHION_MNIST_ENV}"
        )


def test_the_real_files_have_the_published_shapes(fashion):
    ((X_train, Y_train), (X_test, Y_test)), seconds = fashion
    assert X_train.shape == (60_000, 784) and X_test.shape == (10_000, 784)
    assert X_train.dtype == np.float32 and Y_train.dtype == np.int32
    assert float(X_train.min()) == 0.0 and float(X_train.max()) == 1.0
    # Balanced classes: 6,000 training and 1,000 test images of each kind.
    assert np.bincount(np.asarray(Y_train)).tolist() == [6000] * 10
    assert np.bincount(np.asarray(Y_test)).tolist() == [1000] * 10
    assert seconds < 10, f"loading took {seconds:.1f} s"


def test_a_short_manual_training_run_learns(fashion):
    ((X_train, Y_train), (X_test, Y_test)), _ = fashion
    net = mbp.MLP((784, 32, 10), hidden="relu", output="softmax", loss="cross_entropy")
    key_init, key_train = jax.random.split(jax.random.key(0))
    result = mbp.train(
        net,
        net.init(key_init),
        optax.adam(1e-3),
        X_train[:4000],
        Y_train[:4000],
        epochs=2,
        batch_size=100,
        key=key_train,
        eval_data=(X_test[:2000], Y_test[:2000]),
        progress=False,
    )
    accuracy = result.history[-1]["test_accuracy"]
    assert accuracy > 0.6, f"test accuracy {accuracy} (chance is 0.1)"
    assert result.history[-1]["loss"] < result.history[0]["loss"]
