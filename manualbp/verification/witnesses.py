"""What the verdict measures the manual pass against: a float64 reference and a same-dtype witness.

Both come from autodiff of the same `network.mean_loss`, on the same
parameters and batch: the reference with every input cast up to float64
(inside `jax.enable_x64`, for this computation only), the witness in the net's
own dtype. A correct derivation rounds like the witness; `tolerance.judge`
holds it to that. For a float64 net there is no higher precision: the
reference is the witness, and `reference_note` says so.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from manualbp import autodiff
from manualbp.network import MLP, Params, example_loss

REFERENCE_DTYPE = np.float64


class Side(NamedTuple):
    """The forward pass and autodiff's derivatives of one net in one dtype.

    ``z[i]``, ``a[i]`` = Z^{i+1}, A^{i+1} (aligned by layer as `network.Forward`,
    ``z[0]`` None); ``deltas[k]`` = the true Δ^{k+2};
    ``sigma_primes[k]`` = σ^{k+2}'(Z^{k+2}) for a componentwise σ, its
    Jacobian per example (B, N, N) otherwise; ``dE_dyhat`` =
    ∂E/∂ŷ of each example; ``delta_L`` = ∂E_b/∂z^L at the given z^L.
    The blocks (σ', ∂E/∂ŷ, δ^L) are taken at the points `compute` names.
    """

    z: tuple
    a: tuple
    deltas: tuple
    E: object
    grads: Params
    sigma_primes: list
    dE_dyhat: object
    delta_L: object


def compute(net: MLP, params: Params, X, Y, dtype, points=None) -> Side:
    """Autodiff's side in ``dtype``: float64 (the reference) or the net's own (the witness).

    End to end (z, a, deltas, E, grads) from params, X and Y; the building
    blocks (σ', ∂E/∂ŷ, J_σ^Lᵀ g) at ``points`` = (z, a), the witness's own
    forward pass, so that a block is judged on the very inputs the manual
    pass gave it (default: this side's forward pass).
    """
    if jnp.dtype(dtype) == REFERENCE_DTYPE:
        with jax.enable_x64():
            inputs = _cast((params, X, Y, points), REFERENCE_DTYPE)
            return _to_numpy(_compute(net, *inputs))
    return _compute(net, *_cast((params, X, Y, points), dtype))


def reference_note(dtype) -> str:
    if jnp.dtype(dtype) == REFERENCE_DTYPE:
        return (
            "float64, the net's own precision: no higher one here, so the witness is the "
            "reference and the allowance is the floor"
        )
    return f"float64 from the same inputs; witness: autodiff in {jnp.dtype(dtype).name}"


def _cast(tree, dtype):
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64), dtype), tree)


def _to_numpy(side: Side) -> Side:
    return jax.tree.map(np.asarray, side)


def _compute(net, params, X, Y, points) -> Side:
    # Op by op, not jitted: the catalogue's nets share shapes, so each operation
    # compiles once for all of them, where a jitted whole would compile per net.
    E, grads, deltas, fwd = autodiff.value_grad_and_deltas(net, params, X, Y)
    z_at, a_at = fwd if points is None else points
    sigma_primes = [
        autodiff.elementwise_derivative(sigma.fn, z_at[k + 1])
        if sigma.elementwise
        else autodiff.jacobian(sigma.fn, z_at[k + 1])
        for k, sigma in enumerate(net.activations)  # σ^l of layer l = k + 2
    ]
    return Side(
        z=fwd.z,
        a=fwd.a,
        deltas=deltas,
        E=E,
        grads=grads,
        sigma_primes=sigma_primes,
        dE_dyhat=autodiff.loss_grad(net.loss.fn, a_at[-1], Y),
        delta_L=jax.vmap(jax.grad(lambda z, y: example_loss(net, z, net.output.fn(z), y)))(
            z_at[-1], Y
        ),
    )


# --- magnitudes: the size of the terms each entry sums (the cancellation refinement) ----
#
# Rounding scales with the terms a result is formed from, not with the result.
# A σ' is formed from values of the size σ' has where σ moves (1 − tanh² from
# 1 and tanh² ≈ 1; a(1 − a)): that size, max|σ'| over moderate z, is
# `sigma_scale`. The terms of (1), (2), (3) are those of the sums with their
# signs removed, σ' no smaller than its scale; end to end they chain down
# from δ^L.

MODERATE_Z = np.linspace(-3.0, 3.0, 13)


@functools.cache
def sigma_scale(sigma) -> float:
    """max|σ'| (or max|J_σ|) over moderate z, in float64: the size σ' rounds at."""
    with jax.enable_x64():
        z = jnp.asarray(MODERATE_Z, REFERENCE_DTYPE)
        if sigma.elementwise:
            values = autodiff.elementwise_derivative(sigma.fn, z)
        else:
            values = autodiff.jacobian(sigma.fn, jnp.stack([z[:3], z[4:7], z[-3:]]))
        return float(np.max(np.abs(np.asarray(values))))


def sigma_terms(sigma_prime, scale: float):
    """|σ'| no smaller than its scale: the size a correct σ' rounds at."""
    return np.maximum(np.abs(sigma_prime), scale)


def output_magnitude(net: MLP, ref: Side, Y, scales) -> np.ndarray:
    """The size of the terms δ^L is formed from, per example (B, N_L)."""
    y_hat, g = np.abs(ref.a[-1]), np.abs(ref.dE_dyhat)
    Y = np.abs(np.asarray(Y, np.float64))
    if net.fused and net.fused_loss is not None:
        terms = y_hat * np.sum(Y, axis=-1, keepdims=True) + Y
    elif net.output.elementwise:
        terms = np.where(np.isfinite(g), g, 0) * sigma_terms(ref.sigma_primes[-1], scales[-1])
    else:
        terms = jacobian_t_terms(y_hat, np.where(np.isfinite(g), g, 0))
    return np.maximum(terms, np.abs(ref.deltas[-1]))


def jacobian_t_terms(a, g):
    """The terms of J_σᵀg = a ⊙ (g − ⟨g, a⟩) (softmax), signs removed: |a||g| + |a| ⟨|a|, |g|⟩.

    For another non-componentwise σ its outputs a are taken as the size its
    Jacobian's entries round at, as for the softmax's a_i([i = j] − a_j).
    """
    a, g = np.abs(a), np.abs(g)
    return a * g + a * np.sum(a * g, axis=-1, keepdims=True)


def jacobian_terms(a):
    """The terms of J = diag(a) − a aᵀ, signs removed: a_i ([i = j] + a_j). Shape (B, N, N)."""
    a = np.abs(a)
    return a[..., :, None] * (np.eye(a.shape[-1]) + a[..., None, :])


def chain_magnitudes(net: MLP, ref: Side, params64, Y, scales):
    """End-to-end magnitudes: m^L from δ^L's terms, m^l = (m^{l+1} |W^{l+1}|) ⊙ |σ^l'|.

    Returns (per layer k: m_δ (B, N), m_W (N_l, N_{l-1}), m_b (N_l,)).
    """
    m = [None] * len(params64)
    m[-1] = output_magnitude(net, ref, Y, scales)
    for k in reversed(range(len(params64) - 1)):
        m[k] = (m[k + 1] @ np.abs(params64[k + 1].W)) * sigma_terms(ref.sigma_primes[k], scales[k])
    B = m[0].shape[0]
    return [
        (m_k, m_k.T @ np.abs(a) / B, np.mean(m_k, axis=0))
        for m_k, a in zip(m, ref.a[:-1], strict=True)
    ]
