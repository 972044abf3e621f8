"""The public gradient functions: input checks, then jitted math with the net static.

This is the one place where `jax.jit` and `jax.vmap` wrap the math of
network.py, backprop.py and autodiff.py. Every function here takes a batch:
X of shape (B, N_1), and Y as (B, N_L), as integer class labels (B,) when
N_L > 1 (one-hot encoded), or as (B,) when N_L = 1 (read as the column (B, 1)).
X and Y may be any arrays `np.asarray` turns into numeric ones (pandas
objects, lists); inputs are cast to the parameters' dtype; gradients come
back with the structure and dtype of params.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from manualbp import autodiff, backprop, validation
from manualbp.network import (
    MLP,
    Params,
    as_targets,
    forward_pass_batch,
    mean_loss,
    param_dtype,
)

Array = jax.Array


def in_compute_dtype(net: MLP, params: Params, X: Array, Y: Array | None = None):
    """params, X and Y in one dtype, the parameters' `param_dtype`, with Y as (B, N_L) targets.

    The math then never mixes dtypes (it runs under strict dtype promotion);
    `like_params` casts the results back to each parameter's own dtype.
    """
    dtype = param_dtype(params)
    params = jax.tree.map(lambda p: p.astype(dtype), params)
    X = X.astype(dtype)
    return (params, X) if Y is None else (params, X, as_targets(net, Y, dtype))


def like_params(grads: Params, params: Params) -> Params:
    """Each gradient in its parameter's dtype."""
    return jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)


@functools.partial(jax.jit, static_argnums=0)
def _forward(net: MLP, params: Params, X: Array) -> Array:
    return forward_pass_batch(net, *in_compute_dtype(net, params, X)).a[-1]


@functools.partial(jax.jit, static_argnums=0)
def _loss(net: MLP, params: Params, X: Array, Y: Array) -> Array:
    return mean_loss(net, *in_compute_dtype(net, params, X, Y))


@functools.partial(jax.jit, static_argnums=(0, 4))
def _manual_value_and_grad(net: MLP, params: Params, X: Array, Y: Array, form: str):
    p, X, Y = in_compute_dtype(net, params, X, Y)
    if form == "batched":
        E, grads = backprop.fast_backprop(net, p, X, Y)
    else:
        per_E, per_grads = jax.vmap(backprop.backprop, in_axes=(None, None, 0, 0))(net, p, X, Y)
        E, grads = jnp.mean(per_E), jax.tree.map(lambda g: jnp.mean(g, axis=0), per_grads)
    return E, like_params(grads, params)


@functools.partial(jax.jit, static_argnums=0)
def _autodiff_value_and_grad(net: MLP, params: Params, X: Array, Y: Array):
    E, grads = autodiff.value_and_grad(net, *in_compute_dtype(net, params, X, Y))
    return E, like_params(grads, params)


@functools.partial(jax.jit, static_argnums=0)
def _per_example_grads(net: MLP, params: Params, X: Array, Y: Array) -> Params:
    p, X, Y = in_compute_dtype(net, params, X, Y)
    _, grads = jax.vmap(backprop.backprop, in_axes=(None, None, 0, 0))(net, p, X, Y)
    return like_params(grads, params)


def forward(net: MLP, params: Params, X: Array) -> Array:
    """ŷ = a^L for X (B, N_1); returns (B, N_L)."""
    X, _ = validation.check_batch(net, params, X)
    return _forward(net, params, X)


def loss(net: MLP, params: Params, X: Array, Y: Array) -> Array:
    """The batch mean of the per-example E (fused logits form where there is one)."""
    X, Y = validation.check_batch(net, params, X, Y)
    return _loss(net, params, X, Y)


FORMS = ("batched", "vmap")


def manual_value_and_grad(
    net: MLP, params: Params, X: Array, Y: Array, *, form: str = "batched"
) -> tuple[Array, Params]:
    """The batch-mean E and its gradients by equations (1)–(4) only; no autodiff.

    Args:
        net, params, X, Y: the network, its parameters and a batch.
        form: ``"batched"`` (default) runs `backprop.fast_backprop`, where
            equation (2) sums over the batch inside one matrix product;
            ``"vmap"`` maps the single-example `backprop.backprop` over the
            batch and averages the per-example gradients. Both are tested equal.

    Returns:
        (E, grads), grads with the structure and dtype of params.
    """
    if form not in FORMS:
        raise ValueError(f"form: expected one of {', '.join(FORMS)}, got {form!r}")
    X, Y = validation.check_batch(net, params, X, Y)
    return _manual_value_and_grad(net, params, X, Y, form)


def autodiff_value_and_grad(net: MLP, params: Params, X: Array, Y: Array) -> tuple[Array, Params]:
    """The batch-mean E and its gradients by `jax.value_and_grad` of the same loss."""
    X, Y = validation.check_batch(net, params, X, Y)
    return _autodiff_value_and_grad(net, params, X, Y)


def per_example_grads(net: MLP, params: Params, X: Array, Y: Array) -> Params:
    """Each example's gradients by equations (1)–(4); every leaf has a leading axis B."""
    X, Y = validation.check_batch(net, params, X, Y)
    return _per_example_grads(net, params, X, Y)
