"""Checking the per-example extensions against autodiff: one row per quantity per layer.

The reference is what a JAX user would write: every example's gradient g_b by
`jax.vmap` of `jax.grad` of its own E_b, materialized, then squared, normed,
summed or clipped as the definitions say (autodiff is allowed here only, in
the witness). The manual side is the public functions of `per_example`.

The verdict is `verify`'s (`tolerance.judge`, docs/derivation.md): each
quantity is formed from the float64 g_b of the same inputs cast up (the
reference) and from the g_b of autodiff in the net's own dtype (the witness);
the manual result passes when its distance to the reference is within K times
the larger of the witness's distance and the floor. Squared quantities:

* a square x² of a value with relative error r has relative error 2r, so the
  floor of (5), (6) and (7) counts twice the gradient's depth
  (`SQUARED_FACTOR`);
* (7) is a difference whose terms are (1/B) Σ_b g_b²: its scale is that;
* (8)–(9): the clip factor c_b = C / ‖g_b‖ has half the relative error of
  ‖g_b‖², and g_b its own: the clipped mean's floor counts twice the depth too,
  at the scale (1/B) |c ⊙ Δ^l|ᵀ |A^{l-1}| of its terms.

Every comparison goes through `extension_rows.check`, so a new tolerance rule is a change
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
from manualbp._records import environment
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
)
from manualbp.parameters import param_dtype
from manualbp.verification import witnesses
from manualbp.verification.extension_rows import (
    Clipping,
    Part,
    check,
    clipped_row,
    l2_row,
    sum_grad_squared_row,
    variance_row,
)
from manualbp.verification.report import Report, Row

Array = jax.Array

SQUARED_FACTOR = 2
"""The floor's depth of a squared, normed or clipped quantity, in units of the gradient's: a
square doubles the relative rounding of what it squares (module docstring)."""

CATALOGUE_SIZES = (5, 7, 6, 3)
"""As `manualbp verify`'s catalogue: two hidden layers, all widths distinct."""
CATALOGUE_BATCH = 8


# --- the autodiff reference ---------------------------------------------------------------


def example_grads(net: MLP, params: Params, X: Array, Y: Array) -> Params:
    """g_b = ∂E_b/∂θ for every example, by `jax.vmap` of `jax.grad`; leaves lead with B."""

    def E_b(params, x, y):
        fwd = forward_pass(net, params, x)
        return example_loss(net, fwd.z[-1], fwd.a[-1], y)

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


def verify_extensions(
    net: MLP, params: Params, X: Array, Y: Array, *, float64: bool = False
) -> Report:
    """Check `batch_l2`, `sum_grad_squared`, `variance` and `clipped_value_and_grad`.

    One row per quantity, per layer and per W/b, judged as `verify` judges
    (`tolerance.judge`): against `jax.vmap` of `jax.grad` of each example's
    E_b in float64 from the same inputs cast up, by the error of the same
    autodiff route in the net's dtype. The clipped gradient is taken at three
    clips (`test_clips`): below every ‖g_b‖, between the smallest and the
    largest, above every one.

    Args:
        net, params, X, Y: the network, its parameters and a batch (finite).
        float64: run the extensions themselves in float64 too (then there is
            no higher precision for the reference, and the report says so).

    Returns:
        A `Report`.
    """
    X, Y = validation.check_batch(net, params, X, Y)
    validation.check_finite(X, Y, dtypes=(jnp.float64 if float64 else param_dtype(params),))
    with jax.enable_x64(float64 or bool(jax.config.jax_enable_x64)):
        dtype = jnp.dtype(jnp.float64 if float64 else param_dtype(params))
        params = jax.tree.map(lambda p: jnp.asarray(p, dtype), params)
        X = jnp.asarray(X, dtype)
        Y = as_targets(net, jnp.asarray(Y), dtype)
        rows = _rows(net, params, X, Y, dtype)
    meta = {
        "subject": f"extensions of {net!r}",
        "batch": int(X.shape[0]),
        "dtype": str(dtype),
        "reference": witnesses.reference_note(dtype),
        **environment(),
    }
    return Report(tuple(rows), meta)


