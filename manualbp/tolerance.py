"""The one rule for "these two gradients agree", used by the tests and the verifier.

Per array, compare the largest absolute difference with the largest reference
entry:

    max|g − g_ref| ≤ rtol · max|g_ref|,   rtol = C · eps · (L − 1) · √n.

Refinement for cancelling sums: rounding scales with the size of the terms a
gradient entry sums, not with the sum. A batch mean of per-example gradients
of both signs can be far smaller than its terms, so, where the magnitude of
the terms is known (`autodiff.gradient_magnitudes`), the scale is
max(max|g_ref|, max magnitude). Without cancellation the two coincide.

Why this shape:
* Elementwise relative error is unsound: entries near zero (a dead ReLU, a
  cancelling batch sum) have relative errors of any size with no bug present.
  Scaling by the array's largest entry measures the error against the size of
  the gradient the entry belongs to.
* eps is the dtype's machine epsilon: both sides round at that scale.
* Each of the L − 1 parameter layers adds a matrix product to the chain the
  error travels through, so the bound grows linearly with depth.
* A product over a contraction of length n accumulates rounding like a random
  walk, ~√n · eps. The contractions are the layer widths N_l (equation (1),
  the forward pass) and the batch size B (equation (2) sums over the batch),
  so n is the largest of those.
* C = 64 is calibrated on random networks of every built-in activation and
  output/loss pair. Measured in units of eps · (L − 1) · √n: at most 0.32 over
  378 random jitted nets (widths and batches up to 99, 1–5 layers, float32
  and float64, fused and general δ^L), and at most 25 (0.39 of the bound) in
  `manualbp verify`'s catalogue, which runs op by op. C = 64 keeps float32
  tight enough to catch a 1e-3 relative error for widths and batches up to a
  few hundred (the agreement tests check it).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

C = 64


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
