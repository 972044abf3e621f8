"""Poisson sampling, exactly as the accountant assumes, in one fixed shape.

Each step includes each of the n examples independently with probability q
(`inclusion`). The included indices are gathered first (`sample`), and the
step walks them in chunks of a fixed physical size P: chunk c holds
positions cP .. cP + P − 1, and a mask marks the positions past the sample's
size, whose rows are padding and contribute exactly 0. A step whose sample
exceeds P runs more chunks and adds them: nothing is truncated, so the batch
is the Poisson sample itself, and one compiled program serves every step.

The inclusion test compares 32 random bits with ⌈q 2³²⌉, so the rate drawn
is q rounded up to a multiple of 2⁻³² (`drawn_rate`); the accountant is
given that rate, never less than the one sampled.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_BITS = 32


class Sample(NamedTuple):
    """One step's Poisson sample: ``order[:count]`` are the included indices, increasing;
    the rest of ``order`` (length ⌈n / P⌉ P) is padding that points at example 0."""

    order: Array
    count: Array


def check_rate(rate) -> float:
    """q must be a number in (0, 1]."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating, np.integer)):
        raise TypeError(f"rate: expected a number in (0, 1], got {rate!r}")
    if not 0 < rate <= 1:
        raise ValueError(f"rate: expected a sampling rate q in (0, 1], got {rate!r}")
    return float(rate)


def check_physical_size(physical_size) -> int:
    """P must be an integer ≥ 1."""
    if (
        isinstance(physical_size, bool)
        or not isinstance(physical_size, (int, np.integer))
        or physical_size < 1
    ):
        raise ValueError(
            f"physical_size: expected an integer ≥ 1 (examples per compiled chunk), "
            f"got {physical_size!r}"
        )
    return int(physical_size)


def threshold(rate: float) -> int:
    """⌈q 2³²⌉: an example is included when its 32 random bits fall below it."""
    return math.ceil(rate * 2**_BITS)


def drawn_rate(rate: float) -> float:
    """The inclusion probability the sampler draws: ⌈q 2³²⌉ / 2³² ≥ q."""
    return threshold(rate) / 2**_BITS


def inclusion(key: Array, n: int, rate: float) -> Array:
    """Whether each of the n examples is in this step's sample, independently with rate q.
    Shape: (n,) bool."""
    t = threshold(rate)
    if t >= 2**_BITS:  # q = 1: everyone, whatever the bits
        return jnp.ones((n,), bool)
    return jax.random.bits(key, (n,), jnp.uint32) < jnp.uint32(t)


def sample(key: Array, n: int, rate: float, physical_size: int) -> Sample:
    """The included indices first, in increasing order, padded to a multiple of P."""
    included = inclusion(key, n, rate)
    padded = -(-n // physical_size) * physical_size
    (order,) = jnp.nonzero(included, size=padded, fill_value=0)
    return Sample(order.astype(jnp.int32), jnp.sum(included, dtype=jnp.int32))


def chunk(sample_: Sample, c: Array, physical_size: int) -> tuple[Array, Array]:
    """Chunk c: the P indices at positions cP .. cP + P − 1, and the mask of those below
    the sample's size. Shapes: (P,) int32, (P,) bool."""
    start = c * physical_size
    rows = jax.lax.dynamic_slice(sample_.order, (start,), (physical_size,))
    mask = start + jnp.arange(physical_size) < sample_.count
    return rows, mask


def chunks_needed(count: Array, physical_size: int) -> Array:
    """⌈count / P⌉: the chunks a sample of ``count`` examples takes (0 for an empty one)."""
    return (count + physical_size - 1) // physical_size


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _sample(key, n, rate, physical_size):
    return sample(key, n, rate, physical_size)


def poisson_batches(key: Array, n: int, rate: float, physical_size: int):
    """One step's Poisson sample of ``range(n)`` at rate q, as fixed-size masked chunks.

    The same sampler the private training runs (for the same key it draws the
    same examples): each example is included independently with probability q
    (rounded up to a multiple of 2⁻³², `drawn_rate`), and the included indices
    fill k = ⌈count / P⌉ chunks of P, the last one padded.

    Args:
        key: a `jax.random` key.
        n: the number of examples.
        rate: q in (0, 1].
        physical_size: P ≥ 1, the examples of one chunk.

    Returns:
        (indices, mask), NumPy arrays of shape (k, P): ``indices[mask]`` are the
        sampled examples, in increasing order; ``mask`` is False on padding.
    """
    rate, physical_size = check_rate(rate), check_physical_size(physical_size)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n: expected a positive integer number of examples, got {n!r}")
    drawn = _sample(key, int(n), rate, physical_size)
    count = int(drawn.count)
    k = -(-count // physical_size)
    order = np.asarray(drawn.order)[: k * physical_size].reshape(k, physical_size)
    mask = (np.arange(k * physical_size) < count).reshape(k, physical_size)
    return order, mask
