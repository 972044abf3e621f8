"""What a miss looks like: a named wrong form, zero, a sign flip, a factor, its size, where.

`compare` calls these for a row that failed; none of them changes whether a
row passes.
"""

from __future__ import annotations

import numpy as np


def explain(actual, candidates, allowed) -> str:
    """The named wrong forms ``actual`` matches within the allowance, or "".

    Where several match (two wrong forms can coincide on one batch: clipping
    per layer is no clipping where every layer's norm is under the clip),
    every one is named, so that none is blamed alone.
    """
    matches = []
    for name, candidate in (candidates or {}).items():
        if callable(candidate):  # formed only now, for a miss
            candidate = candidate()
        if candidate is None:
            continue
        candidate = np.asarray(candidate, np.float64)
        if candidate.shape == actual.shape and np.all(np.isfinite(candidate)):
            if np.max(np.abs(actual - candidate), initial=0.0) <= allowed:
                matches.append(name)
    return " or ".join(matches)


ROUNDING_SIZED = 3.0
"""A miss within this many allowances is said to be of rounding size: a wrong formula is
almost always orders of magnitude beyond (a 1e-4 relative error is 840 ε in float32)."""


def diagnose(actual, reference, allowed: float = 0.0) -> str:
    """Name the form of a miss where it has one: zero, a sign flip, a factor, its size.

    A factor is named only when it explains the error (what is left over is
    within the allowance or 1% of the error, over at least two non-zero
    entries: one number fits any factor) and is neither ≈ 1 nor ≈ 0 (its
    effect on the largest entry exceeds the allowance ``allowed``). A factor
    near 1 is shown as ×(1 + x), never rounded to ×1. A miss within
    `ROUNDING_SIZED` allowances is said to be of rounding size, not "wrong at
    k entries".
    """
    m = np.asarray(actual, np.float64).ravel()
    r = np.asarray(reference, np.float64).ravel()
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(r))):
        return "non-finite values"
    if not np.any(r):
        return "should be zero"
    if not np.any(m) or np.max(np.abs(m)) <= allowed:
        return "zero"
    error = np.abs(m - r)
    largest = float(np.max(np.abs(r)))
    k = float(m @ r) / float(r @ r)
    residual = float(np.max(np.abs(m - k * r)))
    explains = residual <= max(0.01 * float(np.max(error)), allowed) and np.count_nonzero(r) >= 2
    if explains and abs(k - 1) * largest > allowed and abs(k) * largest > allowed:
        return _factor(k)
    worst = float(np.max(error))
    if allowed > 0 and allowed < worst <= ROUNDING_SIZED * allowed:
        return (
            f"{worst / allowed:.2g}× the allowance: the size of a rounding error, not of a "
            "wrong formula (which is usually far beyond)"
        )
    wrong = error > max(allowed, 0.0)
    if 0 < wrong.sum() < wrong.size and wrong.sum() <= max(3, wrong.size // 100):
        return f"wrong at {int(wrong.sum())} of {wrong.size} entries"
    return ""


def _factor(k: float) -> str:
    """ "sign flipped", "off by ×2", "off by ×0.5", "off by ×(1 + 2.4e-04)"."""
    if abs(k + 1) < 1e-3:
        return "sign flipped"
    if abs(k - 1) < 1e-3:
        return f"off by ×(1 {'+' if k > 1 else '−'} {abs(k - 1):.2g})"
    nearest = round(k)
    shown = f"{nearest}" if nearest != 0 and abs(k - nearest) < 1e-4 * abs(k) else f"{k:.4g}"
    return f"off by ×{shown}"


def worst_entries(actual, reference, points, count: int = 2) -> str:
    """Where a miss is worst, in the user's terms: "at z = 5: hand 0, reference 1.8e-04".

    ``points`` = (name, array of the inputs, same shape as ``actual``).
    """
    name, at = points
    actual = np.asarray(actual, np.float64)
    reference = np.asarray(reference, np.float64)
    at = np.broadcast_to(np.asarray(at, np.float64), actual.shape)
    order = np.argsort(-np.abs(actual - reference), axis=None)[:count]
    shown = [
        f"{name} = {at.flat[i]:.4g}: hand {actual.flat[i]:.4g}, reference {reference.flat[i]:.4g}"
        for i in order
        if actual.flat[i] != reference.flat[i]
    ]
    return "worst at " + "; ".join(shown) if shown else ""
