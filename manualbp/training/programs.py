"""The compiled programs of training: one epoch, the evaluation, the gradient check.

One epoch is one program: shuffle with the epoch's key (`shuffle.permutation`,
or the identity order when ``shuffle=False``), then `jax.lax.scan` over the
mini-batches, so no Python runs between steps.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from manualbp import activations, autodiff, backprop
from manualbp.network import MLP, Params, forward_pass_batch, mean_loss
from manualbp.training import privacy as dp
from manualbp.training.shuffle import permutation

Array = jax.Array


def _value_and_grad(net: MLP, grad: str, privacy, params: Params, X: Array, Y: Array):
    if privacy is not None:
        return dp.clipped_value_and_grad(privacy, net, params, X, Y)  # equations (5), (8), (9)
    if grad == "manual":
        return backprop.fast_backprop(net, params, X, Y)  # equations (1)-(4)
    return autodiff.value_and_grad(net, params, X, Y)


def _cast(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype), tree)


@functools.partial(
    jax.jit,
    static_argnames=(
        "net",
        "optimizer",
        "grad",
        "batch_size",
        "compute_dtype",
        "batch_sharding",
        "shuffle",
        "privacy",
    ),
    donate_argnames=("params", "opt_state"),
)
def epoch(
    params,
    opt_state,
    key,
    X,
    Y,
    *,
    net,
    optimizer,
    grad,
    batch_size,
    compute_dtype,
    batch_sharding,
    shuffle,
    privacy=None,
):
    """One epoch: shuffle (or keep the order), then one optimizer step per mini-batch.

    With ``privacy`` (a `privacy.DPSGD`), each step's gradient is the clipped
    one plus noise drawn with a key of its own, derived from the epoch's key.

    Returns the new params, opt_state and key, each step's loss (before its
    update), and whether every loss and parameter is finite.
    """
    key, key_shuffle = jax.random.split(key)
    steps = X.shape[0] // batch_size
    order = permutation(key_shuffle, X.shape[0]) if shuffle else jnp.arange(X.shape[0])
    order = order[: steps * batch_size]
    noise_keys = None
    if privacy is not None:  # folded off, so the run's keys and batches stay those of a plain run
        noise_keys = jax.random.split(jax.random.fold_in(key_shuffle, 1), steps)

    def step(carry, xs):
        params, opt_state = carry
        rows, noise_key = xs
        X_b, Y_b = X[rows], Y[rows]
        if batch_sharding is not None:  # data parallel: each device gets B / devices rows
            X_b = jax.lax.with_sharding_constraint(X_b, batch_sharding)
            Y_b = jax.lax.with_sharding_constraint(Y_b, batch_sharding)
        E, grads = _value_and_grad(
            net,
            grad,
            privacy,
            _cast(params, compute_dtype),
            X_b.astype(compute_dtype),
            Y_b.astype(compute_dtype),
        )
        # Gradients go back to each parameter's dtype (float32 under bfloat16
        # compute), so the update accumulates in the parameters' precision.
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        if privacy is not None:
            grads = dp.add_noise(privacy, grads, noise_key, batch_size)
        # optax mixes Python floats with int32 step counts (Adam's bias correction),
        # which strict dtype promotion refuses; the optimizer is the user's code.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), E.astype(X.dtype)

    (params, opt_state), losses = jax.lax.scan(
        step, (params, opt_state), (order.reshape(steps, batch_size), noise_keys)
    )
    finite = jnp.all(jnp.isfinite(losses))
    for p in jax.tree.leaves(params):
        finite = finite & jnp.all(jnp.isfinite(p))
    return params, opt_state, key, losses, finite


@functools.partial(jax.jit, static_argnames="net")
def evaluate(params, X, Y, *, net):
    """The mean loss on (X, Y) and, for a classifier, the accuracy (else NaN)."""
    E = mean_loss(net, params, X, Y)
    if not net.classifier:
        return E, jnp.nan
    y_hat = forward_pass_batch(net, params, X).a[-1]
    if net.output is activations.softmax:
        correct = jnp.argmax(y_hat, axis=1) == jnp.argmax(Y, axis=1)
    else:  # sigmoid outputs, one yes/no decision per output
        correct = (y_hat > 0.5) == (Y > 0.5)
    return E, jnp.mean(correct)


@functools.partial(jax.jit, static_argnames="net")
def both_grads(params, X, Y, *, net):
    """Manual and autodiff gradients of the same batch loss, and the size of the terms
    they sum (`tolerance.tree_errors`), for ``check_every``."""
    return (
        backprop.fast_backprop(net, params, X, Y)[1],
        autodiff.value_and_grad(net, params, X, Y)[1],
        autodiff.gradient_magnitudes(net, params, X, Y),
    )
