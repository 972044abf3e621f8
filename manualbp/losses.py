"""Error functions E(ŷ, y) with their hand-derived gradients ∂E/∂ŷ.

A loss is a pair of pure functions on one example: ``fn(y_hat, y)`` is E (a
scalar) and ``grad(y_hat, y)`` is ∂E/∂ŷ (shape (N_L,)), the factor equation (4)
multiplies by σ^L'(z^L). The batch loss is the mean of E over the examples.

Two output/loss pairs also come fused, computed from the logits z^L:

* softmax + cross-entropy. With g_j = ∂E/∂ŷ_j = −y_j/ŷ_j, equation (4) for the
  softmax (see activations.py) gives δ^L = ŷ ⊙ (g − ⟨g, ŷ⟩) = −y + ŷ Σ_j y_j,
  which is ŷ − y for targets that sum to one. The 1/ŷ_j in g cancels against
  the ŷ_j in the softmax Jacobian, so δ^L never divides by a probability that
  may have underflowed to zero. The value is E = Σ_j y_j (logsumexp(z) − z_j),
  finite for any finite z.
* sigmoid + binary cross-entropy. With σ' = ŷ(1 − ŷ) and
  ∂E/∂ŷ = (ŷ − y) / (ŷ(1 − ŷ)), σ' cancels the denominator: δ^L = ŷ − y. The
  value is E = Σ_j softplus(z_j) − y_j z_j, since log ŷ = −softplus(−z) and
  log(1 − ŷ) = −softplus(z).

The fused forms are mathematically the same E and δ^L as the general ones; they
differ only in rounding, and stay finite where ŷ saturates to 0 or 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from manualbp import activations
from manualbp._names import resolve

Array = jax.Array


class Loss(NamedTuple):
    """E and its hand-derived gradient ∂E/∂ŷ, both on one example.

    Attributes:
        name: short name, used in reports.
        fn: ``fn(y_hat, y)``, the example's E, a scalar.
        grad: ``grad(y_hat, y)``, ∂E/∂ŷ, shape (N_L,).
        hessian: optional ``hessian(y_hat, y)``, H = ∂²E/∂ŷ², shape (N_L, N_L),
            for the curvature of docs/derivation.md (equation (11)).
        hessian_factor: optional ``hessian_factor(y_hat, y)``, a square S with
            H = S Sᵀ, shape (N_L, N_L) (equation (11)).
        hessian_dot: optional ``hessian_dot(y_hat, y, r)``, H r in closed form
            without forming H, shape (N_L,); the curvature products use
            ``hessian(y_hat, y) @ r`` where it is absent.
    """

    name: str
    fn: Callable[[Array, Array], Array]
    grad: Callable[[Array, Array], Array]
    hessian: Callable[[Array, Array], Array] | None = None
    hessian_factor: Callable[[Array, Array], Array] | None = None
    hessian_dot: Callable[[Array, Array, Array], Array] | None = None


def _mse(y_hat, y):
    """E = ½ Σ_j (ŷ_j − y_j)²."""
    return 0.5 * jnp.sum((y_hat - y) ** 2, axis=-1)


def _mse_grad(y_hat, y):
    """∂E/∂ŷ_j = ŷ_j − y_j."""
    return y_hat - y


def _mse_hessian(y_hat, y):
    """∂²E/∂ŷ_i∂ŷ_j = [i = j]: H = I."""
    return jnp.eye(y_hat.shape[-1], dtype=y_hat.dtype)


def _mse_hessian_dot(y_hat, y, r):
    """H r = r."""
    return r


def _cross_entropy(y_hat, y):
    """E = −Σ_j y_j log ŷ_j."""
    return -jnp.sum(y * jnp.log(y_hat), axis=-1)


def _cross_entropy_grad(y_hat, y):
    """∂E/∂ŷ_j = −y_j / ŷ_j."""
    return -y / y_hat


def _cross_entropy_hessian(y_hat, y):
    """∂(−y_i/ŷ_i)/∂ŷ_j = [i = j] y_i/ŷ_i²: H = diag(y/ŷ²)."""
    return jnp.diag(y / (y_hat * y_hat))


def _cross_entropy_hessian_dot(y_hat, y, r):
    """H r = (y/ŷ²) ⊙ r."""
    return y / (y_hat * y_hat) * r


def _cross_entropy_hessian_factor(y_hat, y):
    """S = diag(√y/ŷ), so S Sᵀ = diag(y/ŷ²) (targets y ≥ 0)."""
    return jnp.diag(jnp.sqrt(y) / y_hat)


def _binary_cross_entropy(y_hat, y):
    """E = −Σ_j [y_j log ŷ_j + (1 − y_j) log(1 − ŷ_j)]."""
    return -jnp.sum(y * jnp.log(y_hat) + (1 - y) * jnp.log1p(-y_hat), axis=-1)


def _binary_cross_entropy_grad(y_hat, y):
    """∂E/∂ŷ_j = −y_j/ŷ_j + (1 − y_j)/(1 − ŷ_j) = (ŷ_j − y_j) / (ŷ_j (1 − ŷ_j))."""
    return (y_hat - y) / (y_hat * (1 - y_hat))


def _binary_cross_entropy_curvature(y_hat, y):
    """∂/∂ŷ_j of −y_j/ŷ_j + (1 − y_j)/(1 − ŷ_j) = y_j/ŷ_j² + (1 − y_j)/(1 − ŷ_j)²: H's diagonal."""
    return y / (y_hat * y_hat) + (1 - y) / ((1 - y_hat) * (1 - y_hat))


