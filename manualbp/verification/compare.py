"""Comparing two arrays: the row for one check, its tolerance, and the diagnosis of a miss."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from manualbp import tolerance
from manualbp.verification.report import Row

LOW_PRECISION_C = 16
"""16-bit bands: rtol = 16 · eps · (L − 1), against a float32 reference (see `row_rtol`)."""

FD_RTOL = 1e-6
"""Finite differences: |fd − manual| ≤ 1e-6 · max|manual| of that array (see `_fd_rows`)."""


def diagnose(actual, reference) -> str:
    """Name a simple form of disagreement: a sign flip, a constant factor, or none."""
    m = np.asarray(actual, np.float64).ravel()
    r = np.asarray(reference, np.float64).ravel()
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(r))):
        return "non-finite values"
    r2 = float(r @ r)
    if r2 == 0.0:
        return "should be zero"
    k = float(m @ r) / r2
    error = float(np.max(np.abs(m - r)))
    residual = float(np.max(np.abs(m - k * r)))
    # A factor must explain the error, not merely fit m: at most 1% of it left over.
    if k == 0.0 or residual > 0.01 * error:
        return "zero" if not np.any(m) else ""
    if abs(k + 1) < 1e-3:
        return "sign flipped"
    nearest = round(k)
    shown = f"{nearest}" if nearest != 0 and abs(k - nearest) < 1e-4 * abs(k) else f"{k:.4g}"
    return f"off by ×{shown}"


def _explain(actual, candidates, rtol) -> str:
    """The first named wrong form that ``actual`` matches, or ""."""
    for name, candidate in (candidates or {}).items():
        if candidate is None:
            continue
        candidate = np.asarray(candidate, np.float64)
        if candidate.shape == actual.shape and np.all(np.isfinite(candidate)):
            if tolerance.array_error(actual, candidate)[1] <= rtol:
                return name
    return ""


def compare(
    check, equation, layer, actual, reference, rtol, device, candidates=None, magnitude=None
) -> Row:
    actual = np.asarray(actual, np.float64)
    reference = np.asarray(reference, np.float64)
    both_nonfinite = ~np.isfinite(actual) & ~np.isfinite(reference)
    same_nonfinite = both_nonfinite & (
        (actual == reference) | (np.isnan(actual) & np.isnan(reference))
    )
    mismatch_nonfinite = (~np.isfinite(actual) | ~np.isfinite(reference)) & ~same_nonfinite
    if mismatch_nonfinite.any():
        return Row(
            check, equation, layer, math.inf, math.inf, rtol, False, "non-finite values", device
        )
    keep = ~same_nonfinite
    if magnitude is not None:
        magnitude = np.asarray(magnitude, np.float64)[keep]
    max_abs, rel = tolerance.array_error(actual[keep], reference[keep], magnitude)
    passed = rel <= rtol
    diagnosis = ""
    if not passed:
        diagnosis = _explain(actual, candidates, rtol) or diagnose(actual[keep], reference[keep])
    return Row(check, equation, layer, max_abs, rel, rtol, passed, diagnosis, device)


def row_rtol(dtype, sizes: Sequence[int], batch: int) -> float:
    """The tolerance for a net's rows in ``dtype``.

    float32 and float64: `tolerance.net_rtol`. float16 and bfloat16: the manual
    path runs in the 16-bit dtype while the reference runs in float32 on the
    same values, so the error is the 16-bit rounding of every stored z^l, a^l
    and δ^l, compounding once per layer: rtol = 16 · eps · (L − 1). That is
    loose (0.25 for a 3-layer bfloat16 net) but still sees a flipped sign, a
    dropped σ' or a factor of 2.
    """
    if low_precision(dtype):
        return LOW_PRECISION_C * tolerance.eps(dtype) * (len(sizes) - 1)
    return tolerance.net_rtol(dtype, sizes, batch)


def low_precision(dtype) -> bool:
    return jnp.dtype(dtype).itemsize <= 2