def _references(net, params, X, Y, dtype):
    """(g_b and Ē in float64 from the inputs cast up, the same in ``dtype`` or None)."""
    with jax.enable_x64(True):
        up = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), (params, X, Y))
        G64, E64 = jax.tree.map(np.asarray, _reference(net, *up))
    if dtype == witnesses.REFERENCE_DTYPE:
        return (G64, E64), (None, None)
    return (G64, E64), jax.tree.map(np.asarray, _reference(net, params, X, Y))


def _rows(net, params, X, Y, dtype) -> list[Row]:
    (G64, E64), (Gw, Ew) = _references(net, params, X, Y, dtype)
    norms = _norms(G64)
    clips, unjudged = test_clips(norms, dtype)
    manual = _Manual(
        per_example.batch_l2(net, params, X, Y),
        per_example.sum_grad_squared(net, params, X, Y),
        per_example.variance(net, params, X, Y),
        {
            name: per_example.clipped_value_and_grad(net, params, X, Y, l2_clip=clip)
            for name, clip in clips.items()
        },
    )
    depth = SQUARED_FACTOR * (net.L - 1)
    rows = []
    for k, g in enumerate(G64):
        layer_norm = _norms((g,))
        for field in ("W", "b"):
            gw = None if Gw is None else getattr(Gw[k], field)
            part = Part(getattr(g, field), gw, dtype, depth, k + 2, field)
            rows += [
                l2_row(part, manual.l2[k]),
                sum_grad_squared_row(part, manual.sum_grad_squared[k]),
                variance_row(part, manual.variance[k]),
            ]
            for name, (_, grads) in manual.clipped.items():
                clipping = Clipping(name, clips[name], norms, layer_norm)
                rows.append(clipped_row(part, getattr(grads[k], field), clipping))
    E_part = Part(E64, Ew, dtype, net.L - 1, None, "Ē")
    for E, _ in list(manual.clipped.values())[:1]:
        rows.append(check(E_part, ("clipped", None), E, lambda E: E))
    return rows + unjudged


def _norms(G) -> np.ndarray:
    """‖g_b‖ over every layer of ``G`` in float64, scaled first so that no square overflows."""
    leaves = [np.asarray(g, np.float64).reshape(len(g), -1) for g in jax.tree.leaves(G)]
    top = np.max(np.concatenate([np.abs(g) for g in leaves], axis=1), axis=1)
    safe = np.where(top > 0, top, 1.0)
    return top * np.sqrt(sum(np.sum((g / safe[:, None]) ** 2, axis=1) for g in leaves))


CLIPS = {"below every ‖g_b‖": 0.5, "between": None, "above every ‖g_b‖": 2.0}
"""The clips the clipped gradient is checked at: half the smallest norm, the geometric mean
of the smallest and the largest, twice the largest. A clip the derivation ignores (or one
of its own, such as the batch's median norm) cannot agree at all three."""


def test_clips(norms, dtype) -> tuple[dict, list]:
    """({name: l2_clip}, not-judged rows): clips that bracket the batch's norms (`CLIPS`).

    Only clips at which every ‖g_b‖² (which the clip factor needs) is a finite
    normal number of ``dtype``: where the squares overflow or underflow there,
    no derivation can be judged in this dtype, and a row says so.
    """
    info = np.finfo(np.dtype(dtype))
    positive = norms[norms > 0]
    if positive.size == 0:  # every g_b = 0: c_b = 1 whatever the clip
        return {"any": 1.0}, []
    low, high = float(np.min(positive)), float(np.max(positive))
    name = np.dtype(dtype).name
    if high > np.sqrt(float(info.max)) or low < np.sqrt(float(info.tiny)):
        reason = (
            f"‖g_b‖ ranges over [{low:.3g}, {high:.3g}] (float64), so ‖g_b‖² leaves {name}'s "
            f"normal range [{float(info.tiny):.3g}, {float(info.max):.3g}]: the clipped "
            f"gradient is not judged in {name}"
        )
        return {}, [Row("clipped", 9, None, np.nan, np.nan, np.nan, False, reason, judged=False)]
    clips = {}
    for label, factor in CLIPS.items():
        clip = np.sqrt(low * high) if factor is None else factor * (low if factor < 1 else high)
        if factor is None and low == high:
            continue  # one norm: nothing lies between
        clips[label] = float(clip)
    return clips, []


class _Manual(NamedTuple):
    """The quantities under test, per layer; ``clipped`` maps a clip's name to (Ē, grads)."""

    l2: tuple
    sum_grad_squared: tuple
    variance: tuple
    clipped: dict


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
