"""Checking the per-example extensions against autodiff: one row per quantity per layer.

The reference is what a JAX user would write: every example's gradient g_b by
`jax.vmap` of `jax.grad` of its own E_b, materialized, then squared, normed,
summed or clipped as the definitions say (autodiff is allowed here only, in
the witness). The manual side is the public functions of `per_example`.

Tolerance for squared quantities. Every row passes by (T1) with rtol twice the
gradient's (T2), and where a row is a difference or a sum that may cancel
(variance, the clipped gradient) with the scale (T3) of the terms it sums:

* a square x² of a value with relative error r has relative error 2r; a sum
  of B non-negative squares adds no cancellation, and the √B of its rounding
  is already in (T2)'s n; so (5), (6) and the first term of (7) get 2 · rtol;
* (7) is a difference whose terms are (1/B) Σ_b g_b²: its scale is that;
* (8)–(9): the clip factor c_b = C / ‖g_b‖ has half the relative error of
  ‖g_b‖², at most rtol, and g_b its own rtol: the clipped mean gets 2 · rtol,
  at the scale (1/B) |c ⊙ Δ^l|ᵀ |A^{l-1}| of its terms.

Every comparison goes through `_check`, so a new tolerance rule is a change
in one place. A failing row is diagnosed by named wrong forms (a missing
square, the 1/B-scaled Δ^l, a sum for a mean, clipping per layer) before
`compare`'s constant factor ("off by ×8" is ×B for a batch of 8).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from manualbp import validation
from manualbp.activations import HIDDEN_ACTIVATIONS
from manualbp.data import random_batch
from manualbp.extensions import per_example
from manualbp.losses import OUTPUT_LOSS_PAIRS
from manualbp.network import (
    MLP,
    Layer,
    Params,
    as_targets,
    example_loss,
    forward_pass,
    mean_loss,
    param_dtype,
)
from manualbp.records import environment
from manualbp.verification.compare import compare, row_rtol
from manualbp.verification.report import Report, Row

Array = jax.Array

SQUARED_FACTOR = 2
"""rtol of a squared, normed or clipped quantity, in units of the gradient's (module docstring)."""

CATALOGUE_SIZES = (5, 7, 6, 3)
"""As `manualbp verify`'s catalogue: two hidden layers, all widths distinct."""
CATALOGUE_BATCH = 8


# --- the autodiff reference ---------------------------------------------------------------


def example_grads(net: MLP, params: Params, X: Array, Y: Array) -> Params:
    """g_b = ∂E_b/∂θ for every example, by `jax.vmap` of `jax.grad`; leaves lead with B."""

    def E_b(params, x, y):
        zs, as_ = forward_pass(net, params, x)
        return example_loss(net, zs[-1], as_[-1], y)

    return jax.vmap(jax.grad(E_b), in_axes=(None, 0, 0))(params, X, Y)


@functools.partial(jax.jit, static_argnums=0)
def _reference(net: MLP, params: Params, X: Array, Y: Array) -> tuple[Params, Array]:
    """Every g_b and Ē, by autodiff and the forward pass: one compiled program."""
    return example_grads(net, params, X, Y), mean_loss(net, params, X, Y)


def clip_materialized(G: Params, l2_clip) -> Params:
    """(1/B) Σ_b min(1, C / ‖g_b‖) g_b from materialized g_b: the vmap(grad)-then-clip route."""
    norms = jnp.sqrt(sum(jnp.sum(g * g, axis=tuple(range(1, g.ndim))) for g in jax.tree.leaves(G)))
    c = jnp.where(norms > 0, jnp.minimum(1, l2_clip / jnp.where(norms > 0, norms, 1)), 1)
    return jax.tree.map(lambda g: jnp.mean(c.reshape((-1,) + (1,) * (g.ndim - 1)) * g, axis=0), G)


def _squared_norms(G: Params) -> Params:
    return tuple(Layer(W=jnp.sum(g.W * g.W, axis=(1, 2)), b=jnp.sum(g.b * g.b, axis=1)) for g in G)


