"""Equations (10)–(19) of docs/derivation.md: the pieces of curvature by hand.

One small pure function per equation, in the derivation's symbols. Functions
named ``*_batch`` take rows as examples (leading axis B); the others take one
example and are lifted with `jax.vmap` by the caller. f is the loss's input:
z^L where the net computes E from the logits (a fused pair with
``net.fused``), ŷ = a^L otherwise (`logits_are_f`). A factor S has one column
per "output direction" c; the recursion (13) is equation (1) applied to each
column. `CurvatureEquations` gathers the functions the composed quantities call,
so that `verify_curvature` can check a set of one's own, as `verify` does for
`backprop.Equations`. Nothing here calls autodiff.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from manualbp import activations, losses
from manualbp.network import MLP, Layer

Array = jax.Array


def logits_are_f(net: MLP) -> bool:
    """Eq. (10): f = z^L for a fused output/loss pair the net uses fused, else f = ŷ."""
    return net.fused and net.fused_loss is not None


# --- the loss's Hessian and its factor, eq. (11) ------------------------------------


def loss_hessian(net: MLP, z_L: Array, y_hat: Array, y: Array) -> Array:
    """Eq. (11): H = ∂²E/∂f² for one example, (N_L, N_L), from the loss's own record."""
    if logits_are_f(net):
        return net.fused_loss.hessian(z_L, y)
    return net.loss.hessian(y_hat, y)


def loss_hessian_dot(net: MLP, z_L: Array, y_hat: Array, y: Array, r: Array) -> Array:
    """Eq. (11): H r for one example, (N_L,), by the loss's closed form where it has one."""
    record, f = (net.fused_loss, z_L) if logits_are_f(net) else (net.loss, y_hat)
    if record.hessian_dot is not None:
        return record.hessian_dot(f, y, r)
    return record.hessian(f, y) @ r


def loss_factor(net: MLP, z_L: Array, y_hat: Array, y: Array) -> Array:
    """Eq. (11): S_f with H = S_f S_fᵀ for one example, (N_L, N_L)."""
    if logits_are_f(net):
        return net.fused_loss.hessian_factor(z_L, y)
    return net.loss.hessian_factor(y_hat, y)


# --- the GGN factor, backpropagated, eqs. (12)–(15) ---------------------------------


def output_factor(net: MLP, z_L: Array, M: Array) -> Array:
    """Eq. (12): S^L = (∂f/∂z^L)ᵀ M for one example; M (N_L, C) → (N_L, C).

    ∂f/∂z^L is I when f = z^L, diag(σ^L'(z^L)) for a componentwise σ^L, and the
    Jacobian J_σ otherwise: equation (4) applied to each column of M.
    """
    if logits_are_f(net):
        return M
    sigma = net.output
    if sigma.elementwise:
        return sigma.deriv(z_L)[:, None] * M
    return sigma.deriv(z_L).T @ M


def hidden_factor_batch(S_next: Array, W_next: Array, sigma_prime_z: Array) -> Array:
    """Eq. (13): S^l = diag(σ^l'(z^l)) (W^{l+1})ᵀ S^{l+1}, column by column eq. (1).

    Shapes: S_next (B, N_{l+1}, C), W_next (N_{l+1}, N_l), sigma_prime_z (B, N_l);
    returns (B, N_l, C).
    """
    return jnp.einsum("bmc,mk->bkc", S_next, W_next) * sigma_prime_z[:, :, None]


def ggn_diag(S: Array, a_prev: Array) -> Layer:
    """Eq. (14): diag G for W^l and b^l.

    (1/B) Σ_b Σ_c (S^l_bkc)² (a^{l-1}_bj)² for W^l_kj, and (1/B) Σ_b Σ_c (S^l_bkc)² for b^l_k.

    Shapes: S (B, N_l, C), a_prev (B, N_{l-1}); returns Layer((N_l, N_{l-1}), (N_l,)).
    """
    B = S.shape[0]
    s2 = jnp.sum(S * S, axis=2)
    return Layer(W=jnp.einsum("bk,bj->kj", s2, a_prev * a_prev) / B, b=jnp.sum(s2, axis=0) / B)


def kron_factors(S: Array, a_prev: Array) -> tuple[Array, Array]:
    """Eq. (15): A = (1/B) Σ_b a^{l-1}_b (a^{l-1}_b)ᵀ and G = (1/B) Σ_b S^l_b (S^l_b)ᵀ.

    Shapes: A (N_{l-1}, N_{l-1}), G (N_l, N_l).
    """
    B = S.shape[0]
    return a_prev.T @ a_prev / B, jnp.einsum("bkc,bmc->km", S, S) / B


# --- sampled factors, eq. (16) ------------------------------------------------------


