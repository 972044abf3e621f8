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


def output_magnitude(net: MLP, ref: Side, Y, scales, inherited=None) -> np.ndarray:
    """The size of the terms δ^L is formed from, per example (B, N_L).

    ∂E/∂ŷ counts at its own size plus what it inherits from ŷ's rounding
    (`inherited_loss_gradient`): ŷ − y of MSE cancels where ŷ ≈ y, and a
    large σ^L' next to it magnifies the rounding ŷ brought with it.
    ``inherited`` (`inherited_output_error`, in units of ε) adds what δ^L
    inherits from a forward pass that rounds on the way to z^L (T7).
    """
    y_hat = np.abs(ref.a[-1])
    Y = np.abs(np.asarray(Y, np.float64))
    if net.fused and net.fused_loss is not None:
        terms = y_hat * np.sum(Y, axis=-1, keepdims=True) + Y
    else:
        g = np.abs(ref.dE_dyhat) + inherited_loss_gradient(net, ref.a[-1], Y)
        g = np.where(np.isfinite(g), g, 0)
        if net.output.elementwise:
            terms = g * sigma_terms(ref.sigma_primes[-1], scales[-1])
        else:
            terms = jacobian_t_terms(y_hat, g)
    if inherited is not None:
        terms = terms + inherited
    return np.maximum(terms, np.abs(ref.deltas[-1]))


INHERITED_STEP = 1e-6
"""η of `inherited_loss_gradient`: a relative move of ŷ, small against 1 and far above ε₆₄."""


def inherited_loss_gradient(net: MLP, y_hat, Y) -> np.ndarray:
    """|∂E/∂ŷ(ŷ (1 + η)) − ∂E/∂ŷ(ŷ)| / η in float64: the error ∂E/∂ŷ inherits from ŷ (T7).

    ŷ arrives rounded at ε |ŷ|; to first order ∂E/∂ŷ moves by the loss
    Hessian times that, |H_E| |ŷ| ε for the componentwise losses. Measured by
    one difference of autodiff's ∂E/∂ŷ along ŷ itself, so it holds for any
    loss, not only the built-in ones. Shape (B, N_L).
    """
    with jax.enable_x64():
        y_hat = jnp.asarray(np.asarray(y_hat, np.float64))
        Y = jnp.asarray(np.asarray(Y, np.float64))
        moved = autodiff.loss_grad(net.loss.fn, y_hat * (1 + INHERITED_STEP), Y)
        here = autodiff.loss_grad(net.loss.fn, y_hat, Y)
        return np.abs(np.asarray(moved) - np.asarray(here)) / INHERITED_STEP


def inherited_output_error(net: MLP, ref: Side, wit: Side | None, Y, dtype):
    """What δ^L and E inherit from z^L's rounding, in units of ε: (B, N_L) and (B,) (T7).

    A correct pass forms z^L in its own dtype and lands about as far from the
    float64 z^L as the witness's forward pass does: Δz = max(|z_w − z⁶⁴|,
    ε |z⁶⁴|). δ^L = ∂E/∂z^L taken at z⁶⁴ ± Δz, in float64, moves by what a
    correct δ^L may carry from there (σ^L' = z² of σ = z³/3 triples a
    relative error); E moves by |δ^L| Δz.
    """
    eps = float(jnp.finfo(jnp.dtype(dtype)).eps)
    z = np.asarray(ref.z[-1], np.float64)
    dz = eps * np.abs(z)
    if wit is not None:
        dz = np.maximum(dz, np.abs(np.asarray(wit.z[-1], np.float64) - z))
    with jax.enable_x64():
        up = jnp.asarray
        delta_at = jax.vmap(jax.grad(lambda z, y: example_loss(net, z, net.output.fn(z), y)))
        Y64 = up(np.asarray(Y, np.float64))
        here = np.asarray(delta_at(up(z), Y64))
        moved = [np.asarray(delta_at(up(z + sign * dz), Y64)) for sign in (1, -1)]
    delta_error = np.maximum(*(np.abs(m - here) for m in moved))
    E_error = np.sum(np.abs(here) * dz, axis=-1)
    ok = np.isfinite(delta_error)
    return np.where(ok, delta_error, 0) / eps, np.where(np.isfinite(E_error), E_error, 0) / eps


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


def chain_magnitudes(net: MLP, ref: Side, params64, Y, scales, inherited=None):
    """End-to-end magnitudes: m^L from δ^L's terms, m^l = (m^{l+1} |W^{l+1}|) ⊙ |σ^l'|.

    Returns (per layer k: m_δ (B, N), m_W (N_l, N_{l-1}), m_b (N_l,)).
    """
    m = [None] * len(params64)
    m[-1] = output_magnitude(net, ref, Y, scales, inherited)
    for k in reversed(range(len(params64) - 1)):
        m[k] = (m[k + 1] @ np.abs(params64[k + 1].W)) * sigma_terms(ref.sigma_primes[k], scales[k])
    B = m[0].shape[0]
    return [
        (m_k, m_k.T @ np.abs(a) / B, np.mean(m_k, axis=0))
        for m_k, a in zip(m, ref.a[:-1], strict=True)
    ]


# --- the per-example loop: a batch sum in the order a hand-written loop takes (T6) -----
#
# XLA sums a batch in blocks and a tree; a loop over the examples (Nielsen's
# `for x, y in mini_batch`) adds one term at a time, each addition rounding at
# the size of the running sum. That is as correct as autodiff and rounds more:
# about ε √B of the sum for terms of one sign, up to ε B/10 for equal terms
# (a repeated example). Rather than assume either, the verifier forms the same
# mean that way from the witness's own per-example terms and counts its error
# as another witness's.

SEQUENTIAL_CHUNK = 1 << 22
"""Most entries handled at once by `sequential_mean` (memory, not arithmetic)."""


def sequential_mean(left, right, dtype):
    """(1/B) Σ_b left_b ⊗ right_b (Σ_b left_b where ``right`` is None), one example at a time.

    Each term is formed in ``dtype`` and added to the running sum in
    ``dtype``, in example order, then divided by B. Shapes: left (B, N),
    right (B, M) or None; result (N, M) or (N,), float64.
    """
    left = np.asarray(left).astype(dtype)
    B = left.shape[0]
    shape = left.shape[1:] if right is None else left.shape[1:] + np.shape(right)[1:]
    total = np.zeros(shape, dtype)
    size = max(int(np.prod(shape)), 1)
    step = max(1, SEQUENTIAL_CHUNK // size)
    right = None if right is None else np.asarray(right).astype(dtype)
    for start in range(0, B, step):
        part = slice(start, start + step)
        terms = left[part] if right is None else left[part, :, None] * right[part, None, :]
        # cumsum adds in order, rounding each partial sum in ``dtype``
        total = np.cumsum(np.concatenate([total[None], terms]), axis=0, dtype=dtype)[-1]
    return np.asarray(total, np.float64) / B
