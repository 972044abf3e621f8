"""The Monte Carlo curvature judged statistically: its mean over many draws against the exact.

The sampled rows of `verify_curvature` give the reference the very same
sampled targets, so they check the arithmetic of (16) but not what it
estimates: a sampler that draws the true label (the empirical Fisher), a
factor not divided by √samples, or labels drawn uniformly instead of from
the model would pass them. Here `diag_ggn_mc` and the KFAC factor G are drawn
`DRAWS` times with independent keys, and their mean is held to the exact
`diag_ggn` and KFLR G within `Z_MAX` standard errors of that mean, per entry
(T12): an unbiased estimator lands within a few, a biased one drifts away by
its bias, which does not shrink with more draws. A mean that only falls short
is not judged: an estimator whose entries rest on rare samples (a confident
classifier's unlikely classes) comes out low until a draw hits them, and the
draws' spread cannot show it; an estimator biased low everywhere is then
reported as not resolved rather than wrong.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from manualbp.extensions import curvature as C
from manualbp.extensions.curvature_equations import CURVATURE
from manualbp.verification.report import Row

DRAWS = 256
"""Independent draws of each estimator; the standard error of their mean is the spread / 16."""
SAMPLES = 2
"""Sampled targets per example in each draw of `diag_ggn_mc` (so a missing 1/√samples shows)."""
Z_MAX = 6.0
"""Most standard errors the mean may lie from the exact value, at any entry (of ~100s)."""


def sampled_rows(net, p, X, Y, eqs, key) -> list[Row]:
    """One row per layer and estimator: mean of `DRAWS` draws against the exact, in SEs."""
    keys = jax.random.split(key, DRAWS)
    diag, kfac, exact_diag, exact_G = jax.device_get(_draws(net, p, X, Y, eqs, keys))
    eps = float(jnp.finfo(jnp.dtype(p[0].W.dtype)).eps)
    rows = []
    for k in range(len(p)):
        for field in ("W", "b"):
            drawn = getattr(diag[k], field)
            rows.append(_row(f"diag_ggn_mc {field}", k, drawn, getattr(exact_diag[k], field), eps))
        rows.append(_row("kfac G", k, kfac[k], exact_G[k], eps))
    return rows


@functools.partial(jax.jit, static_argnums=(0, 4))
def _draws(net, p, X, Y, eqs, keys):
    """`DRAWS` draws of each estimator and the exact values, as one program per net."""
    diag = jax.vmap(lambda k: C.diag_ggn_layers(net, p, X, Y, eqs, key=k, samples=SAMPLES))
    kfac = jax.vmap(lambda k: [G for _, G in C.kron_layers(net, p, X, Y, eqs, key=k)])
    exact_diag = C.diag_ggn_layers(net, p, X, Y, CURVATURE)
    exact_G = [G for _, G in C.kron_layers(net, p, X, Y, CURVATURE)]
    return diag(keys), kfac(keys), exact_diag, exact_G


def _row(name, k, drawn, exact, eps) -> Row:
    """The mean of the draws (axis 0) against ``exact``, in standard errors of that mean."""
    drawn, exact = np.asarray(drawn, np.float64), np.asarray(exact, np.float64)
    mean = drawn.mean(axis=0)
    error = np.abs(mean - exact)
    # The spread of the draws underestimates a rare event's share (a class of probability
    # 1e-3 that no draw hit): the standard error is never below that of an entry whose
    # whole value comes from events as large as the largest entry, √(|exact| · max / draws),
    # nor below the rounding of the values.
    scale = float(np.max(np.abs(exact), initial=0.0))
    rare = np.sqrt(np.abs(exact) * scale / len(drawn))
    spread = drawn.std(axis=0, ddof=1) / np.sqrt(len(drawn))
    se = np.maximum(spread, rare) + 8 * eps * scale
    z = error / se
    worst = float(np.max(z, initial=0.0))
    passed = worst <= Z_MAX
    i = np.unravel_index(int(np.argmax(z)), z.shape) if z.size else ()
    diagnosis = (
        f"mean of {len(drawn)} draws within {worst:.2g} standard errors of the exact (allowed "
        f"{Z_MAX:g})"
        if passed
        else f"biased: the mean of {len(drawn)} draws lies {worst:.3g} standard errors from the "
        f"exact value (at {tuple(int(j) for j in i)}: mean {mean[i]:.4g}, exact {exact[i]:.4g}); "
        "it estimates something else (targets from the labels, a missing 1/√samples, another "
        "distribution?)"
    )
    over = (np.abs(mean) - np.abs(exact)) / se  # in size: a missed rare sample shrinks it
    unresolved = not passed and float(np.max(over, initial=0.0)) <= Z_MAX
    if unresolved:  # short only: rare samples the draws missed can do that, so not judged
        diagnosis = (
            f"not resolved: the mean of {len(drawn)} draws falls short in size ({mean[i]:.4g} at "
            f"{tuple(int(j) for j in i)}, exact {exact[i]:.4g}) and exceeds it nowhere: "
            "entries carried by rare samples (a confident classifier's unlikely classes) "
            "come out low until a draw hits them, so a shortfall alone is not judged"
        )
    scale = scale or 1.0
    return Row(
        f"{name} statistical",
        None,  # end to end, as the other composed rows: a wrong step fails at its own row too
        k + 2,
        float(np.max(error, initial=0.0)),
        float(np.max(error, initial=0.0)) / scale,
        float(Z_MAX * np.max(se, initial=0.0)) / scale,
        passed,
        diagnosis,
        judged=not unresolved,
    )
