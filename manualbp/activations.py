"""Activation and output functions σ with their hand-derived derivatives σ'.

An activation is a pair of pure functions (σ, σ'), as in docs/derivation.md: σ^l acts
componentwise on z^l, so σ^l'(z^l) is a vector of the same shape and the chain
rule through σ is a componentwise product (the ⊙ in equations (1) and (4)).

Softmax is the one output function that is not componentwise: ŷ_i depends on
every z_j. Its Jacobian is J_ij = ∂ŷ_i/∂z_j = ŷ_i (δ_ij − ŷ_j), that is
J = diag(ŷ) − ŷ ŷᵀ (symmetric). Equation (4) then reads, with g = ∂E/∂ŷ,

    δ^L = Jᵀ g = diag(ŷ) g − ŷ (ŷᵀ g) = ŷ ⊙ (g − ⟨g, ŷ⟩),

an O(N_L) product that never builds the N_L × N_L matrix. `Activation.jac_t_dot`
carries that closed form; `Activation.deriv` returns the full Jacobian so the
verifier can check it entry by entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from manualbp._names import resolve

Array = jax.Array


class Activation(NamedTuple):
    """σ and its hand-derived derivative σ'.

    Attributes:
        name: short name, used in reports.
        fn: σ(z), elementwise (or, with ``elementwise=False``, on the last axis).
        deriv: σ'(z), same shape as z. For a non-componentwise σ (softmax), the
            Jacobian J_ij = ∂σ_i/∂z_j of one example, shape (N, N).
        elementwise: whether σ acts componentwise. Only componentwise functions
            may be hidden activations, since equation (1) multiplies by σ^l'(z^l)
            componentwise.
        jac_t_dot: for a non-componentwise σ, the closed form of J_σ(z)ᵀ g.
        deriv_from_output: optional σ'(z) written through a = σ(z), where that
            is cheaper (σ' = a(1 − a) for the sigmoid); backprop uses it with
            the stored a^l instead of recomputing σ from z^l.
        deriv2: optional σ''(z), same shape as z, for the curvature of
            docs/derivation.md (equations (17), (19)). For a non-componentwise σ
            (softmax), the second-derivative tensor T_ijk = ∂²σ_i/∂z_j∂z_k of one
            example, shape (N, N, N).
    """

    name: str
    fn: Callable[[Array], Array]
    deriv: Callable[[Array], Array]
    elementwise: bool = True
    jac_t_dot: Callable[[Array, Array], Array] | None = None
    deriv_from_output: Callable[[Array], Array] | None = None
    deriv2: Callable[[Array], Array] | None = None


def _identity(z):
    return z


def _identity_deriv(z):
    return jnp.ones_like(z)


def _identity_deriv2(z):
    """σ'' = 0."""
    return jnp.zeros_like(z)


def _sigmoid_deriv(z):
    s = jax.nn.sigmoid(z)
    return s * (1 - s)


def _sigmoid_deriv_from_output(a):
    return a * (1 - a)


def _sigmoid_deriv2(z):
    """σ' = s(1 − s), so σ'' = s'(1 − s) − s s' = s(1 − s)(1 − 2s), s = sigmoid(z)."""
    s = jax.nn.sigmoid(z)
    return s * (1 - s) * (1 - 2 * s)


def _tanh_deriv(z):
    t = jnp.tanh(z)
    return 1 - t * t


def _tanh_deriv_from_output(a):
    return 1 - a * a


def _tanh_deriv2(z):
    """σ' = 1 − t², so σ'' = −2t t' = −2t(1 − t²), t = tanh(z)."""
    t = jnp.tanh(z)
    return -2 * t * (1 - t * t)


def _relu_deriv(z):
    # σ'(0) = 0, the subgradient jax.nn.relu's autodiff picks.
    return jnp.where(z > 0, 1, 0).astype(z.dtype)


def _piecewise_linear_deriv2(z):
    """σ'' = 0 for ReLU and leaky ReLU: σ' is constant on each side of the kink (and
    autodiff of their σ' gives 0 at it too)."""
    return jnp.zeros_like(z)


LEAKY_SLOPE = 0.01


def _leaky_relu(z):
    return jax.nn.leaky_relu(z, negative_slope=LEAKY_SLOPE)


def _leaky_relu_deriv(z):
    # σ'(0) = 1, as jax.nn.leaky_relu (z >= 0 takes the identity branch).
    return jnp.where(z >= 0, 1, LEAKY_SLOPE).astype(z.dtype)


def _elu_deriv(z):
    # α = 1: σ(z) = e^z − 1 for z ≤ 0, so σ'(z) = e^z there; σ'(0) = 1 either way.
    # exp(where(...)) rather than exp(minimum(z, 0)): the same values, but autodiff of this σ'
    # (the reference for σ'') takes the z branch at 0 instead of minimum's tie gradient ½.
    return jnp.where(z > 0, 1, jnp.exp(jnp.where(z > 0, 0, z))).astype(z.dtype)


def _elu_deriv2(z):
    """σ'' = 0 for z > 0 and e^z for z ≤ 0 (the branch autodiff takes at 0)."""
    return jnp.where(z > 0, 0, jnp.exp(jnp.where(z > 0, 0, z))).astype(z.dtype)


def _softplus_deriv(z):
    # d/dz log(1 + e^z) = e^z / (1 + e^z) = sigmoid(z).
    return jax.nn.sigmoid(z)


def _softplus_deriv2(z):
    """σ' = sigmoid(z), so σ'' = s(1 − s) = sigmoid(z) sigmoid(−z).

    The product of the two sigmoids, because 1 − s cancels for z ≫ 0 (at z = 10
    in float32 it keeps three digits) while sigmoid(−z) stays exact.
    """
    return jax.nn.sigmoid(z) * jax.nn.sigmoid(-z)


def _silu_deriv(z):
    # σ = z s with s = sigmoid(z): σ' = s + z s(1 − s) = s (1 + z (1 − s)).
    s = jax.nn.sigmoid(z)
    return s * (1 + z * (1 - s))


def _silu_deriv2(z):
    """σ' = s + z s(1 − s), so σ'' = 2 s(1 − s) + z s(1 − s)(1 − 2s) = s(1 − s)(2 + z(1 − 2s))."""
    s = jax.nn.sigmoid(z)
    return s * (1 - s) * (2 + z * (1 - 2 * s))


GELU_C = math.sqrt(2 / math.pi)
GELU_K = 0.044715


def _gelu(z):
    return jax.nn.gelu(z, approximate=True)


def _gelu_deriv(z):
    # σ = ½ z (1 + t), t = tanh(u), u = c (z + k z³):
    # σ' = ½ (1 + t) + ½ z (1 − t²) c (1 + 3 k z²).
    t = jnp.tanh(GELU_C * (z + GELU_K * z**3))
    return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * GELU_C * (1 + 3 * GELU_K * z * z)


def _gelu_deriv2(z):
    """With u' = c(1 + 3k z²), u'' = 6ckz and t' = (1 − t²)u', differentiating σ':
    σ'' = (1 − t²)(u' − z t u'² + ½ z u'')."""
    t = jnp.tanh(GELU_C * (z + GELU_K * z**3))
    du = GELU_C * (1 + 3 * GELU_K * z * z)
    return (1 - t * t) * (du - z * t * du * du + 3 * GELU_C * GELU_K * z * z)


def _softmax(z):
    return jax.nn.softmax(z, axis=-1)


def _softmax_jacobian(z):
    """J = diag(ŷ) − ŷ ŷᵀ for one example z of shape (N,). Shape (N, N)."""
    y_hat = _softmax(z)
    return jnp.diag(y_hat) - jnp.outer(y_hat, y_hat)


def _softmax_deriv2(z):
    """T_ijk = ∂²ŷ_i/∂z_j∂z_k for one example z (N,). Shape (N, N, N).

    Differentiating J_ij = ŷ_i([i = j] − ŷ_j) by z_k, with ∂ŷ_i/∂z_k = J_ik:
    T_ijk = J_ik([i = j] − ŷ_j) − ŷ_i J_jk.
    """
    y_hat = _softmax(z)
    J = jnp.diag(y_hat) - jnp.outer(y_hat, y_hat)
    eye = jnp.eye(z.shape[-1], dtype=z.dtype)
    return J[:, None, :] * (eye - y_hat[None, :])[:, :, None] - y_hat[:, None, None] * J[None]


def _softmax_jac_t_dot(z, g):
    """Jᵀ g = ŷ ⊙ (g − ⟨g, ŷ⟩), on the last axis (one example or a batch)."""
    y_hat = _softmax(z)
    return y_hat * (g - jnp.sum(g * y_hat, axis=-1, keepdims=True))


identity = Activation("identity", _identity, _identity_deriv, deriv2=_identity_deriv2)
sigmoid = Activation(
    "sigmoid",
    jax.nn.sigmoid,
    _sigmoid_deriv,
    deriv_from_output=_sigmoid_deriv_from_output,
    deriv2=_sigmoid_deriv2,
)
tanh = Activation(
    "tanh", jnp.tanh, _tanh_deriv, deriv_from_output=_tanh_deriv_from_output, deriv2=_tanh_deriv2
)
relu = Activation("relu", jax.nn.relu, _relu_deriv, deriv2=_piecewise_linear_deriv2)
leaky_relu = Activation(
    "leaky_relu", _leaky_relu, _leaky_relu_deriv, deriv2=_piecewise_linear_deriv2
)
# No σ'(a) form for the ELU: a + 1 = e^z cancels for z ≪ 0 (e^z ≈ 5e-5 at z = −10 keeps only
# a few bits of a + 1 in float32), while e^z from z stays exact to rounding.
elu = Activation("elu", jax.nn.elu, _elu_deriv, deriv2=_elu_deriv2)
softplus = Activation("softplus", jax.nn.softplus, _softplus_deriv, deriv2=_softplus_deriv2)
silu = Activation("silu", jax.nn.silu, _silu_deriv, deriv2=_silu_deriv2)
gelu = Activation("gelu", _gelu, _gelu_deriv, deriv2=_gelu_deriv2)
softmax = Activation(
    "softmax",
    _softmax,
    _softmax_jacobian,
    elementwise=False,
    jac_t_dot=_softmax_jac_t_dot,
    deriv2=_softmax_deriv2,
)

ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (identity, sigmoid, tanh, relu, leaky_relu, elu, softplus, silu, gelu, softmax)
}
"""Every built-in σ by name; all but softmax are componentwise and may be hidden."""

HIDDEN_ACTIVATIONS = tuple(name for name, a in ACTIVATIONS.items() if a.elementwise)


def get_activation(spec: str | Activation, *, argument: str = "activation") -> Activation:
    """Resolve a name or an `Activation` to an `Activation`.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
        TypeError: for anything that is neither a name nor an `Activation`.
    """
    return resolve(spec, Activation, ACTIVATIONS, "activation", argument)