# --- the check ------------------------------------------------------------------------------


def _check(quantity, equation, l, part, actual, reference, rtol, candidates=None, magnitude=None):
    """One row: every extension comparison goes through here (the one place of the rule)."""
    return compare(
        f"{quantity} {part}",
        equation,
        l,
        actual,
        reference,
        SQUARED_FACTOR * rtol,
        "",
        candidates,
        magnitude,
    )


def verify_extensions(
    net: MLP, params: Params, X: Array, Y: Array, *, float64: bool = False
) -> Report:
    """Check `batch_l2`, `sum_grad_squared`, `variance` and `clipped_value_and_grad`.

    One row per quantity, per layer and per W/b, against `jax.vmap` of
    `jax.grad` of each example's E_b; the clipped gradient at l2_clip = the
    median ‖g_b‖, so that some examples are clipped and some not.

    Args:
        net, params, X, Y: the network, its parameters and a batch (finite).
        float64: run both sides in float64 (inside `jax.enable_x64`).

    Returns:
        A `Report`.
    """
    X, Y = validation.check_batch(net, params, X, Y)
    validation.check_finite(X, Y, dtypes=(jnp.float64 if float64 else param_dtype(params),))
    with jax.enable_x64(float64 or bool(jax.config.jax_enable_x64)):
        dtype = jnp.float64 if float64 else param_dtype(params)
        params = jax.tree.map(lambda p: jnp.asarray(p, dtype), params)
        X = jnp.asarray(X, dtype)
        Y = as_targets(net, jnp.asarray(Y), dtype)
        rows = _rows(net, params, X, Y, row_rtol(dtype, net.sizes, X.shape[0]))
    meta = {
        "subject": f"extensions of {net!r}",
        "batch": int(X.shape[0]),
        "dtype": str(jnp.dtype(dtype)),
        **environment(),
    }
    return Report(tuple(rows), meta)


def _rows(net, params, X, Y, rtol) -> list[Row]:
    G, E_ref = jax.tree.map(np.asarray, _reference(net, params, X, Y))
    norms = np.sqrt(sum(np.asarray(n.W + n.b) for n in _squared_norms(G)))
    l2_clip = float(np.median(norms)) or 1.0
    manual = _Manual(
        per_example.batch_l2(net, params, X, Y),
        per_example.sum_grad_squared(net, params, X, Y),
        per_example.variance(net, params, X, Y),
        *per_example.clipped_value_and_grad(net, params, X, Y, l2_clip=l2_clip),
    )
    clip = _ClipFactors(
        overall=_clip_factor(l2_clip, norms),
        from_square=_clip_factor(l2_clip, norms**2),
    )
    rows = []
    for k, g in enumerate(G):
        layer_norm = np.sqrt(np.sum(g.W * g.W, axis=(1, 2)) + np.sum(g.b * g.b, axis=1))
        per_layer = _clip_factor(l2_clip, layer_norm)
        for part in ("W", "b"):
            where = (k, part, rtol)
            g_ = getattr(g, part)
            rows += [
                _l2_row(where, manual.l2[k], g_),
                _sum_grad_squared_row(where, manual.sum_grad_squared[k], g_),
                _variance_row(where, manual.variance[k], g_),
                _clipped_row(where, manual.clipped[k], g_, clip, per_layer),
            ]
    rows.append(_check("clipped", None, None, "Ē", manual.E, E_ref, rtol))
    return rows


class _Manual(NamedTuple):
    """The four quantities under test, per layer."""

    l2: tuple
    sum_grad_squared: tuple
    variance: tuple
    E: Array
    clipped: tuple


class _ClipFactors(NamedTuple):
    overall: np.ndarray  # min(1, C/‖g_b‖), the right one
    from_square: np.ndarray  # min(1, C/‖g_b‖²), a wrong one


