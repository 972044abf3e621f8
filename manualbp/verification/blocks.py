"""Building blocks: a hand-derived σ' or ∂E/∂ŷ, in a net or over a grid of hard places.

Each is judged as everything in verification is (`tolerance.judge`): its
distance to autodiff in float64 at the same points cast up, against the
distance of autodiff in the same dtype. A σ' more accurate than autodiff's
(1/cosh²z where autodiff takes 1 − tanh²z, which is 0 at z = 10 in float32)
therefore passes. A σ' is judged on the size σ' has where σ moves
(`witnesses.sigma_scale`): formulas such as 1 − a² round at that size, also
where σ saturates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from manualbp import autodiff, validation
from manualbp.activations import Activation, get_activation
from manualbp.losses import Loss, get_loss
from manualbp.records import environment
from manualbp.verification import witnesses
from manualbp.verification.compare import compare
from manualbp.verification.report import Report, Row

NULL_DIRECTION = (
    "wrong by c·1 per example, a direction J_σ^L removes: δ^L and the gradients are unaffected"
)


def block_rows(net, given, ref, wit, g, scales, dtype, device) -> list[Row]:
    """∂E/∂ŷ and each σ^l' (or J_σ) at the z^l and ŷ of the manual pass's forward pass.

    Args:
        given: the forward pass the manual pass computed with (the witness's).
        ref, wit: `witnesses.Side` in float64 and the net's dtype (wit None for float64).
        g: the manual ∂E/∂ŷ at ``given``'s ŷ.
        scales: `witnesses.sigma_scale` of each σ^l.
    """
    where = dict(dtype=dtype, device=device)
    rows = []
    if net.fused_loss is None or not net.fused:
        rows.append(
            compare(
                "dE/dŷ",
                None,
                net.L,
                g,
                ref.dE_dyhat,
                None if wit is None else wit.dE_dyhat,
                candidates=_null_direction(net, g, ref),
                inputs={"ŷ": given.a[-1]},
                **where,
            )
        )
    for k, sigma in enumerate(net.activations):
        z = jnp.asarray(given.z[k + 1], dtype)  # z^l of layer l = k + 2
        reference = ref.sigma_primes[k]
        witness = None if wit is None else wit.sigma_primes[k]
        if sigma.elementwise:
            rows.append(
                _sigma_row("σ'", k + 2, sigma.deriv(z), reference, witness, scales[k], where)
            )
            if sigma.deriv_from_output is not None:
                a = jnp.asarray(given.a[k + 1], dtype)
                manual = sigma.deriv_from_output(a)
                rows.append(
                    _sigma_row("σ'(a)", k + 2, manual, reference, witness, scales[k], where)
                )
            continue
        manual = jax.vmap(sigma.deriv)(z)
        terms = witnesses.jacobian_terms(np.asarray(sigma.fn(z), np.float64))
        rows.append(_sigma_row("J_σ", k + 2, manual, reference, witness, terms, where))
        if sigma.jac_t_dot is not None:
            rows.append(_jac_t_dot_row(sigma, k + 2, z, g, reference, wit is not None, where))
    return rows


def _sigma_row(check, layer, manual, reference, witness, scale, where) -> Row:
    return compare(check, None, layer, manual, reference, witness, magnitude=scale, **where)


def _jac_t_dot_row(sigma, layer, z, g, J64, with_witness, where) -> Row:
    """J_σᵀg against the float64 Jacobian times g; the witness is autodiff's vjp."""
    g = jnp.where(jnp.isfinite(g), g, 0)
    g64 = np.asarray(g, np.float64)
    witness = autodiff.jacobian_t_dot(sigma.fn, z, g) if with_witness else None
    return compare(
        "J_σᵀg",
        None,
        layer,
        sigma.jac_t_dot(z, g),
        np.einsum("bij,bi->bj", J64, g64),
        witness,
        magnitude=witnesses.jacobian_t_terms(np.asarray(sigma.fn(z), np.float64), g64),
        **where,
    )


def _null_direction(net, g, ref) -> dict:
    """∂E/∂ŷ + c·1 per example, where σ^L's Jacobian removes the direction 1 (softmax)."""
    if net.output.elementwise:
        return {}
    J = ref.sigma_primes[-1]
    if np.max(np.abs(J.sum(axis=-2))) > 1e-6 * np.max(np.abs(J), initial=1e-300):
        return {}
    g = np.asarray(g, np.float64)
    shift = np.mean(g - ref.dE_dyhat, axis=-1, keepdims=True)
    return {NULL_DIRECTION: ref.dE_dyhat + shift}


SPECIAL_Z = {
    "at 0": [0.0],
    "near 0": [-1e-6, 1e-6, -1e-3, 1e-3],
    "moderate": [-3.0, -1.0, -0.5, 0.5, 1.0, 3.0],
    "saturation": [-1e4, -100.0, -30.0, -10.0, 10.0, 30.0, 100.0, 1e4],
}


def verify_activation(act: str | Activation, dtype=jnp.float32, seed: int = 0) -> Report:
    """Check a hand-derived σ' against autodiff of σ over a grid with the hard places.

    The grid: 0 (kinks), ±1e-6 and ±1e-3 (either side of a kink), moderate
    values, large |z| up to 1e4 (saturation and overflow), and 64 random
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
    where = dict(dtype=dtype, device="")
    if act.elementwise:
        return Report(
            _grid_rows(act, groups, scale, where), _meta(f"activation {act.name!r}", dtype)
        )
    rows = []
    for group, values in groups.items():
        z = jnp.asarray(rng.choice(values, size=(4, 3)), dtype)
        reference, witness = _both(autodiff.jacobian, act.fn, z, dtype)
        manual = jax.vmap(act.deriv)(z)
        terms = witnesses.jacobian_terms(np.asarray(act.fn(z), np.float64))
        rows.append(_sigma_row(f"J_σ {group}", None, manual, reference, witness, terms, where))
        if act.jac_t_dot is not None:
            g = jnp.asarray(rng.standard_normal((4, 3)), dtype)
            rows.append(_jac_t_dot_row(act, None, z, g, reference, witness is not None, where))
            rows[-1] = rows[-1]._replace(check=f"J_σᵀg {group}")
        if act.deriv2 is not None:
            rows.append(_second_derivative_row(f"T_σ {group}", act, z, reference, 0.0, where))
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
                    f"dE/dŷ ŷ {y_hat_name}, y {y_name}",
                    None,
                    None,
                    jax.vmap(loss.grad)(y_hat_, y_),
                    reference,
                    witness,
                    dtype=dtype,
                    inputs={"ŷ": y_hat_, "y": y_},
                )
            )
    return Report(tuple(rows), _meta(f"loss {loss.name!r}", dtype))


def _grid_rows(act, groups, scale, where) -> tuple[Row, ...]:
    """σ' (and σ'(a)) row by group; computed once on the whole grid, then split by group."""
    z = jnp.asarray(
        np.concatenate([np.asarray(v, np.float64) for v in groups.values()]), where["dtype"]
    )
    reference, witness = _both(autodiff.elementwise_derivative, act.fn, z, where["dtype"])
    forms = {"σ'": act.deriv(z)}
    if act.deriv_from_output is not None:
        forms["σ'(a)"] = act.deriv_from_output(act.fn(z))
    rows, start = [], 0
    for group, values in groups.items():
        part = slice(start, start + len(values))
        start += len(values)
        for name, manual in forms.items():
            w = None if witness is None else witness[part]
            rows.append(
                _sigma_row(f"{name} {group}", None, manual[part], reference[part], w, scale, where)
            )
        if act.deriv2 is not None:
            rows.append(
                _second_derivative_row(f"σ'' {group}", act, z[part], reference[part], scale, where)
            )
    return tuple(rows)


def _second_derivative_row(check, act, z, sigma_prime64, scale, where) -> Row:
    """σ'' (or softmax's T_σ) against autodiff of the hand σ', on the scale of |σ'|.

    As for σ' itself, a componentwise σ'' is never judged on less than the size
    σ' has where σ moves (``scale``): σ'' = −2 tanh (1 − tanh²) rounds there.
    """
    derivative = autodiff.elementwise_derivative if act.elementwise else autodiff.jacobian
    reference, witness = _both(derivative, act.deriv, z, where["dtype"])
    manual = act.deriv2(z) if act.elementwise else jax.vmap(act.deriv2)(z)
    magnitude = np.maximum(np.abs(sigma_prime64), scale)
    if not act.elementwise:  # T[b, i, j, k] sums terms of the size of J[b, i, j]
        magnitude = np.broadcast_to(magnitude[..., None], np.shape(reference))
    return compare(check, None, None, manual, reference, witness, magnitude=magnitude, **where)


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