def sampled_factor(net: MLP, key: Array, z_L: Array, y_hat: Array, y: Array, samples: int) -> Array:
    """Eq. (16): s̃ with E[s̃ s̃ᵀ] = H for one example, (N_L, samples), each column / √samples.

    Where E is the negative log-likelihood of a distribution with natural
    parameter f, s̃ = ∂E(f, ỹ)/∂f at a target ỹ drawn from the model's own
    predictive distribution (its Fisher equals H): categorical softmax(z^L) for
    softmax + cross-entropy (s̃ = ŷ − ỹ, times √(Σ_j y_j) since H carries that
    factor), Bernoulli(sigmoid(z^L)) for sigmoid + binary cross-entropy
    (ŷ − ỹ), N(ŷ, I) for the mean squared error on ŷ (ŷ − ỹ). Elsewhere (a
    cross-entropy on ŷ, whose Fisher is not H): s̃ = S_f ε with ε ~ N(0, I).
    """
    n = z_L.shape[0]
    if logits_are_f(net) and net.output is activations.softmax:
        labels = jax.random.categorical(key, z_L, shape=(samples,))
        y_tilde = jax.nn.one_hot(labels, n, dtype=z_L.dtype)
        columns = jnp.sqrt(jnp.sum(y)) * jax.vmap(net.fused_loss.delta, (None, 0))(z_L, y_tilde)
    elif logits_are_f(net):
        p = jax.nn.sigmoid(z_L)
        y_tilde = jax.random.bernoulli(key, p[None, :], (samples, n)).astype(z_L.dtype)
        columns = jax.vmap(net.fused_loss.delta, (None, 0))(z_L, y_tilde)
    elif net.loss is losses.mse:
        y_tilde = y_hat[None, :] + jax.random.normal(key, (samples, n), z_L.dtype)
        columns = jax.vmap(net.loss.grad, (None, 0))(y_hat, y_tilde)
    else:
        epsilon = jax.random.normal(key, (samples, n), z_L.dtype)
        columns = epsilon @ loss_factor(net, z_L, y_hat, y).T
    return columns.T / jnp.sqrt(jnp.asarray(samples, z_L.dtype))


# --- the Hessian, eq. (17) ------------------------------------------------------------


def output_hessian(net: MLP, z_L: Array, y_hat: Array, y: Array) -> Array:
    """Eq. (17), start: H^L = ∂²E/∂z^L² for one example, (N_L, N_L).

    f = z^L: H^L = H. f = ŷ: H^L = J_σᵀ H J_σ + Σ_i g_i ∂²ŷ_i/∂z², g = ∂E/∂ŷ; for a
    componentwise σ^L that is σ' H σ' (rows and columns scaled) + diag(g ⊙ σ'').
    """
    H = loss_hessian(net, z_L, y_hat, y)
    if logits_are_f(net):
        return H
    sigma, g = net.output, net.loss.grad(y_hat, y)
    if sigma.elementwise:
        d = sigma.deriv(z_L)
        return d[:, None] * H * d[None, :] + jnp.diag(g * sigma.deriv2(z_L))
    J = sigma.deriv(z_L)
    return J.T @ H @ J + jnp.einsum("i,ijk->jk", g, sigma.deriv2(z_L))


def hidden_hessian_batch(
    H_next: Array, delta_next: Array, W_next: Array, sigma_prime_z: Array, sigma_second_z: Array
) -> Array:
    """Eq. (17): H^l = D (W^{l+1})ᵀ H^{l+1} W^{l+1} D + diag(σ^l''(z^l) ⊙ (W^{l+1})ᵀ δ^{l+1}).

    D = diag(σ^l'(z^l)); δ^{l+1} is example b's own (not scaled by 1/B).
    Shapes: H_next (B, N_{l+1}, N_{l+1}), delta_next (B, N_{l+1}); returns (B, N_l, N_l).
    """
    inner = jnp.einsum("mk,bmn,nj->bkj", W_next, H_next, W_next)
    scaled = inner * sigma_prime_z[:, :, None] * sigma_prime_z[:, None, :]
    return scaled + jax.vmap(jnp.diag)(sigma_second_z * (delta_next @ W_next))


def hessian_diag(H: Array, a_prev: Array) -> Layer:
    """Eq. (17): diag ∇²Ē for W^l and b^l: (1/B) Σ_b H^l_bkk (a^{l-1}_bj)², (1/B) Σ_b H^l_bkk."""
    B = H.shape[0]
    d = jnp.diagonal(H, axis1=1, axis2=2)
    return Layer(W=jnp.einsum("bk,bj->kj", d, a_prev * a_prev) / B, b=jnp.sum(d, axis=0) / B)


# --- the R-operator, eqs. (18), (19) ------------------------------------------------


def r_forward_batch(Ra_prev: Array | None, a_prev: Array, W: Array, V: Layer) -> Array:
    """Eq. (18): R{z^l} = W^l R{a^{l-1}} + V^l a^{l-1} + v_b^l, rows as examples. (B, N_l).

    ``Ra_prev`` is None at the first layer, where R{a^1} = R{x} = 0 and the
    first term drops (so no product with zeros is computed).
    """
    Rz = a_prev @ V.W.T + V.b[None, :]
    return Rz if Ra_prev is None else Ra_prev @ W.T + Rz