def _clip_factor(l2_clip: float, norms: np.ndarray) -> np.ndarray:
    return np.minimum(1.0, l2_clip / np.where(norms > 0, norms, 1.0))


def _per_b(g_: np.ndarray) -> tuple[int, ...]:
    """The shape that broadcasts a (B,) factor over per-example gradients like ``g_``."""
    return (-1,) + (1,) * (g_.ndim - 1)


def _l2_row(where, manual, g_) -> Row:
    k, part, rtol = where
    B = g_.shape[0]
    norm2 = np.sum(g_ * g_, axis=tuple(range(1, g_.ndim)))
    wrong = {
        "not squared: ‖δ^l_b‖ ‖a^{l-1}_b‖, not its square": np.sqrt(norm2),
        "Δ^l scaled by 1/B (the fast form's), off by ×1/B²": norm2 / B**2,
    }
    return _check("batch_l2", 5, k + 2, part, getattr(manual, part), norm2, rtol, wrong)


def _sum_grad_squared_row(where, manual, g_) -> Row:
    k, part, rtol = where
    squares, total = g_ * g_, g_.sum(axis=0)
    wrong = {
        "not squared: Σ_b g_b": total,
        "squared after the sum: (Σ_b g_b)²": total**2,
        "averaged, not summed: off by ×1/B": squares.mean(axis=0),
    }
    expected = squares.sum(axis=0)
    return _check("sum_grad_squared", 6, k + 2, part, getattr(manual, part), expected, rtol, wrong)


def _variance_row(where, manual, g_) -> Row:
    k, part, rtol = where
    B = g_.shape[0]
    squares, mean = g_ * g_, g_.mean(axis=0)
    wrong = {
        "mean not subtracted: (1/B) Σ_b g_b²": squares.mean(axis=0),
        "summed, not averaged: Σ_b g_b² − (Σ_b g_b)²": squares.sum(0) - (B * mean) ** 2,
    }
    expected = squares.mean(axis=0) - mean**2
    return _check(
        "variance",
        7,
        k + 2,
        part,
        getattr(manual, part),
        expected,
        rtol,
        wrong,
        magnitude=squares.mean(axis=0),
    )


def _clipped_row(where, manual, g_, clip: _ClipFactors, per_layer: np.ndarray) -> Row:
    k, part, rtol = where
    B, shape = g_.shape[0], _per_b(g_)
    expected = np.mean(clip.overall.reshape(shape) * g_, axis=0)
    wrong = {
        "not clipped: the mean gradient": g_.mean(axis=0),
        "summed over the batch, not averaged: off by ×B": B * expected,
        "clipped per layer, not over all layers together": np.mean(
            per_layer.reshape(shape) * g_, axis=0
        ),
        "clip factor from ‖g_b‖², not ‖g_b‖": np.mean(clip.from_square.reshape(shape) * g_, axis=0),
    }
    return _check(
        "clipped",
        9,
        k + 2,
        part,
        getattr(manual, part),
        expected,
        rtol,
        wrong,
        magnitude=np.mean(np.abs(clip.overall.reshape(shape) * g_), axis=0),
    )


def catalogue_extensions(dtype=jnp.float32) -> list[Report]:
    """`verify_extensions` over every hidden activation × (output, loss) pair, in ``dtype``."""
    dtype = jnp.dtype(dtype)
    float64 = dtype == jnp.float64
    reports = []
    with jax.enable_x64(float64):
        for hidden in HIDDEN_ACTIVATIONS:
            for output, loss in OUTPUT_LOSS_PAIRS:
                net = MLP(CATALOGUE_SIZES, hidden=hidden, output=output, loss=loss)
                key_params, key_data = jax.random.split(jax.random.key(0))
                params = net.init(key_params, dtype, scheme="nielsen_scaled")
                X, Y = random_batch(net, key_data, CATALOGUE_BATCH, dtype)
                reports.append(verify_extensions(net, params, X, Y, float64=float64))
    return reports