def _binary_cross_entropy_hessian(y_hat, y):
    """H = diag(y/ŷ² + (1 − y)/(1 − ŷ)²)."""
    return jnp.diag(_binary_cross_entropy_curvature(y_hat, y))


def _binary_cross_entropy_hessian_dot(y_hat, y, r):
    """H r = (y/ŷ² + (1 − y)/(1 − ŷ)²) ⊙ r."""
    return _binary_cross_entropy_curvature(y_hat, y) * r


def _binary_cross_entropy_hessian_factor(y_hat, y):
    """S = diag(√(y/ŷ² + (1 − y)/(1 − ŷ)²)), so S Sᵀ = H (targets in [0, 1])."""
    return jnp.diag(jnp.sqrt(_binary_cross_entropy_curvature(y_hat, y)))


mse = Loss("mse", _mse, _mse_grad, _mse_hessian, _mse_hessian, _mse_hessian_dot)
cross_entropy = Loss(
    "cross_entropy",
    _cross_entropy,
    _cross_entropy_grad,
    _cross_entropy_hessian,
    _cross_entropy_hessian_factor,
    _cross_entropy_hessian_dot,
)
binary_cross_entropy = Loss(
    "binary_cross_entropy",
    _binary_cross_entropy,
    _binary_cross_entropy_grad,
    _binary_cross_entropy_hessian,
    _binary_cross_entropy_hessian_factor,
    _binary_cross_entropy_hessian_dot,
)

LOSSES: dict[str, Loss] = {loss.name: loss for loss in (mse, cross_entropy, binary_cross_entropy)}


class FusedLoss(NamedTuple):
    """E and δ^L computed from the logits z^L for one output/loss pair.

    Attributes:
        fn: ``fn(z, y)``, the example's E, equal to ``loss.fn(σ(z), y)``.
        delta: ``delta(z, y)``, δ^L, equal to equation (4) for that pair.
        hessian: optional ``hessian(z, y)``, H = ∂²E/∂z², shape (N_L, N_L)
            (equation (11)).
        hessian_factor: optional ``hessian_factor(z, y)``, S with H = S Sᵀ.
        hessian_dot: optional ``hessian_dot(z, y, r)``, H r without forming H.
    """

    fn: Callable[[Array, Array], Array]
    delta: Callable[[Array, Array], Array]
    hessian: Callable[[Array, Array], Array] | None = None
    hessian_factor: Callable[[Array, Array], Array] | None = None
    hessian_dot: Callable[[Array, Array, Array], Array] | None = None


def _shifted_logits(z):
    """(z − m, log Σ_k exp(z_k − m)) with m = max_k z_k: what E and δ^L share.

    logsumexp(z) − z_j = log Σ_k exp(z_k − m) − (z_j − m), and the softmax is
    ŷ_j = exp((z_j − m) − log Σ_k exp(z_k − m)). Written so, E and δ^L take one
    max, one exp and one sum between them (XLA merges the common parts), and
    both stay accurate for large logits: z_j − m is exact for nearby values
    and the log lies in [0, log N_L], where exp(z − logsumexp(z)) would lose
    the digits of a large logsumexp. The max is a constant to differentiation
    (it cancels from E), as in `jax.nn.logsumexp`.
    """
    shifted = z - jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    return shifted, jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))


def _softmax_cross_entropy(z, y):
    """E = Σ_j y_j (logsumexp(z) − z_j)."""
    shifted, log_sum = _shifted_logits(z)
    return jnp.sum(y * (log_sum - shifted), axis=-1)


def _softmax_of_logits(z):
    """ŷ = exp((z − m) − log Σ_k exp(z_k − m)), through `_shifted_logits`."""
    shifted, log_sum = _shifted_logits(z)
    return jnp.exp(shifted - log_sum)


