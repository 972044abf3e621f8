"""The benchmark's training rows: `manualbp.train`'s epoch throughput, and the textbook loop's.

Nielsen's chapter-1 network (`TRAINING`) trained with SGD, η = 3, at each
mini-batch size of `TRAINING_BATCHES`: manual and autodiff gradients through
`manualbp.train`, `TRAINING_EPOCHS` epochs per timed call, and one epoch of
the textbook NumPy loop (`numpy_sgd_epoch`), in the same interleaved rounds.
Import them from `manualbp.tools.bench`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import manualbp as mbp
from manualbp.tools import timing
from manualbp.tools.bench_configs import TRAINING, TRAINING_BATCHES, TRAINING_EPOCHS, TRAINING_ETA


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def numpy_sgd_epoch(
    params: list[tuple[np.ndarray, np.ndarray]],
    X: np.ndarray,
    Y: np.ndarray,
    batch_size: int,
    eta: float,
    rng: np.random.Generator,
) -> None:
    """One epoch of the textbook loop, in place: sigmoid layers, E = ½‖ŷ − y‖², plain SGD.

    One example at a time, as Nielsen's ``network.py``: forward storing every z^l
    and a^l, δ^L by eq. (4), δ^l by eq. (1), ∂E/∂W^l and ∂E/∂b^l by eqs. (2), (3),
    summed over the mini-batch, then W ← W − η/m Σ ∂E/∂W. The baseline for the
    training throughput of `manualbp.training`.
    """
    order = rng.permutation(len(X))
    for start in range(0, len(X) - batch_size + 1, batch_size):
        sum_dW = [np.zeros_like(W) for W, _ in params]
        sum_db = [np.zeros_like(b) for _, b in params]
        for i in order[start : start + batch_size]:
            zs, as_ = [], [X[i]]
            for W, b in params:
                zs.append(W @ as_[-1] + b)
                as_.append(_sigmoid(zs[-1]))
            delta = (as_[-1] - Y[i]) * as_[-1] * (1 - as_[-1])  # eq. (4), σ' = a(1 − a)
            for k in reversed(range(len(params))):
                sum_dW[k] += np.outer(delta, as_[k])  # eq. (2)
                sum_db[k] += delta  # eq. (3)
                if k > 0:
                    delta = (params[k][0].T @ delta) * as_[k] * (1 - as_[k])  # eq. (1)
        for k, (W, b) in enumerate(params):
            W -= eta / batch_size * sum_dW[k]
            b -= eta / batch_size * sum_db[k]


class _Training(NamedTuple):
    """What every timed training call starts from: the net, its params, the optimizer, the data."""

    net: mbp.MLP
    params: mbp.Params
    optimizer: optax.GradientTransformation
    X: jax.Array
    Y: jax.Array


def _train_epochs(start: _Training, batch_size: int, grad: str):
    """One timed call: `TRAINING_EPOCHS` epochs of `manualbp.train` from the same start."""
    return mbp.train(
        start.net,
        start.params,
        start.optimizer,
        start.X,
        start.Y,
        epochs=TRAINING_EPOCHS,
        batch_size=batch_size,
        key=jax.random.key(2),
        grad=grad,
        progress=False,
    ).params


def bench_training(*, n_train: int, n_numpy: int, repeats: int) -> dict:
    """Epoch throughput (samples/s): `manualbp.training` manual vs autodiff, and the NumPy loop.

    One row per mini-batch size in ``TRAINING_BATCHES``: the textbook's 10, where
    each step is too small to keep the machine busy, and 100. The three run in
    the same interleaved rounds (the NumPy loop on the first ``n_numpy``
    examples), so both ratios are also taken round by round.
    """
    config = TRAINING
    result = {"config": dataclasses.asdict(config), "eta": TRAINING_ETA, "n_train": n_train}
    net = config.net()
    params = net.init(jax.random.key(0), scheme="nielsen")
    key_X, key_Y = jax.random.split(jax.random.key(1))
    X = jax.random.uniform(key_X, (n_train, config.sizes[0]), jnp.float32)
    labels = jax.random.randint(key_Y, (n_train,), 0, config.sizes[-1])
    Y = jax.nn.one_hot(labels, config.sizes[-1], dtype=jnp.float32)
    X_np, Y_np = np.asarray(X[:n_numpy]), np.asarray(Y[:n_numpy])
    optimizer = optax.sgd(TRAINING_ETA)  # one object, so the compiled epoch is reused
    start = _Training(net, params, optimizer, X, Y)

    result["batches"] = []
    for batch_size in TRAINING_BATCHES:
        np_params = [(np.array(W), np.array(b)) for W, b in params]
        rng = np.random.default_rng(0)
        fns = {
            grad: functools.partial(_train_epochs, start, batch_size, grad)
            for grad in ("manual", "autodiff")
        }
        fns["numpy"] = functools.partial(
            numpy_sgd_epoch, np_params, X_np, Y_np, batch_size, TRAINING_ETA, rng
        )
        first = timing.first_calls(fns)
        times = timing.interleaved(fns, repeats)
        samples = {
            "manual": TRAINING_EPOCHS * (n_train // batch_size * batch_size),
            "autodiff": TRAINING_EPOCHS * (n_train // batch_size * batch_size),
            "numpy": n_numpy // batch_size * batch_size,
        }
        result["batches"].append(_training_row(batch_size, times, first, samples))
    return result


def _training_row(batch_size: int, times: dict, first: dict, samples: dict) -> dict:
    """One mini-batch size: each trainer's samples/s, and manual's ratios to the others."""
    row = {"batch_size": batch_size}
    for name in times:
        summary = timing.summary(times[name], first[name])
        summary["samples"] = samples[name]
        summary["samples_per_s"] = samples[name] / summary["median_s"]
        row[name] = summary
    row["ratio_manual_over_autodiff"] = (
        row["manual"]["samples_per_s"] / row["autodiff"]["samples_per_s"]
    )
    row["ratio_manual_over_numpy"] = row["manual"]["samples_per_s"] / row["numpy"]["samples_per_s"]
    # Throughput ratios round by round: (samples / t_manual) / (samples' / t_other).
    row["paired_manual_over_autodiff"] = timing.paired_ratio(times["autodiff"], times["manual"])
    row["paired_manual_over_numpy"] = timing.paired_ratio(
        times["numpy"], times["manual"], scale=samples["manual"] / samples["numpy"]
    )
    return row
