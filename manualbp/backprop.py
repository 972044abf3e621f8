"""Equations (1)–(4) of docs/derivation.md and the backward pass that composes them.

Each equation is one small pure function on one example, with the
derivation's symbols and math shapes (vectors (N_l,), W^l of shape
(N_l, N_{l-1})). `backprop` composes them in the derivation's order:

1. forward pass, storing every z^l and a^l      (network.forward_pass)
2. δ^L by equation (4)                           (output_delta)
3. δ^l for l = L-1..2 by equation (1)            (hidden_delta)
4. ∂E/∂W^l and ∂E/∂b^l by equations (2), (3)     (weight_grad, bias_grad)

Steps 3 and 4 are one function, `backward`, from a given δ^L with the
equations plugged in: the gradient, the per-example extensions and the
curvature passes all call it with their own δ^L (or factor) and equations.

`fast_backprop` is the same computation for a batch (B rows), written so that
equation (2)'s sum over the batch happens inside one matrix product and no
per-example gradient is ever materialized; `backward_with_deltas` also returns every
Δ^l and accepts another set of `Equations`, which is how `verify` checks a
derivation of one's own. Nothing here calls autodiff.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from manualbp.activations import Activation
from manualbp.network import (
    MLP,
    Forward,
    Layer,
    Params,
    example_loss,
    forward_pass,
    forward_pass_batch,
    mean_loss_of,
)

Array = jax.Array


def sigma_prime(sigma: Activation, z: Array, a: Array) -> Array:
    """σ^l'(z^l), through the stored a^l = σ^l(z^l) where that is cheaper."""
    if sigma.deriv_from_output is not None:
        return sigma.deriv_from_output(a)
    return sigma.deriv(z)


def output_delta(dE_dyhat: Array, z: Array, sigma: Activation) -> Array:
    """Eq. (4): δ^L = ∂E/∂ŷ ⊙ σ^L'(z^L). Shapes: (N_L,).

    For a σ^L that is not componentwise (softmax) the ⊙ becomes the transposed
    Jacobian, δ^L = J_σ(z^L)ᵀ ∂E/∂ŷ (see activations.py).
    """
    if sigma.elementwise:
        return dE_dyhat * sigma.deriv(z)
    if sigma.jac_t_dot is not None:
        return sigma.jac_t_dot(z, dE_dyhat)
    return sigma.deriv(z).T @ dE_dyhat


def hidden_delta(delta_next: Array, W_next: Array, sigma_prime_z: Array) -> Array:
    """Eq. (1): δ^l = (W^{l+1})ᵀ δ^{l+1} ⊙ σ^l'(z^l). Shapes: (N_l,).

    Args:
        delta_next: δ^{l+1}, shape (N_{l+1},).
        W_next: W^{l+1}, shape (N_{l+1}, N_l).
        sigma_prime_z: σ^l'(z^l), shape (N_l,).
    """
    return (W_next.T @ delta_next) * sigma_prime_z


def weight_grad(delta: Array, a_prev: Array) -> Array:
    """Eq. (2): ∂E/∂W^l_kj = δ^l_k a^{l-1}_j, i.e. δ^l (a^{l-1})ᵀ. Shape: (N_l, N_{l-1})."""
    return jnp.outer(delta, a_prev)


def bias_grad(delta: Array) -> Array:
    """Eq. (3): ∂E/∂b^l = δ^l. Shape: (N_l,)."""
    return delta


def delta_L(net: MLP, z_L: Array, y_hat: Array, y: Array) -> Array:
    """Step 2: δ^L for one example, fused (ŷ − y) where the pair allows it, else eq. (4)."""
    fused = net.fused_loss
    if net.fused and fused is not None:
        return fused.delta(z_L, y)
    return output_delta(net.loss.grad(y_hat, y), z_L, net.output)


