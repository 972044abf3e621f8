"""σ' and ∂E/∂ŷ over a grid of hard places: `verify_activation`, `verify_loss`, plug-ins.

A derivation bug is a property of σ' or ∂E/∂ŷ, not of a batch: over a grid
that reaches kinks, tails and saturation, a σ' wrong only where a batch's
units saturate or die fails, where the batch rows (blocks.py) pass. Each row
is judged as in the net (`tolerance.judge`): its distance to autodiff in
float64 at the same points cast up, against autodiff's in the same dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from manualbp import autodiff, validation
from manualbp._records import environment
from manualbp.activations import ACTIVATIONS, Activation, get_activation
from manualbp.losses import LOSSES, Loss, get_loss
from manualbp.verification import kinks, witnesses
from manualbp.verification.blocks import jac_t_dot_row, sigma_row, sigma_slips
from manualbp.verification.compare import Clues, Rounding, Setting, Site, compare
from manualbp.verification.report import Report, Row


def plug_in_rows(net, zs, dtype) -> list[Row]:
    """Each distinct plug-in σ' (and ∂E/∂ŷ) over its grid of hard places, next to the batch.

    A derivation bug is a property of σ', not of a batch: a σ' wrong only
    where a batch's units saturate or die passes the batch rows and fails
    here. A failing grid row says where the batch's z^l lay, so the reader
    sees that the batch never reached the region. Built-in activations and
    losses have their own tests and are not run again; rows the grid cannot
    judge (a loss undefined on the spread) are left out, as no evidence.
    """
    builtin = set(ACTIVATIONS.values())
    rows = []
    for sigma in dict.fromkeys(net.activations):
        if sigma in builtin or not sigma.elementwise:
            continue
        layers = [k for k, s in enumerate(net.activations) if s is sigma]
        z = np.concatenate([np.ravel(np.asarray(zs[k], np.float64)) for k in layers])
        reach = (
            f"the batch's z at layer{'s' if len(layers) > 1 else ''} "
            f"{', '.join(str(k + 2) for k in layers)} lie in [{z.min():.3g}, {z.max():.3g}]"
        )
        for row in verify_activation(sigma, dtype).rows:
            rows.append(_grid_row(row, sigma.name, reach))
    if net.loss not in set(LOSSES.values()) and not (net.fused and net.fused_loss is not None):
        for row in verify_loss(net.loss, dtype, width=net.sizes[-1]).rows:
            rows.append(_grid_row(row, net.loss.name, ""))
    return [row for row in rows if row.judged]


def _grid_row(row: Row, name: str, reach: str) -> Row:
    """A grid row, named for the net's report; a miss says where the batch was."""
    if row.passed or not reach:
        return row._replace(check=f"{row.check} grid ({name})")
    return row._replace(check=f"{row.check} grid ({name})", diagnosis=f"{row.diagnosis}; {reach}")


SPECIAL_Z = {
    "at 0": [0.0],
    "near 0": [-1e-6, 1e-6, -1e-3, 1e-3],
    "moderate": [-3.0, -1.0, -0.5, 0.5, 1.0, 3.0],
    "tails": [-7.0, -6.0, -5.0, -4.5, 4.5, 5.0, 6.0, 7.0],
    "saturation": [-1e4, -100.0, -30.0, -10.0, 10.0, 30.0, 100.0, 1e4],
}
"""The grid's hard places. "tails": where a saturating σ' is small (tanh' ≈ 5e-4 to 3e-6)
but still far above the rounding of the terms it is formed from (1 − tanh², at ε): a σ'
cut to 0 there (a shortcut for large |z|) is wrong by far more than a correct formula
can round, in float32 as in float64."""


