"""The rules for "this gradient is right": one judged against a witness, one without.

**The verdict** (`judge`, used by `manualbp.verification`). Three results of
one array are at hand: the manual one g, the reference g⁶⁴ computed in float64
from the same inputs cast up, and the witness g_w, the same quantity by
autodiff (or by the equation as the derivation writes it) in the net's own
dtype. With the errors measured per array against the reference,

    e = max|g − g⁶⁴|,   e_w = max|g_w − g⁶⁴|,

g is right when it rounds like the witness does:

    e ≤ K · max(e_w, floor),   floor = F · d · eps · s,   K = 4, F = 2,

* eps: the machine epsilon of the net's dtype;
* s = max(max|g⁶⁴|, max m): the array's scale. m is the magnitude of the
  terms each entry sums where that is known (for (2), (1/B) Σ_b |δ_b| |a_b|ᵀ;
  see `autodiff.gradient_magnitudes`): rounding scales with the terms, not
  with their sum, so a cancelling batch mean is judged on the size of its
  terms (the cancellation refinement);
* d: the number of layers the compared value passes through (1 for one
  equation or building block, L − 1 end to end).

Why this shape. A correct derivation and autodiff run the same arithmetic in
the same precision, differently ordered: their distances to a float64
reference are of one size. On 831 correct nets (`scripts/verdict_sweep.py`)
e / max(e_w, floor) is at most 2.0 (2.5 in an earlier run); a wrong derivation
is off by its own error, which does not shrink with eps. The old worst-case bound,
C · eps · (L − 1) · √n (below), sat 2–3 orders of magnitude above the error a
correct pass makes (0.2–0.7 eps of s measured at 10 layers of 256, B = 4096)
and so missed factors of 1.001 in float32 and 2 in bfloat16.

* K = 4 is the calibration: 1.6 times the largest ratio e / max(e_w, floor)
  measured over the whole catalogue (every hidden activation × output/loss
  pair, float32 and float64, input scales 1e-3 to 1e3, widths 1 to 1024,
  depths to 10, B to 4096, every init, bfloat16 and float16), never fitted to
  one case; a 1e-4 relative error in float32 at B = 4096 is 50-130 eps · s.
* The floor covers a witness that happens to round less than a correct
  derivation can: a single number, a width-1 layer, an exact identity σ'.
  Each layer the value passes through adds a rounding of its own scale, so
  it grows with d. It also carries the rule where the reference is not of
  higher precision: a float64 net has a float64 reference, the witness is the
  reference, e_w = 0, and the allowance is K · F · d · eps · s.
* Non-finite values never pass: `judge` is for finite arrays; the verifier
  fails a NaN or inf before it gets here.

In units of eps · s (what a report shows): e / (eps · s) is the manual
error, e_w / (eps · s) the witness's, K · max(e_w, floor) / (eps · s) the
allowance.

**The bound without a witness** (`rtol`, `net_rtol`, `array_error`,
`tree_errors`): where no float64 reference is at hand (training's
``check_every``, tests comparing two same-precision results), two gradients
agree when per array

    max|g − g_ref| ≤ rtol · s,   rtol = C · eps · (L − 1) · √n,   C = 64,

n the longest contraction (the widths and B), s as above. It is a worst case:
loose, but it needs nothing but the two arrays. C = 64 was calibrated on
random jitted nets of every built-in activation and pair (at most 0.32 of it
over 378 nets with widths and batches up to 99).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

C = 64
"""The constant of the bound without a witness (`rtol`)."""

K = 4.0
"""The verdict's allowance is K times the witness's error (or the floor)."""

F = 2.0
"""The floor is F · d · eps · s: F roundings of the scale per layer passed through."""


def eps(dtype) -> float:
    """Machine epsilon of a floating dtype."""
    return float(jnp.finfo(jnp.dtype(dtype)).eps)


def rtol(dtype, depth: int, n: int) -> float:
    """C · eps · depth · √n for ``depth`` parameter layers and contraction length ``n``."""
    return C * eps(dtype) * max(depth, 1) * math.sqrt(max(n, 1))


def net_rtol(dtype, sizes, batch: int) -> float:
    """`rtol` for a net with widths ``sizes`` = (N_1, ..., N_L) and ``batch`` examples."""
    return rtol(dtype, len(sizes) - 1, max(*sizes, batch))


def array_error(actual, reference, magnitude=None) -> tuple[float, float]:
    """(max|Δ|, max|Δ| / scale) for one array, in float64.

    scale = max|reference|, or max(max|reference|, max|magnitude|) where the
    magnitude of the summed terms is given (see `tree_errors`). A scale of
    zero gives a relative error of 0 when the arrays are equal, inf otherwise.
    """
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if actual.shape != reference.shape:
        raise ValueError(f"shapes differ: {actual.shape} vs reference {reference.shape}")
    max_abs = float(np.max(np.abs(actual - reference), initial=0.0))
    scale = float(np.max(np.abs(reference), initial=0.0))
    if magnitude is not None:
        scale = max(scale, float(np.max(np.abs(np.asarray(magnitude, np.float64)), initial=0.0)))
    if scale == 0.0:
        return max_abs, 0.0 if max_abs == 0.0 else math.inf
    return max_abs, max_abs / scale


def tree_errors(actual, reference, magnitude=None) -> list[tuple[str, float, float]]:
    """`array_error` for every leaf of two pytrees of the same structure, with its path.

    ``magnitude`` (optional, same structure): the size of the terms each entry
    sums, e.g. (1/B) Σ_b |δ^l_b| |a^{l-1}_b|ᵀ for ∂E/∂W^l
    (`autodiff.gradient_magnitudes`). Rounding scales with the terms, not
    with their sum: where a batch mean cancels, max|reference| can be orders
    of magnitude below the terms and no rule relative to it alone is sound.
    """
    flat_ref, tree_ref = jax.tree_util.tree_flatten_with_path(reference)
    flat_act, tree_act = jax.tree_util.tree_flatten(actual)
    if tree_act != jax.tree_util.tree_structure(reference):
        raise ValueError(f"tree structures differ: {tree_act} vs reference {tree_ref}")
    flat_mag = [None] * len(flat_act) if magnitude is None else jax.tree.leaves(magnitude)
    return [
        (jax.tree_util.keystr(path), *array_error(a, r, m))
        for (path, r), a, m in zip(flat_ref, flat_act, flat_mag, strict=True)
    ]


def floor(dtype, depth: int, scale: float) -> float:
    """F · d · (eps · s + tiny): the least error a correct result of ``depth`` layers may make.

    tiny, the dtype's smallest normal number, is what one flushed subnormal
    is off by: XLA flushes them to zero where NumPy keeps them (T10).
    """
    tiny = float(jnp.finfo(jnp.dtype(dtype)).tiny)
    return F * max(depth, 1) * (eps(dtype) * scale + tiny)


def allowance(witness_error: float, floor_: float) -> float:
    """K · max(e_w, floor): how far from the reference a correct result may be."""
    return K * max(witness_error, floor_)


RHO = 0.5
"""The batch-sum term of the floor: ρ √n ε max|g| for a sum of n terms (T6)."""


class Rounding(NamedTuple):
    """What a computation's rounding is bounded by: the inputs of the floor (T1–T6).

    Attributes:
        dtype: the net's dtype (its eps).
        depth: d, the layers the value passes through.
        magnitude: the size of the summed terms, if known (the cancellation refinement).
        reduced: n, the length of the batch sum the value is formed by (1 for
            none): a sum formed in any order carries up to about √n roundings
            of its own size, so the floor adds ρ √n ε max|g⁶⁴| (T6).
    """

    dtype: Any
    depth: int = 1
    magnitude: Any = None
    reduced: int = 1


def judge(actual, reference, witness, rounding: Rounding) -> dict:
    """The verdict for one finite array: errors, scale, allowance, in absolute terms.

    Args:
        actual: the manual result g.
        reference: g⁶⁴, the same quantity in float64 from the same inputs.
        witness: the same quantity by autodiff in the net's dtype, or None
            where the reference is of the same precision (then e_w = 0); or a
            tuple of such arrays, each a correct route (autodiff, a per-example
            loop summed in order, T6), e_w the largest of their errors.
        rounding: the dtype, depth, term size and batch-sum length the floor
            is derived from (`Rounding`).

    Returns:
        {"error", "witness_error", "scale", "allowance", "passed"}.
    """
    dtype, depth, magnitude, reduced = rounding
    actual = np.asarray(actual, np.float64)
    reference = np.asarray(reference, np.float64)
    error = float(np.max(np.abs(actual - reference), initial=0.0))
    witness_error = max((_error(w, reference) for w in _witnesses(witness)), default=0.0)
    scale = float(np.max(np.abs(reference), initial=0.0))
    if magnitude is not None:
        scale = max(scale, float(np.max(np.abs(np.asarray(magnitude, np.float64)), initial=0.0)))
    # Without a witness the reference is of the net's own precision and rounds
    # too: e ≤ e_manual + e_reference, so the floor counts both.
    floor_ = floor(dtype, depth, scale) * (1 if _has_autodiff(witness) else 2)
    largest = float(np.max(np.abs(reference), initial=0.0))
    floor_ += F * RHO * math.sqrt(max(reduced, 1) - 1) * eps(dtype) * largest
    allowed = allowance(witness_error, floor_)
    return {
        "error": error,
        "witness_error": witness_error,
        "scale": scale,
        "allowance": allowed,
        "passed": error <= allowed,
    }


def _witnesses(witness) -> list:
    """The witness arrays: none, one, or each of a tuple (None entries skipped)."""
    if witness is None:
        return []
    if isinstance(witness, tuple):
        return [w for w in witness if w is not None]
    return [witness]


def _has_autodiff(witness) -> bool:
    """Whether a same-dtype autodiff witness is among them (the first of a tuple)."""
    if isinstance(witness, tuple):
        return bool(witness) and witness[0] is not None
    return witness is not None


def _error(witness, reference) -> float:
    return float(np.max(np.abs(np.asarray(witness, np.float64) - reference), initial=0.0))
