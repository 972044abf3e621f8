"""The compiled programs of training: one epoch, one private epoch, the evaluation, the check.

One epoch is one program: shuffle with the epoch's key (`shuffle.permutation`,
or the identity order when ``shuffle=False``), then `jax.lax.scan` over the
mini-batches, so no Python runs between steps. A private epoch scans over
⌊n / B̄⌋ steps of a Poisson sample each (`dpsgd`, `poisson`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from manualbp import activations, autodiff, backprop
from manualbp.network import MLP, Params, forward_pass_batch, mean_loss
from manualbp.training import dpsgd, poisson
from manualbp.training.shuffle import permutation

Array = jax.Array


def _value_and_grad(net: MLP, grad: str, params: Params, X: Array, Y: Array):
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
):
    """One epoch: shuffle (or keep the order), then one optimizer step per mini-batch.

    Returns the new params, opt_state and key, each step's loss (before its
    update), and whether every loss and parameter is finite.
    """
    key, key_shuffle = jax.random.split(key)
    steps = X.shape[0] // batch_size
    order = permutation(key_shuffle, X.shape[0]) if shuffle else jnp.arange(X.shape[0])
    order = order[: steps * batch_size]

    def step(carry, rows):
        params, opt_state = carry
        X_b, Y_b = X[rows], Y[rows]
        if batch_sharding is not None:  # data parallel: each device gets B / devices rows
            X_b = jax.lax.with_sharding_constraint(X_b, batch_sharding)
            Y_b = jax.lax.with_sharding_constraint(Y_b, batch_sharding)
        E, grads = _value_and_grad(
            net,
            grad,
            _cast(params, compute_dtype),
            X_b.astype(compute_dtype),
            Y_b.astype(compute_dtype),
        )
        # Gradients go back to each parameter's dtype (float32 under bfloat16
        # compute), so the update accumulates in the parameters' precision.
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        params, opt_state = _update(optimizer, grads, opt_state, params)
        return (params, opt_state), E.astype(X.dtype)

    (params, opt_state), losses = jax.lax.scan(
        step, (params, opt_state), order.reshape(steps, batch_size)
    )
    finite = jnp.all(jnp.isfinite(losses)) & _all_finite(params)
    return params, opt_state, key, losses, finite


def _update(optimizer, grads, opt_state, params):
    # optax mixes Python floats with int32 step counts (Adam's bias correction),
    # which strict dtype promotion refuses; the optimizer is the user's code.
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def _all_finite(params) -> Array:
    finite = jnp.asarray(True)
    for p in jax.tree.leaves(params):
        finite = finite & jnp.all(jnp.isfinite(p))
    return finite


@functools.partial(
    jax.jit,
    static_argnames=(
        "net",
        "optimizer",
        "batch_size",
        "compute_dtype",
        "batch_sharding",
        "privacy",
        "mechanism",
    ),
    donate_argnames=("params", "opt_state"),
)
def private_epoch(
    params,
    opt_state,
    key,
    X,
    Y,
    canaries=None,
    *,
    net,
    optimizer,
    batch_size,
    compute_dtype,
    batch_sharding,
    privacy,
    mechanism=dpsgd.MECHANISM,
):
    """⌊n / B̄⌋ DP-SGD steps (eq. (9′)), each on a Poisson sample at rate q = B̄ / n.

    ``canaries`` (audit only): (coordinates, norm, included) of white-box
    gradient canaries, each of the included ones sampled at rate q like an
    example; their scores, Σ_t of the noised sum at their coordinates, come
    back. ``mechanism`` swaps the clip factors or the noise scale, to audit
    broken variants.

    Returns the new params, opt_state and key, whether every parameter is
    finite, and the canaries' scores (None without canaries). No loss: the
    un-noised loss of the private training data is not released.
    """
    n = X.shape[0]
    rate = batch_size / n
    P = dpsgd.physical_size(privacy, batch_size)
    clip = (privacy.l2_clip, mechanism.clip_factors)
    std = mechanism.noise_std(privacy.noise_multiplier, privacy.l2_clip, batch_size, P)
    key, key_epoch = jax.random.split(key)

    def step(carry, step_key):
        params, opt_state, scores = carry
        key_sample, key_noise, key_canaries = jax.random.split(step_key, 3)
        sample = poisson.sample(key_sample, n, rate)
        inputs = dpsgd.StepInputs(net, X, Y, sample, P, clip, batch_sharding)
        total = dpsgd.sample_sum(inputs, params, compute_dtype)
        if canaries is not None:
            coordinates, norm, included = canaries
            in_step = included & poisson.inclusion(key_canaries, included.shape[0], rate)
            total = dpsgd.add_canaries(total, (coordinates, norm), in_step, clip)
        noised = dpsgd.add_noise(total, key_noise, std)
        if canaries is not None:
            expected = _expected_data_sum(inputs, params, compute_dtype)
            scores = scores + _canary_scores(noised, expected, rate, canaries[0])
        grads = jax.tree.map(lambda g: g / jnp.asarray(batch_size, g.dtype), noised)
        params, opt_state = _update(optimizer, grads, opt_state, params)
        return (params, opt_state, scores), None

    scores = None if canaries is None else jnp.zeros(canaries[0].shape, jnp.float32)
    steps = jax.random.split(key_epoch, n // batch_size)
    (params, opt_state, scores), _ = jax.lax.scan(step, (params, opt_state, scores), steps)
    return params, opt_state, key, _all_finite(params), scores


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


def _expected_data_sum(inputs: dpsgd.StepInputs, params, compute_dtype) -> Params:
    """Σ_b c_b g_b over all n examples, whose share q of it a step adds on average."""
    n = inputs.X.shape[0]
    everyone = inputs._replace(sample=poisson.everyone(n), physical_size=n)
    return dpsgd.sample_sum(everyone, params, compute_dtype)


def _canary_scores(noised: Params, expected: Params, rate: float, coordinates: Array) -> Array:
    """Each canary's score for one step: the noised sum at its coordinate, less the data's
    expected share there, q Σ_b c_b g_b (`_expected_data_sum`).

    The adversary of differential privacy knows every other example and (white box) the
    parameters, so it may subtract what the data add on average; what is left is the
    canary, the noise, and the spread of the data's sampling.
    """
    noised, expected = ravel_pytree(noised)[0], ravel_pytree(expected)[0]
    share = jnp.asarray(rate, expected.dtype) * expected[coordinates]
    return (noised[coordinates] - share).astype(jnp.float32)