def r_output_delta(net: MLP, z_L: Array, y_hat: Array, y: Array, Rz_L: Array) -> Array:
    """Eq. (19), start, for one example: R{δ^L} = H^L R{z^L}, H^L of eq. (17), unformed.

    f = z^L: H R{z^L} by (11). f = ŷ with a componentwise σ^L:
    σ' ⊙ H (σ' ⊙ R{z^L}) + g ⊙ σ'' ⊙ R{z^L}, g = ∂E/∂ŷ. Otherwise (softmax on ŷ)
    the N_L × N_L matrix of (17) times R{z^L}. Shapes (N_L,).
    """
    if logits_are_f(net):
        return loss_hessian_dot(net, z_L, y_hat, y, Rz_L)
    sigma = net.output
    if not sigma.elementwise:
        return output_hessian(net, z_L, y_hat, y) @ Rz_L
    d = sigma.deriv(z_L)
    HdR = loss_hessian_dot(net, z_L, y_hat, y, d * Rz_L)
    return d * HdR + net.loss.grad(y_hat, y) * sigma.deriv2(z_L) * Rz_L


def r_hidden_delta_batch(
    Rdelta_next: Array,
    delta_next: Array,
    W_next: Array,
    V_next: Array,
    sigma_prime_z: Array,
    sigma_second_z: Array,
    Rz: Array,
) -> Array:
    """Eq. (19): R{δ^l}, the R-operator applied to equation (1) by the product rule.

    R{δ^l} = ((V^{l+1})ᵀ δ^{l+1} + (W^{l+1})ᵀ R{δ^{l+1}}) ⊙ σ^l'(z^l)
             + ((W^{l+1})ᵀ δ^{l+1}) ⊙ σ^l''(z^l) ⊙ R{z^l}.          Shapes (B, N_l).
    """
    return (delta_next @ V_next + Rdelta_next @ W_next) * sigma_prime_z + (
        delta_next @ W_next
    ) * sigma_second_z * Rz


def r_grad_sum(Rdelta: Array, delta: Array, a_prev: Array, Ra_prev: Array | None) -> Layer:
    """Eq. (19): R of equations (2), (3), summed over the rows.

    R{∂E/∂W^l} = Σ_b R{δ^l_b} (a^{l-1}_b)ᵀ + δ^l_b R{a^{l-1}_b}ᵀ, R{∂E/∂b^l} = Σ_b R{δ^l_b}.

    The caller scales δ^L and R{δ^L} by 1/B once (section 6). ``Ra_prev`` is None
    at the first layer (R{a^1} = 0): the second term drops.
    """
    W = jnp.einsum("bk,bj->kj", Rdelta, a_prev)
    if Ra_prev is not None:
        W = W + jnp.einsum("bk,bj->kj", delta, Ra_prev)
    return Layer(W=W, b=jnp.sum(Rdelta, axis=0))


class CurvatureEquations(NamedTuple):
    """The equations the curvature quantities compose; `verify_curvature` checks any such set.

    Each field is called by the composed quantities with the signature of its
    default here (one example, or ``*_batch`` rows as examples); the defaults
    call each other directly, so replacing a field changes what the composed
    quantities compute through that field only. Who calls what: `diag_ggn`,
    `kflr`, `kfac` call ``loss_factor`` (or ``sampled_factor``),
    ``output_factor``, ``hidden_factor`` and ``ggn_diag`` or ``kron_factors``;
    `diag_hessian` calls ``output_hessian``, ``hidden_hessian`` and
    ``hessian_diag``; `hvp` calls ``r_forward``, ``r_output_delta``,
    ``r_hidden_delta`` and ``r_grad``; `ggn_vp` calls ``r_forward``,
    ``loss_hessian_dot`` and ``output_factor``. ``loss_hessian`` is checked on
    its own. At the first layer ``r_forward`` and ``r_grad`` receive None for
    R{a^1} (R{x} = 0: the terms in it drop), in verification as in `hvp`.
    """

    loss_hessian: Callable = loss_hessian
    loss_hessian_dot: Callable = loss_hessian_dot
    loss_factor: Callable = loss_factor
    output_factor: Callable = output_factor
    hidden_factor: Callable = hidden_factor_batch
    ggn_diag: Callable = ggn_diag
    kron_factors: Callable = kron_factors
    sampled_factor: Callable = sampled_factor
    output_hessian: Callable = output_hessian
    hidden_hessian: Callable = hidden_hessian_batch
    hessian_diag: Callable = hessian_diag
    r_forward: Callable = r_forward_batch
    r_output_delta: Callable = r_output_delta
    r_hidden_delta: Callable = r_hidden_delta_batch
    r_grad: Callable = r_grad_sum


CURVATURE = CurvatureEquations()