def backward(
    net: MLP, params: Params, fwd: Forward, delta_L, hidden: Callable, layer: Callable
) -> tuple[tuple, tuple]:
    """Steps 3–4 of docs/derivation.md, from a given δ^L down to layer 2: the one recursion.

    For l = L..2, ``layer(δ^l, a^{l-1}, k)`` gives layer l's result (eqs. (2)
    and (3), or a quantity that takes their place) and, above layer 2,
    ``hidden(δ^l, W^l, σ^{l-1}'(z^{l-1}), k)`` gives δ^{l-1} (eq. (1), or a
    recursion built on it). k is the index of ``params[k]``, layer l = k + 2,
    so that an equation needing more of layer l-1 finds it at ``fwd.z[k]``.
    δ may be one example's (N_l,), a batch's (B, N_l), or any pytree the
    equations carry down together (a factor S^l, or (H^l, Δ^l)).

    Returns:
        (results, deltas), both in params order: ``layer``'s result and the
        δ it was given, for every layer l = 2..L.
    """
    delta, results, deltas = delta_L, [None] * len(params), [None] * len(params)
    for k in reversed(range(len(params))):  # params[k] is layer l = k + 2, from L down to 2
        deltas[k] = delta
        results[k] = layer(delta, fwd.a[k], k)  # step 4; fwd.a[k] is a^{l-1}
        if k > 0:  # step 3: δ^{l-1}; none is needed for the input layer
            sigma_prime_z = sigma_prime(net.activations[k - 1], fwd.z[k], fwd.a[k])
            delta = hidden(delta, params[k].W, sigma_prime_z, k)
    return tuple(results), tuple(deltas)


def gradient_steps(
    hidden_delta: Callable, weight_grad: Callable, bias_grad: Callable
) -> tuple[Callable, Callable]:
    """`backward`'s ``hidden`` and ``layer`` from eq. (1) and eqs. (2), (3)."""

    def hidden(delta_next, W_next, sigma_prime_z, k):
        return hidden_delta(delta_next, W_next, sigma_prime_z)

    def layer(delta, a_prev, k):
        dW, db = weight_grad(delta, a_prev), bias_grad(delta)
        return Layer(W=dW, b=db)

    return hidden, layer


def backprop(net: MLP, params: Params, x: Array, y: Array) -> tuple[Array, Params]:
    """E and its gradients for one example, by equations (1)–(4).

    Args:
        net: the network.
        params: its parameters; ``params[k]`` is layer l = k + 2.
        x: the input a^1, shape (N_1,).
        y: the target, shape (N_L,).

    Returns:
        (E, grads), grads with the structure of params.
    """
    fwd = forward_pass(net, params, x)  # step 1
    delta = delta_L(net, fwd.z[-1], fwd.a[-1], y)  # step 2
    steps = gradient_steps(hidden_delta, weight_grad, bias_grad)
    grads, _ = backward(net, params, fwd, delta, *steps)  # steps 3, 4
    return example_loss(net, fwd.z[-1], fwd.a[-1], y), grads


# --- the batched form -----------------------------------------------------------
#
# Rows are examples: Z^l and Δ^l have shape (B, N_l), and row b of Δ^l is δ^l of
# example b. The batch loss is the mean of the per-example E, so equations (2)
# and (3) for the batch are the means of the per-example ones over the rows.


def hidden_delta_batch(delta_next: Array, W_next: Array, sigma_prime_z: Array) -> Array:
    """Eq. (1) for a batch: Δ^l = Δ^{l+1} W^{l+1} ⊙ σ^l'(Z^l). Shapes: (B, N_l)."""
    return (delta_next @ W_next) * sigma_prime_z


def weight_grad_batch(delta: Array, a_prev: Array) -> Array:
    """Eq. (2) averaged over the batch: (1/B) Σ_b δ^l_b (a^{l-1}_b)ᵀ = (Δ^l)ᵀ A^{l-1} / B.

    One matrix product sums over the batch; no per-example gradient is formed.
    Shape: (N_l, N_{l-1}).
    """
    return (delta.T @ a_prev) / delta.shape[0]


def bias_grad_batch(delta: Array) -> Array:
    """Eq. (3) averaged over the batch: (1/B) Σ_b δ^l_b. Shape: (N_l,)."""
    return jnp.mean(delta, axis=0)


def delta_L_batch(net: MLP, z_L: Array, y_hat: Array, Y: Array) -> Array:
    """Step 2 for a batch by eq. (4), fused where allowed. Shape: (B, N_L), row b is δ^L_b."""
    fused = net.fused_loss
    if net.fused and fused is not None:
        return fused.delta(z_L, Y)
    dE_dyhat = jax.vmap(net.loss.grad)(y_hat, Y)
    return jax.vmap(lambda g, z: output_delta(g, z, net.output))(dE_dyhat, z_L)


