"""Building blocks on their own: a hand-derived σ' or ∂E/∂ŷ over a grid with the hard places."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from manualbp import autodiff, validation
from manualbp.activations import Activation, get_activation
from manualbp.losses import Loss, get_loss
from manualbp.records import environment
from manualbp.verification.compare import compare, row_rtol
from manualbp.verification.report import Report

SPECIAL_Z = {
    "at 0": [0.0],
    "near 0": [-1e-6, 1e-6, -1e-3, 1e-3],
    "moderate": [-3.0, -1.0, -0.5, 0.5, 1.0, 3.0],
    "saturation": [-1e4, -100.0, -30.0, -10.0, 10.0, 30.0, 100.0, 1e4],
}


def verify_activation(act: str | Activation, dtype=jnp.float32, seed: int = 0) -> Report:
    """Check a hand-derived σ' (and σ'') against autodiff of σ over a grid with the hard places.

    The grid: 0 (kinks), ±1e-6 and ±1e-3 (either side of a kink), moderate
    values, large |z| up to 1e4 (saturation and overflow), and 64 random
    N(0, 2²) points. Componentwise σ compare σ'(z) (and σ'(a) where the
    activation has it); a softmax-like σ compares its Jacobian on vectors
    drawn from the same grid. σ'' (`deriv2`) is compared with autodiff of the
    hand-derived σ', which the row before checks against σ itself:
    differentiating JAX's own σ' rule twice cancels where the hand forms do not
    (tanh near 0, (1 + t)(1 − t)² − (1 + t)²(1 − t); the ELU's expm1(z) + 1).
    Its scale is (T3) with m = |σ'|: the terms that product rule sums are of
    the size of σ', not of σ'', and cancel near a zero of σ'' (an inflection).
    """
    act = get_activation(act)
    validation.check_activation(act, jnp.dtype(dtype))
    rtol = row_rtol(dtype, (1, 1), 1)
    rng = np.random.default_rng(seed)
    groups = dict(SPECIAL_Z, random=list(2 * rng.standard_normal(64)))
    rows = []
    for group, values in groups.items():
        z = jnp.asarray(values, dtype)
        if act.elementwise:
            ref = autodiff.elementwise_derivative(act.fn, z)
            rows.append(compare(f"σ' {group}", None, None, act.deriv(z), ref, rtol, ""))
            if act.deriv_from_output is not None:
                rows.append(
                    compare(
                        f"σ'(a) {group}",
                        None,
                        None,
                        act.deriv_from_output(act.fn(z)),
                        ref,
                        rtol,
                        "",
                    )
                )
            if act.deriv2 is not None:
                ref2 = autodiff.elementwise_derivative(act.deriv, z)
                rows.append(
                    compare(
                        f"σ'' {group}", None, None, act.deriv2(z), ref2, rtol, "", None, abs(ref)
                    )
                )
        else:
            vectors = jnp.asarray(rng.choice(values, size=(4, 3)), dtype)
            rows.append(
                compare(
                    f"J_σ {group}",
                    None,
                    None,
                    jax.vmap(act.deriv)(vectors),
                    autodiff.jacobian(act.fn, vectors),
                    rtol,
                    "",
                )
            )
            if act.jac_t_dot is not None:
                g = jnp.asarray(rng.standard_normal((4, 3)), dtype)
                rows.append(
                    compare(
                        f"J_σᵀg {group}",
                        None,
                        None,
                        act.jac_t_dot(vectors, g),
                        autodiff.jacobian_t_dot(act.fn, vectors, g),
                        rtol,
                        "",
                    )
                )
            if act.deriv2 is not None:
                rows.append(
                    compare(
                        f"T_σ {group}",
                        None,
                        None,
                        jax.vmap(act.deriv2)(vectors),
                        autodiff.jacobian(act.deriv, vectors),
                        rtol,
                        "",
                        None,
                        jnp.broadcast_to(
                            jnp.abs(autodiff.jacobian(act.fn, vectors))[..., None], (4, 3, 3, 3)
                        ),
                    )
                )
    return Report(
        tuple(rows),
        {"subject": f"activation {act.name!r}", "dtype": str(jnp.dtype(dtype)), **environment()},
    )


def verify_loss(loss: str | Loss, dtype=jnp.float32, seed: int = 0, width: int = 3) -> Report:
    """Check a hand-derived ∂E/∂ŷ against autodiff of E over a spread of (ŷ, y).

    ŷ: probabilities inside (0, 1), near 0 and 1 (1e-4 and 1 − 1e-4), and
    random; y: one-hot rows, 0/1 rows and random probability rows. These suit
    every built-in loss (mse is defined everywhere; the cross-entropies need
    ŷ in (0, 1)).
    """
    loss = get_loss(loss)
    validation.check_loss(loss, jnp.dtype(dtype), width)
    rtol = row_rtol(dtype, (1, 1), 1)
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
            rows.append(
                compare(
                    f"dE/dŷ ŷ {y_hat_name}, y {y_name}",
                    None,
                    None,
                    jax.vmap(loss.grad)(y_hat_, y_),
                    autodiff.loss_grad(loss.fn, y_hat_, y_),
                    rtol,
                    "",
                )
            )
    return Report(
        tuple(rows),
        {"subject": f"loss {loss.name!r}", "dtype": str(jnp.dtype(dtype)), **environment()},
    )
