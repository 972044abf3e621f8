"""The public gradient functions: the forward pass, the loss and its gradients.

Each is built by `_entry.entry_point` (check → jit with the net static →
cast into the compute dtype → math → cast back). Every function here takes a
batch: X of shape (B, N_1), and Y as (B, N_L), as integer class labels (B,)
when N_L > 1 (one-hot encoded), or as (B,) when N_L = 1 (read as the column
(B, 1)). X and Y may be any arrays `np.asarray` turns into numeric ones
(pandas objects, lists); inputs are cast to the parameters' dtype; gradients
come back with the structure and dtype of params.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from manualbp import autodiff, backprop, validation
from manualbp._entry import as_computed, entry_point, value_like_params
from manualbp.network import MLP, Params, forward_pass_batch, mean_loss

Array = jax.Array

FORMS = ("batched", "vmap")


def _y_hat(net, params, X, Y):
    return forward_pass_batch(net, params, X).a[-1]


def _manual(net, params, X, Y, form):
    if form == "batched":
        return backprop.fast_backprop(net, params, X, Y)
    per_E, per_grads = jax.vmap(backprop.backprop, in_axes=(None, None, 0, 0))(net, params, X, Y)
    return jnp.mean(per_E), jax.tree.map(lambda g: jnp.mean(g, axis=0), per_grads)


def _per_example(net, params, X, Y):
    return jax.vmap(backprop.backprop, in_axes=(None, None, 0, 0))(net, params, X, Y)[1]


def _check_form(net, params, X, Y, form):
    if form not in FORMS:
        raise ValueError(f"form: expected one of {', '.join(FORMS)}, got {form!r}")
    return (*validation.check_batch(net, params, X, Y), form)


_forward = entry_point(_y_hat, validation.check_batch, back=as_computed)
_loss = entry_point(mean_loss, validation.check_batch, back=as_computed)
_manual_value_and_grad = entry_point(_manual, _check_form, static=(0,), back=value_like_params)
_autodiff_value_and_grad = entry_point(
    autodiff.value_and_grad, validation.check_batch, back=value_like_params
)
_per_example_grads = entry_point(_per_example, validation.check_batch)


def forward(net: MLP, params: Params, X: Array) -> Array:
    """ŷ = a^L for X (B, N_1); returns (B, N_L)."""
    return _forward(net, params, X, None)


def loss(net: MLP, params: Params, X: Array, Y: Array) -> Array:
    """The batch mean of the per-example E (fused logits form where there is one)."""
    return _loss(net, params, X, Y)


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
    return _manual_value_and_grad(net, params, X, Y, form)


def autodiff_value_and_grad(net: MLP, params: Params, X: Array, Y: Array) -> tuple[Array, Params]:
    """The batch-mean E and its gradients by `jax.value_and_grad` of the same loss."""
    return _autodiff_value_and_grad(net, params, X, Y)


def per_example_grads(net: MLP, params: Params, X: Array, Y: Array) -> Params:
    """Each example's gradients by equations (1)–(4); every leaf has a leading axis B."""
    return _per_example_grads(net, params, X, Y)