class Equations(NamedTuple):
    """The batched equations the backward pass composes; `verify` checks any such set.

    Attributes:
        output_delta: eq. (4), ``(net, Z^L, Ŷ, Y) -> Δ^L``.
        hidden_delta: eq. (1), ``(Δ^{l+1}, W^{l+1}, σ^l'(Z^l)) -> Δ^l``.
        weight_grad: eq. (2), ``(Δ^l, A^{l-1}) -> ∂E/∂W^l`` of the batch-mean E.
        bias_grad: eq. (3), ``(Δ^l) -> ∂E/∂b^l`` of the batch-mean E.
    """

    output_delta: Callable
    hidden_delta: Callable
    weight_grad: Callable
    bias_grad: Callable


EQUATIONS = Equations(delta_L_batch, hidden_delta_batch, weight_grad_batch, bias_grad_batch)


def backward_with_deltas(
    net: MLP, params: Params, X: Array, Y: Array, equations: Equations = EQUATIONS
) -> tuple[Array, Params, tuple[Array, ...]]:
    """Steps 1–4 for a batch, also returning every Δ^l.

    Returns:
        (mean E, grads of mean E, deltas) with ``deltas[k]`` = Δ^{k+2}, shape
        (B, N_{k+2}), one δ per example.
    """
    fwd = forward_pass_batch(net, params, X)  # step 1
    delta = equations.output_delta(net, fwd.z[-1], fwd.a[-1], Y)  # step 2
    steps = gradient_steps(equations.hidden_delta, equations.weight_grad, equations.bias_grad)
    grads, deltas = backward(net, params, fwd, delta, *steps)  # steps 3, 4
    return mean_loss_of(net, fwd, Y), grads, deltas


# --- the fast batched form ----------------------------------------------------------
#
# The same equations, arranged for speed. The 1/B of the batch mean is applied
# once, to Δ^L, instead of in (2) and (3) at every layer. Equation (1) is linear
# in Δ^{l+1}, so every later Δ^l carries the 1/B too, and (2) and (3) become
# plain sums over the rows. Why: with the mean taken per layer, XLA scales each
# ∂E/∂W^l in a pass of its own after the matrix product (an extra kernel and an
# extra N_l × N_{l-1} buffer per layer); scaled once, the 1/B fuses into the
# kernel that forms Δ^L, as in jax.grad's program. Tested equal to
# `backward_with_deltas` with `EQUATIONS`.


def weight_grad_sum(delta: Array, a_prev: Array) -> Array:
    """Eq. (2) summed over the batch: ∂E/∂W^l_kj = Σ_b δ^l_bk a^{l-1}_bj = ((Δ^l)ᵀ A^{l-1})_kj.

    Shape: (N_l, N_{l-1}).
    """
    # The einsum is the sum as written. For a 1-wide A^{l-1}, XLA on CPU turned
    # delta.T @ a_prev into a multiply-reduce loop (a few % slower per step on
    # the 1-64-64-1 net); the einsum stays a matrix product, as in jax.grad's.
    return jnp.einsum("bk,bj->kj", delta, a_prev)


def bias_grad_sum(delta: Array) -> Array:
    """Eq. (3) summed over the batch: Σ_b δ^l_b. Shape: (N_l,)."""
    return jnp.sum(delta, axis=0)


def fast_backprop(net: MLP, params: Params, X: Array, Y: Array) -> tuple[Array, Params]:
    """The batch mean of E and its gradients, by equations (1)–(4), in the fast form.

    Δ^L is scaled by 1/B once and (2), (3) sum over the batch (see above); the
    result equals `backward_with_deltas`'s, which averages in (2) and (3), up to rounding.

    Args:
        net: the network.
        params: its parameters; ``params[k]`` is layer l = k + 2.
        X: inputs, shape (B, N_1).
        Y: targets, shape (B, N_L).

    Returns:
        (mean E, grads of mean E), grads with the structure of params.
    """
    B = X.shape[0]
    fast = Equations(
        output_delta=lambda *args: delta_L_batch(*args) / B,  # step 2, for the mean
        hidden_delta=hidden_delta_batch,
        weight_grad=weight_grad_sum,
        bias_grad=bias_grad_sum,
    )
    E, grads, _ = backward_with_deltas(net, params, X, Y, fast)
    return E, grads
