"""The witness: gradients of the same loss by JAX's automatic differentiation.

Nothing in the manual path imports this module; it exists so that manual and
automatic gradients of one and the same `network.mean_loss` can be compared.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from manualbp.network import (
    MLP,
    Forward,
    Layer,
    Params,
    example_loss,
    forward_pass_batch,
    mean_loss,
)

Array = jax.Array


def value_and_grad(net: MLP, params: Params, X: Array, Y: Array) -> tuple[Array, Params]:
    """The batch mean of E and its gradient with respect to params, by `jax.value_and_grad`."""
    return jax.value_and_grad(mean_loss, argnums=1)(net, params, X, Y)


def deltas(net: MLP, params: Params, X: Array, Y: Array) -> tuple[Array, ...]:
    """The true δ^l = ∂E/∂z^l of every example, by autodiff; ``[k]`` is layer l = k + 2.

    Adds a zero offset to every z^l and differentiates the sum of the
    per-example E with respect to the offsets: example b's E depends only on
    its own row, so row b of the gradient is δ^l of example b. Shapes (B, N_l).
    """
    offsets = tuple(jnp.zeros((X.shape[0], n), X.dtype) for n in net.sizes[1:])

    def total_E(offsets):
        a = X
        for (W, b), sigma, offset in zip(params, net.activations, offsets, strict=True):
            z = a @ W.T + b[None, :] + offset
            a = sigma.fn(z)
        return jnp.sum(jax.vmap(lambda z, a, y: example_loss(net, z, a, y))(z, a, Y))

    return jax.grad(total_E)(offsets)


def value_grad_and_deltas(net: MLP, params: Params, X: Array, Y: Array):
    """`value_and_grad` and `deltas` from one reverse pass, with the forward pass it ran.

    The mean E with a zero offset added to every z^l, differentiated with
    respect to the parameters and the offsets at once: the offsets' gradient
    is δ^l / B (the mean's 1/B), so it is scaled back by B.

    Returns:
        (E, grads, deltas, forward), the last a `network.Forward` as
        `network.forward_pass_batch` returns it.
    """
    B = X.shape[0]
    offsets = tuple(jnp.zeros((B, n), X.dtype) for n in net.sizes[1:])

    def mean_E(params, offsets):
        z, a = [None], [X]
        for (W, b), sigma, offset in zip(params, net.activations, offsets, strict=True):
            z.append(a[-1] @ W.T + b[None, :] + offset)
            a.append(sigma.fn(z[-1]))
        E = jnp.mean(
            jax.vmap(lambda z_L, y_hat, y: example_loss(net, z_L, y_hat, y))(z[-1], a[-1], Y)
        )
        return E, Forward(tuple(z), tuple(a))

    (E, forward), (grads, scaled) = jax.value_and_grad(mean_E, argnums=(0, 1), has_aux=True)(
        params, offsets
    )
    return E, grads, tuple(d * B for d in scaled), forward


def elementwise_derivative(fn, z: Array) -> Array:
    """σ'(z) for a componentwise σ, by forward-mode autodiff with a tangent of ones."""
    return jax.jvp(fn, (z,), (jnp.ones_like(z),))[1]


def jacobian_t_dot(fn, z: Array, g: Array) -> Array:
    """J_σ(z)ᵀ g row by row (a batch of examples), by reverse-mode autodiff."""
    return jax.vmap(lambda z_b, g_b: jax.vjp(fn, z_b)[1](g_b)[0])(z, g)


def jacobian(fn, z: Array) -> Array:
    """J_σ(z) of each row of z, shape (B, N, N)."""
    return jax.vmap(jax.jacrev(fn))(z)


def loss_grad(loss_fn, y_hat: Array, Y: Array) -> Array:
    """∂E/∂ŷ of each example, by autodiff of the example's E."""
    return jax.vmap(jax.grad(loss_fn))(y_hat, Y)


def gradient_magnitudes(net: MLP, params: Params, X: Array, Y: Array) -> Params:
    """The size of the terms each gradient entry sums, for `tolerance.tree_errors`.

    ∂E/∂W^l = (1/B) Σ_b δ^l_b (a^{l-1}_b)ᵀ sums terms of size
    (1/B) Σ_b |δ^l_b| |a^{l-1}_b|ᵀ, and ∂E/∂b^l sums (1/B) Σ_b |δ^l_b|, with the
    true δ^l of `deltas`. Same structure as params.
    """
    a = forward_pass_batch(net, params, X).a
    B = X.shape[0]
    return tuple(
        Layer(W=jnp.abs(delta).T @ jnp.abs(a_prev) / B, b=jnp.mean(jnp.abs(delta), axis=0))
        for delta, a_prev in zip(deltas(net, params, X, Y), a[:-1], strict=True)
    )
