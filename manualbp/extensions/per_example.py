"""Per-example quantities from Δ^l and A^{l-1} at the cost of one batch gradient: eqs. (5)–(9).

The backward pass of docs/derivation.md, section 5, already holds, for every
example b, its own error δ^l_b = ∂E_b/∂z^l_b (row b of Δ^l, computed from
δ^L_b by equation (1), with no 1/B: it is the error of E_b, not of the batch
mean, unlike the fast form's Δ̃^l) and its input a^{l-1}_b (row b of A^{l-1}).
By equation (2) example b's gradient is the outer product g_b = δ^l_b
(a^{l-1}_b)ᵀ, so anything built from outer products of rows can be summed or
normed without ever forming g_b:

* (5) the per-example squared norms, ‖δ^l_b‖² ‖a^{l-1}_b‖² and ‖δ^l_b‖²;
* (6) the sum of squared per-example gradients, one matmul of squares;
* (7) their variance over the batch;
* (8), (9) DP-SGD's clip factors and the clipped mean gradient, one matmul.

Each equation is one function on the batched Δ^l (B, N_l) and A^{l-1}
(B, N_{l-1}). Equations (5)–(7) replace (2) and (3) in the very loop that
computes the gradient (`backprop.backward`, the one recursion, with
another `Equations` set), so a quantity costs what the gradient costs. Definitions
(pinned): E_b is example b's own loss, Ē = (1/B) Σ_b E_b, g_b = ∂E_b/∂θ.
Nothing here calls autodiff.

The public functions take ``(net, params, X, Y)`` like
`mbp.manual_value_and_grad`, check them, and return tuples of `Layer` in
params order, in the parameters' dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from manualbp import validation
from manualbp._entry import entry_point, value_like_params
from manualbp.backprop import (
    Equations,
    backward,
    backward_with_deltas,
    delta_L_batch,
    gradient_steps,
    hidden_delta_batch,
    weight_grad_sum,
)
from manualbp.network import MLP, Layer, Params, forward_pass_batch, mean_loss_of

Array = jax.Array

__all__ = ["batch_l2", "clipped_value_and_grad", "sum_grad_squared", "variance"]


# --- the equations, one function each ---------------------------------------------------


def weight_norm_squared(delta: Array, a_prev: Array) -> Array:
    """Eq. (5): ‖∂E_b/∂W^l‖²_F = ‖δ^l_b‖² ‖a^{l-1}_b‖² for every b. Shape: (B,).

    By (2), ∂E_b/∂W^l_kj = δ^l_bk a^{l-1}_bj, so Σ_kj (δ^l_bk a^{l-1}_bj)² =
    (Σ_k δ^l_bk²)(Σ_j a^{l-1}_bj²): the norm of an outer product is the
    product of the norms. O(B (N_l + N_{l-1})) work, no (N_l, N_{l-1}) array.
    """
    delta, a_prev = wide(delta), wide(a_prev)
    return jnp.sum(delta * delta, axis=1) * jnp.sum(a_prev * a_prev, axis=1)


def bias_norm_squared(delta: Array) -> Array:
    """Eq. (5): ‖∂E_b/∂b^l‖² = ‖δ^l_b‖² for every b, by (3). Shape: (B,)."""
    delta = wide(delta)
    return jnp.sum(delta * delta, axis=1)


def wide(x: Array) -> Array:
    """x in float32, or its own dtype where wider: 16-bit squares lose the clip's bound.

    A bfloat16 sum of squares is off by up to about 1% (8 significant bits),
    so a clip factor made from it let ‖c_b g_b‖ reach 1.0099 C; float16
    squares also overflow above 256. The squares of 16-bit numbers are exact
    in float32.
    """
    return x if jnp.finfo(x.dtype).bits >= 32 else x.astype(jnp.float32)


def weight_sum_squared(delta: Array, a_prev: Array) -> Array:
    """Eq. (6): Σ_b (∂E_b/∂W^l)⊙² = (Δ^l ⊙ Δ^l)ᵀ (A^{l-1} ⊙ A^{l-1}). Shape: (N_l, N_{l-1}).

    Entry (k, j) is Σ_b (δ^l_bk a^{l-1}_bj)² = Σ_b δ^l_bk² a^{l-1}_bj²: equation
    (2)'s batch sum with each factor squared, one matrix product.
    """
    return weight_grad_sum(delta * delta, a_prev * a_prev)


def bias_sum_squared(delta: Array) -> Array:
    """Eq. (6): Σ_b (∂E_b/∂b^l)⊙² = Σ_b δ^l_b ⊙ δ^l_b. Shape: (N_l,)."""
    return jnp.sum(delta * delta, axis=0)


def weight_variance(delta: Array, a_prev: Array) -> Array:
    """Eq. (7): (1/B) Σ_b g_b⊙² − ((1/B) Σ_b g_b)⊙² for W^l. Shape: (N_l, N_{l-1}).

    The first term is (6) over B, the second the square of (2)'s batch mean
    (Δ^l)ᵀ A^{l-1} / B. As a difference of two rounded terms it can come out
    a rounding error below zero where the variance is zero.
    """
    B = delta.shape[0]
    mean = weight_grad_sum(delta, a_prev) / B
    return weight_sum_squared(delta, a_prev) / B - mean * mean


def bias_variance(delta: Array) -> Array:
    """Eq. (7) for b^l: (1/B) Σ_b δ^l_b⊙² − ((1/B) Σ_b δ^l_b)⊙². Shape: (N_l,)."""
    mean = jnp.mean(delta, axis=0)
    return jnp.mean(delta * delta, axis=0) - mean * mean


def clip_factors(norms_squared: Params, l2_clip: float, dtype) -> Array:
    """Eq. (8): c_b = min(1, C' / ‖g_b‖), ‖g_b‖² = Σ_l (‖∂E_b/∂W^l‖² + ‖∂E_b/∂b^l‖²). Shape: (B,).

    ``norms_squared`` holds (5) for every layer, in float32 or wider (`wide`);
    the norm is over all layers together, and c_b comes out in that width.
    Written as C' / max(C', ‖g_b‖), which equals min(1, C' / ‖g_b‖) and is
    defined at ‖g_b‖ = 0: there c_b = 1 (a zero gradient is within any clip
    and stays zero), with no 0/0 and no inf.

    C' = C (1 − ε_dtype), ε_dtype the spacing of ``dtype`` at 1, the dtype
    the rows c_b δ^l_b are rounded to before they are summed: that rounding
    grows each entry by at most a factor 1 + ε_dtype / 2, so the clipped
    example's contribution, as summed, keeps ‖c_b g_b‖ ≤ C (tested in
    bfloat16 and float16, where ε is 2⁻⁷ and 2⁻¹⁰).
    """
    total = sum(layer.W + layer.b for layer in norms_squared)
    margin = 1.0 - float(jnp.finfo(dtype).eps)
    clip = jnp.asarray(l2_clip * margin, total.dtype)
    return clip / jnp.maximum(clip, jnp.sqrt(total))


def clipped_weight_grad(c: Array, delta: Array, a_prev: Array) -> Array:
    """Eq. (9): (1/B) Σ_b c_b δ^l_b (a^{l-1}_b)ᵀ = (c ⊙ Δ^l)ᵀ A^{l-1} / B. Shape: (N_l, N_{l-1}).

    c ⊙ Δ^l scales row b by c_b; one matrix product then sums the clipped
    per-example gradients ("ghost clipping"). The 1/B rides on the row scale,
    c_b / B, the same rows `clipped_bias_grad` sums, so the two share one pass.
    """
    return weight_grad_sum(_scaled_rows(c, delta), a_prev)


def clipped_bias_grad(c: Array, delta: Array) -> Array:
    """Eq. (9): (1/B) Σ_b c_b δ^l_b. Shape: (N_l,)."""
    return jnp.sum(_scaled_rows(c, delta), axis=0)


def _scaled_rows(c: Array, delta: Array) -> Array:
    """Row b of Δ^l times c_b / B, multiplied in c's width and rounded once to Δ^l's dtype."""
    return ((c / delta.shape[0])[:, None] * delta.astype(c.dtype)).astype(delta.dtype)


# Equations (5)–(7) in place of (2) and (3) in the backward pass: its Δ^L is the
# per-example δ^L_b (delta_L_batch, no 1/B), so every Δ^l is per example.
NORMS = Equations(delta_L_batch, hidden_delta_batch, weight_norm_squared, bias_norm_squared)
SUM_SQUARED = Equations(delta_L_batch, hidden_delta_batch, weight_sum_squared, bias_sum_squared)
VARIANCE = Equations(delta_L_batch, hidden_delta_batch, weight_variance, bias_variance)


def norms_and_deltas(net: MLP, params: Params, X: Array, Y: Array) -> tuple:
    """One forward pass, then (5) in the backward pass: (fwd, norms, deltas).

    ``norms`` holds each layer's per-example squared norms, ``deltas`` each Δ^l
    (per example, no 1/B), and ``fwd`` the A^{l-1} that (9) multiplies them with.
    """
    fwd = forward_pass_batch(net, params, X)
    delta_L = delta_L_batch(net, fwd.z[-1], fwd.a[-1], Y)
    norms, deltas = backward(net, params, fwd, delta_L, *gradient_steps(*NORMS[1:]))
    return fwd, norms, deltas


def clipped_mean_grad(
    net: MLP, params: Params, X: Array, Y: Array, l2_clip: float
) -> tuple[Array, Params]:
    """(Ē, g) by (5), (8) and (9), in the dtype of params, X and Y (all one).

    One forward pass: its A^{l-1} feed both (5) and (9).
    """
    fwd, norms, deltas = norms_and_deltas(net, params, X, Y)
    c = clip_factors(norms, l2_clip, X.dtype)
    grads = tuple(
        Layer(W=clipped_weight_grad(c, delta, a_prev), b=clipped_bias_grad(c, delta))
        for delta, a_prev in zip(deltas, fwd.a[:-1], strict=True)
    )
    return mean_loss_of(net, fwd, Y), grads


# --- the public functions, each built by _entry.entry_point ------------------------------


def _quantity(net: MLP, params: Params, X: Array, Y: Array, equations: Equations) -> Params:
    """Equations (5), (6) or (7) in the places of (2) and (3) of the backward pass."""
    return backward_with_deltas(net, params, X, Y, equations)[1]


def _check_batch(net, params, X, Y, equations):
    return (*validation.check_batch(net, params, X, Y), equations)


def _check_clip(net, params, X, Y, l2_clip):
    # A Python float: jit's fast path passes it without building an array per call.
    return (*validation.check_batch(net, params, X, Y), check_l2_clip(l2_clip))


_per_layer = entry_point(_quantity, _check_batch, static=(0,))
_clipped_value_and_grad = entry_point(
    clipped_mean_grad, _check_clip, uncast=(0,), back=value_like_params
)


def batch_l2(net: MLP, params: Params, X: Array, Y: Array) -> Params:
    """Each example's squared gradient norm per layer, by eq. (5); no g_b is formed.

    Returns:
        One ``Layer(W=(B,), b=(B,))`` per layer: ‖∂E_b/∂W^l‖²_F = ‖δ^l_b‖² ‖a^{l-1}_b‖²
        and ‖∂E_b/∂b^l‖² = ‖δ^l_b‖², for b = 1..B.
    """
    return _per_layer(net, params, X, Y, NORMS)


def sum_grad_squared(net: MLP, params: Params, X: Array, Y: Array) -> Params:
    """Σ_b g_b ⊙ g_b, by eq. (6): one matmul (Δ^l⊙Δ^l)ᵀ(A^{l-1}⊙A^{l-1}) per layer.

    Returns:
        One ``Layer(W, b)`` per layer, shaped like params.
    """
    return _per_layer(net, params, X, Y, SUM_SQUARED)


def variance(net: MLP, params: Params, X: Array, Y: Array) -> Params:
    """(1/B) Σ_b g_b² − ((1/B) Σ_b g_b)², elementwise, by eq. (7).

    Returns:
        One ``Layer(W, b)`` per layer, shaped like params.
    """
    return _per_layer(net, params, X, Y, VARIANCE)


def clipped_value_and_grad(
    net: MLP, params: Params, X: Array, Y: Array, *, l2_clip: float
) -> tuple[Array, Params]:
    """Ē and DP-SGD's clipped mean gradient, by eqs. (5), (8) and (9).

    g = (1/B) Σ_b min(1, l2_clip / ‖g_b‖) g_b, where ‖g_b‖ is example b's
    gradient norm over all layers together, taken from `batch_l2`'s (5); the
    clipped sum is (c ⊙ Δ^l)ᵀ A^{l-1}, one matmul per layer. An example with
    ‖g_b‖ = 0 has c_b = 1 (computed as C' / max(C', ‖g_b‖), never 0/0) and
    adds nothing; one with ‖g_b‖ ≤ C' is kept as it is, where C' is l2_clip
    less a rounding margin of one ulp of the dtype (`clip_factors`).

    Args:
        net, params, X, Y: the network, its parameters and a batch.
        l2_clip: C > 0, the largest norm one example's gradient may have.

    Returns:
        (Ē, g), g with the structure and dtype of params.
    """
    return _clipped_value_and_grad(net, params, X, Y, l2_clip)


def check_l2_clip(l2_clip) -> float:
    """l2_clip must be a finite number > 0."""
    try:
        value = float(l2_clip)
    except (TypeError, ValueError):
        value = None
    if isinstance(l2_clip, bool) or value is None:
        raise TypeError(f"l2_clip: expected a positive number, got {l2_clip!r}")
    if not 0 < value < float("inf"):
        raise ValueError(f"l2_clip: expected a finite number > 0, got {l2_clip!r}")
    return value