def verify_activation(act: str | Activation, dtype=jnp.float32, seed: int = 0) -> Report:
    """Check a hand-derived σ' against autodiff of σ over a grid with the hard places.

    The grid: 0 (kinks), ±1e-6 and ±1e-3 (either side of a kink), moderate
    values, the tails 4.5 ≤ |z| ≤ 7 (σ' small but far above its rounding),
    large |z| up to 1e4 (saturation and overflow), and 64 random
    N(0, 2²) points. Componentwise σ compare σ'(z) (and σ'(a) where the
    activation has it); a softmax-like σ compares its Jacobian on vectors
    drawn from the same grid, and J_σᵀg. σ'' (`deriv2`, where the activation
    has it) is judged against autodiff of the hand-derived σ', which the row
    before checks against σ itself: differentiating JAX's own σ' rule twice
    cancels where the hand forms do not (tanh near 0; the ELU's expm1(z) + 1).
    Its scale is |σ'|: the terms the product rule sums are of the size of σ',
    not of σ'', and cancel near a zero of σ'' (an inflection).
    """
    act = get_activation(act)
    validation.check_activation(act, jnp.dtype(dtype))
    rng = np.random.default_rng(seed)
    groups = dict(SPECIAL_Z, random=list(2 * rng.standard_normal(64)))
    scale = witnesses.sigma_scale(act)
    setting = Setting(dtype)
    if act.elementwise:
        return Report(
            _grid_rows(act, groups, scale, setting), _meta(f"activation {act.name!r}", dtype)
        )
    rows = []
    for group, values in groups.items():
        z = jnp.asarray(rng.choice(values, size=(4, 3)), dtype)
        reference, witness = _both(autodiff.jacobian, act.fn, z, dtype)
        arrays = (jax.vmap(act.deriv)(z), reference, witness)
        terms = witnesses.jacobian_terms(np.asarray(act.fn(z), np.float64))
        rows.append(sigma_row(Site(f"J_σ {group}"), arrays, terms, setting))
        if act.jac_t_dot is not None:
            g = jnp.asarray(rng.standard_normal((4, 3)), dtype)
            rows.append(jac_t_dot_row(act, Site(f"J_σᵀg {group}"), (z, g), reference, setting))
        if act.deriv2 is not None:
            size = np.abs(reference)
            rows.append(_second_derivative_row(Site(f"T_σ {group}"), act, z, size, setting))
    return Report(tuple(rows), _meta(f"activation {act.name!r}", dtype))


def verify_loss(loss: str | Loss, dtype=jnp.float32, seed: int = 0, width: int = 3) -> Report:
    """Check a hand-derived ∂E/∂ŷ against autodiff of E over a spread of (ŷ, y).

    ŷ: probabilities inside (0, 1), near 0 and 1 (1e-4 and 1 − 1e-4), and
    random; y: one-hot rows, 0/1 rows and random probability rows. These suit
    every built-in loss (mse is defined everywhere; the cross-entropies need
    ŷ in (0, 1)).
    """
    loss = get_loss(loss)
    validation.check_loss(loss, jnp.dtype(dtype), width)
    rng = np.random.default_rng(seed)
    n = 16
    y_hats = {
        "interior": rng.uniform(0.05, 0.95, (n, width)),
        "near 0 and 1": rng.choice([1e-4, 1e-3, 1 - 1e-3, 1 - 1e-4], (n, width)),
        "random": rng.uniform(1e-3, 1 - 1e-3, (n, width)),
    }
    ys = {
        "one-hot": np.eye(width)[rng.integers(0, width, n)],
        "0/1": rng.integers(0, 2, (n, width)).astype(float),
        "probabilities": rng.dirichlet(np.ones(width), n),
    }
    rows = []
    for y_name, y in ys.items():
        for y_hat_name, y_hat in y_hats.items():
            y_hat_, y_ = jnp.asarray(y_hat, dtype), jnp.asarray(y, dtype)
            reference, witness = _both(autodiff.loss_grad, loss.fn, (y_hat_, y_), dtype)
            rows.append(
                compare(
                    Site(f"dE/dŷ ŷ {y_hat_name}, y {y_name}"),
                    jax.vmap(loss.grad)(y_hat_, y_),
                    reference,
                    witness,
                    Rounding(dtype),
                    Clues(inputs={"ŷ": y_hat_, "y": y_}),
                )
            )
    return Report(tuple(rows), _meta(f"loss {loss.name!r}", dtype))