def _softmax_cross_entropy_delta(z, y):
    """δ^L = ŷ Σ_j y_j − y (= ŷ − y for targets that sum to one), ŷ the softmax of z."""
    return _softmax_of_logits(z) * jnp.sum(y, axis=-1, keepdims=True) - y


def _softmax_cross_entropy_hessian(z, y):
    """∂δ^L/∂z = (Σ_j y_j)(diag(ŷ) − ŷŷᵀ), the softmax Jacobian times Σ_j y_j (= 1 for labels)."""
    p = _softmax_of_logits(z)
    return jnp.sum(y) * (jnp.diag(p) - jnp.outer(p, p))


def _softmax_cross_entropy_hessian_dot(z, y, r):
    """H r = (Σ_j y_j)(ŷ ⊙ r − ŷ ⟨ŷ, r⟩): the softmax Jacobian's O(N_L) product."""
    p = _softmax_of_logits(z)
    return jnp.sum(y) * (p * r - p * jnp.sum(p * r))


def _softmax_cross_entropy_hessian_factor(z, y):
    """S = √(Σ_j y_j) (diag(√ŷ) − ŷ √ŷᵀ).

    S Sᵀ = diag(ŷ) − 2ŷŷᵀ + ŷ (√ŷᵀ√ŷ) ŷᵀ = diag(ŷ) − ŷŷᵀ, since √ŷᵀ√ŷ = Σ_j ŷ_j = 1.
    """
    p = _softmax_of_logits(z)
    root = jnp.sqrt(p)
    return jnp.sqrt(jnp.sum(y)) * (jnp.diag(root) - jnp.outer(p, root))


def _sigmoid_binary_cross_entropy(z, y):
    """E = Σ_j softplus(z_j) − y_j z_j."""
    return jnp.sum(jax.nn.softplus(z) - y * z, axis=-1)


def _sigmoid_binary_cross_entropy_delta(z, y):
    """δ^L = ŷ − y."""
    return jax.nn.sigmoid(z) - y


def _sigmoid_curvature(z):
    """∂(ŷ − y)/∂z_j = ŷ_j(1 − ŷ_j), ŷ = sigmoid(z), whatever the target: H's diagonal."""
    p = jax.nn.sigmoid(z)
    return p * (1 - p)


def _sigmoid_binary_cross_entropy_hessian(z, y):
    """H = diag(ŷ(1 − ŷ))."""
    return jnp.diag(_sigmoid_curvature(z))


def _sigmoid_binary_cross_entropy_hessian_dot(z, y, r):
    """H r = ŷ(1 − ŷ) ⊙ r."""
    return _sigmoid_curvature(z) * r


def _sigmoid_binary_cross_entropy_hessian_factor(z, y):
    """S = diag(√(ŷ(1 − ŷ)))."""
    return jnp.diag(jnp.sqrt(_sigmoid_curvature(z)))


# Keyed by the objects themselves, not their names, so a user's own
# Activation("softmax", ...) with its own derivative is never replaced by ours.
_FUSED = {
    (activations.softmax, cross_entropy): FusedLoss(
        _softmax_cross_entropy,
        _softmax_cross_entropy_delta,
        _softmax_cross_entropy_hessian,
        _softmax_cross_entropy_hessian_factor,
        _softmax_cross_entropy_hessian_dot,
    ),
    (activations.sigmoid, binary_cross_entropy): FusedLoss(
        _sigmoid_binary_cross_entropy,
        _sigmoid_binary_cross_entropy_delta,
        _sigmoid_binary_cross_entropy_hessian,
        _sigmoid_binary_cross_entropy_hessian_factor,
        _sigmoid_binary_cross_entropy_hessian_dot,
    ),
}


def fused_loss(output: activations.Activation, loss: Loss) -> FusedLoss | None:
    """The fused, logits-based E and δ^L for this output/loss pair, if we have one."""
    return _FUSED.get((output, loss))


def get_loss(spec: str | Loss, *, argument: str = "loss") -> Loss:
    """Resolve a name or a `Loss` to a `Loss`.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
        TypeError: for anything that is neither a name nor a `Loss`.
    """
    return resolve(spec, Loss, LOSSES, "loss", argument)


OUTPUT_LOSS_PAIRS = (
    ("identity", "mse"),
    ("tanh", "mse"),
    ("sigmoid", "mse"),
    ("softmax", "mse"),
    ("softmax", "cross_entropy"),
    ("sigmoid", "binary_cross_entropy"),
    ("sigmoid", "cross_entropy"),
)
"""Output function and loss pairs that make sense together: the catalogue crosses them with
every hidden activation (`manualbp verify`, the tests)."""