def _grid_rows(act, groups, scale, setting: Setting) -> tuple[Row, ...]:
    """σ' (and σ'(a)) row by group; computed once on the whole grid, then split by group."""
    dtype = setting.dtype
    z = jnp.asarray(np.concatenate([np.asarray(v, np.float64) for v in groups.values()]), dtype)
    reference, witness = _both(autodiff.elementwise_derivative, act.fn, z, dtype)
    found = _grid_kinks(act, z, reference)
    if found:  # z on a kink: the hand's one-sided slope is as right as autodiff's tie rule
        fn = kinks.tie_broken(act).fn
        reference, witness = _both(autodiff.elementwise_derivative, fn, z, dtype)
    forms = {"σ'": act.deriv(z)}
    if act.deriv_from_output is not None:
        forms["σ'(a)"] = act.deriv_from_output(act.fn(z))
    rows, start = [], 0
    for group, values in groups.items():
        part = slice(start, start + len(values))
        start += len(values)
        for name, manual in forms.items():
            w = None if witness is None else witness[part]
            slips = Clues(candidates=sigma_slips(act, z[part]), points=("z", z[part]))
            arrays = (manual[part], reference[part], w)
            row = sigma_row(Site(f"{name} {group}"), arrays, scale, setting, slips)
            hit = [i for i in found if part.start <= i < part.stop]
            if hit and name == "σ'":
                note = f"z = {float(z[hit[0]]):.4g}: a kink, judged with the hand's one-sided slope"
                row = row._replace(diagnosis="; ".join(p for p in (row.diagnosis, note) if p))
            rows.append(row)
        if act.deriv2 is not None:
            size = np.maximum(np.abs(reference[part]), scale)
            rows.append(_second_derivative_row(Site(f"σ'' {group}"), act, z[part], size, setting))
    return tuple(rows)


def _grid_kinks(act, z, reference) -> list[int]:
    """Grid indices where z is a kink and the hand σ' differs from autodiff's tie rule there."""
    hand = np.asarray(act.deriv(z), np.float64)
    differ = np.abs(hand - reference) > 1e-6 * np.maximum(1, np.abs(reference))
    if not differ.any():
        return []
    with jax.enable_x64():
        z64 = jnp.asarray(np.asarray(z, np.float64))
        left, right, kink = kinks.one_sided(act, z64)
        ok = kinks.hand_slope_ok(jnp.asarray(hand), left, right)
        return [int(i) for i in np.flatnonzero(differ & np.asarray(kink & ok))]


def _second_derivative_row(site: Site, act, z, size, setting: Setting) -> Row:
    """σ'' (or softmax's T_σ) against autodiff of the hand σ', on the scale ``size`` of |σ'|.

    As for σ' itself, a componentwise σ'' is never judged on less than the size
    σ' has where σ moves (the caller's ``size`` = max(|σ'⁶⁴|, `witnesses.sigma_scale`)):
    σ'' = −2 tanh (1 − tanh²) rounds there.
    """
    derivative = autodiff.elementwise_derivative if act.elementwise else autodiff.jacobian
    reference, witness = _both(derivative, act.deriv, z, setting.dtype)
    manual = act.deriv2(z) if act.elementwise else jax.vmap(act.deriv2)(z)
    magnitude = size
    if not act.elementwise:  # T[b, i, j, k] sums terms of the size of J[b, i, j]
        magnitude = np.broadcast_to(size[..., None], np.shape(reference))
    return compare(site, manual, reference, witness, Rounding(setting.dtype, magnitude=magnitude))


def _both(derivative, fn, points, dtype):
    """(autodiff in float64 at the points cast up, autodiff in ``dtype`` or None for float64)."""
    points = points if isinstance(points, tuple) else (points,)
    with jax.enable_x64():
        up = tuple(jnp.asarray(np.asarray(p, np.float64)) for p in points)
        reference = np.asarray(derivative(fn, *up))
    if jnp.dtype(dtype) == witnesses.REFERENCE_DTYPE:
        return reference, None
    return reference, derivative(fn, *points)


def _meta(subject, dtype) -> dict:
    return {
        "subject": subject,
        "dtype": str(jnp.dtype(dtype)),
        "reference": witnesses.reference_note(dtype),
        **environment(),
    }
