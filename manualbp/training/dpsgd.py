"""DP-SGD's settings and its noised step: a Poisson sample, clipped, summed, noised, scaled.

One step (docs/derivation.md, equation (9′)), for the Poisson sample S of
`poisson` (each example independently with rate q) and the expected batch
size B̄ = q n:

    g̃ = ( Σ_{b ∈ S} c_b g_b + N(0, σ² C² I) ) / B̄,

c_b = min(1, C / ‖g_b‖) by equation (8). Adding or removing one example
moves the clipped sum by at most C, so the noise N(0, σ²C²) makes each step
a Poisson-subsampled Gaussian mechanism of noise multiplier σ under
add-or-remove-one adjacency: exactly the event `accounting` composes.
Dividing by the expected rather than the drawn size keeps the sensitivity
C / B̄ (the drawn size itself would depend on the one example) and makes g̃
an unbiased estimate of the mean clipped gradient: Opacus's and
jax-privacy's convention.

The sum runs over fixed-size chunks of P examples with a mask, by ghost
clipping (`extensions.per_example`: one backward pass per chunk, no
per-example gradient formed); a masked row's factor is 0, so padding adds
exactly nothing. The noise is drawn in the parameters' dtype, from a key of
the step's own.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from manualbp.backprop import weight_grad_sum
from manualbp.extensions import per_example
from manualbp.network import MLP, Layer, Params
from manualbp.training import poisson

Array = jax.Array

ACCOUNTANTS = ("pld", "rdp")


@dataclasses.dataclass(frozen=True)
class DPSGD:
    """Differentially private training: Poisson batches, clipped gradients, Gaussian noise.

    Frozen and hashable: it is a static setting of the compiled epoch. ``train``'s
    ``batch_size`` is then the expected batch size B̄ = q n.

    Args:
        l2_clip: C > 0, the largest norm of one example's gradient (all layers together).
        noise_multiplier: σ > 0; the noise on the clipped sum is N(0, σ² C²).
        delta: the δ at which the history reports ε, 0 < δ < 1 (usually below 1/n).
        physical_size: P ≥ 1, the examples of one compiled chunk; a sample larger than
            P runs ⌈|S| / P⌉ chunks. Default: B̄ + 2√B̄ rounded up to a multiple of 8,
            so that few steps need a second chunk.
        accountant: ``"pld"`` (privacy loss distributions, tight; the default) or
            ``"rdp"`` (Rényi DP, looser, faster), both from dp-accounting.
    """

    l2_clip: float
    noise_multiplier: float
    delta: float = 1e-5
    physical_size: int | None = None
    accountant: str = "pld"

    def __post_init__(self):
        object.__setattr__(self, "l2_clip", per_example.check_l2_clip(self.l2_clip))
        for name in ("noise_multiplier", "delta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name}: expected a number, got {value!r}")
            if not 0 < value < math.inf:
                raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.delta >= 1:
            raise ValueError(f"delta: expected 0 < delta < 1, got {self.delta!r}")
        if self.physical_size is not None:
            size = poisson.check_physical_size(self.physical_size)
            object.__setattr__(self, "physical_size", size)
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(
                f"accountant: expected one of {', '.join(ACCOUNTANTS)}, got {self.accountant!r}"
            )


def check(privacy, grad: str, shuffle: bool) -> None:
    """privacy must be None or a `DPSGD` with manual gradients and sampled batches."""
    if privacy is None:
        return
    if not isinstance(privacy, DPSGD):
        raise TypeError(
            f"privacy: expected mbp.DPSGD(l2_clip=..., noise_multiplier=...), "
            f"got {type(privacy).__name__}"
        )
    if grad != "manual":
        raise ValueError(
            f"privacy: DP-SGD clips each example's gradient by equations (5), (8), (9), which "
            f"the manual path computes; grad={grad!r} is not supported, use grad='manual'"
        )
    if not shuffle:
        raise ValueError(
            "privacy: the batches are Poisson samples, drawn at random; shuffle=False "
            "is not allowed"
        )


def check_held_out(privacy, check_every, eval_data) -> None:
    """A private run checks gradients on the held-out data only, so it needs some."""
    if privacy is not None and check_every is not None and eval_data is None:
        raise ValueError(
            "check_every: a private run checks gradients on held-out data only (the check "
            "on training data is not covered by the privacy accounting); pass eval_data "
            "or drop check_every"
        )


def check_mesh(privacy, batch_size: int, mesh) -> None:
    """Over a mesh, each chunk of P rows must split evenly over the devices."""
    if privacy is not None and mesh is not None and physical_size(privacy, batch_size) % mesh.size:
        raise ValueError(
            f"physical_size: expected a multiple of the mesh's {mesh.size} devices, got "
            f"{physical_size(privacy, batch_size)}"
        )


def physical_size(privacy: DPSGD, batch_size: int) -> int:
    """P: the setting, or B̄ + 2√B̄ rounded up to a multiple of 8."""
    if privacy.physical_size is not None:
        return privacy.physical_size
    return -(-(batch_size + math.ceil(2 * math.sqrt(batch_size))) // 8) * 8


class Mechanism(NamedTuple):
    """The two pieces of a step the privacy claim rests on, swappable only to audit them.

    Attributes:
        clip_factors: eq. (8), (norms², C, dtype) → c, as `per_example.clip_factors`.
        noise_std: (σ, C, B̄, P) → the standard deviation of the noise on the clipped sum.
    """

    clip_factors: Callable
    noise_std: Callable


def sum_noise_std(noise_multiplier: float, l2_clip: float, expected: float, physical: int):
    """σ C: the Gaussian mechanism's noise for a sum of sensitivity C."""
    return noise_multiplier * l2_clip


MECHANISM = Mechanism(per_example.clip_factors, sum_noise_std)


def clipped_sum(net: MLP, params: Params, X: Array, Y: Array, mask: Array, clip: tuple) -> Params:
    """Eq. (9) summed over one masked chunk: Σ_b m_b c_b g_b = ((m ⊙ c) ⊙ Δ^l)ᵀ A^{l-1}.

    ``clip`` is (C, clip_factors). m_b = 0 on padding: its row of Δ^l is
    scaled by exactly 0. The rows are scaled in c's width (float32 or wider)
    and rounded once to the compute dtype, inside `clip_factors`' margin.
    """
    l2_clip, clip_factors = clip
    fwd, norms, deltas = per_example.norms_and_deltas(net, params, X, Y)
    c = jnp.where(mask, clip_factors(norms, l2_clip, X.dtype), 0)
    sums = []
    for delta, a_prev in zip(deltas, fwd.a[:-1], strict=True):
        rows = (c[:, None] * delta.astype(c.dtype)).astype(delta.dtype)
        sums.append(Layer(W=weight_grad_sum(rows, a_prev), b=jnp.sum(rows, axis=0)))
    return tuple(sums)


def sample_sum(step: StepInputs, params: Params, compute_dtype) -> Params:
    """Σ_{b ∈ S} c_b g_b over every chunk the sample needs, in the parameters' dtype."""
    P = step.physical_size
    compute_params = jax.tree.map(lambda p: p.astype(compute_dtype), params)

    def add_chunk(c, total):
        rows, mask = poisson.chunk(step.sample, c, P)
        X_c, Y_c = step.X[rows], step.Y[rows]
        if step.sharding is not None:  # data parallel: each device gets P / devices rows
            X_c = jax.lax.with_sharding_constraint(X_c, step.sharding)
            Y_c = jax.lax.with_sharding_constraint(Y_c, step.sharding)
        X_c, Y_c = X_c.astype(compute_dtype), Y_c.astype(compute_dtype)
        part = clipped_sum(step.net, compute_params, X_c, Y_c, mask, step.clip)
        return jax.tree.map(lambda t, g: t + g.astype(t.dtype), total, part)

    chunks = poisson.chunks_needed(step.sample.count, P)
    return jax.lax.fori_loop(0, chunks, add_chunk, jax.tree.map(jnp.zeros_like, params))


class StepInputs(NamedTuple):
    """One private step's inputs, besides the parameters."""

    net: MLP
    X: Array
    Y: Array
    sample: poisson.Sample
    physical_size: int
    clip: tuple  # (C, clip_factors)
    sharding: object = None  # how a chunk's rows lie over a mesh, or None


def add_noise(total: Params, key: Array, std) -> Params:
    """Eq. (9′)'s noise: each coordinate of the clipped sum plus N(0, std²), in its dtype."""
    leaves, tree = jax.tree.flatten(total)
    noisy = [
        g + jnp.asarray(std, g.dtype) * jax.random.normal(k, g.shape, g.dtype)
        for g, k in zip(leaves, jax.random.split(key, len(leaves)), strict=True)
    ]
    return jax.tree.unflatten(tree, noisy)


def add_canaries(total: Params, canaries, in_step: Array, clip: tuple) -> Params:
    """The audit's gradient canaries in the sampled sum: Σ_k s_k c_k L e_{j_k}.

    ``canaries`` is (coordinates j, norm L): canary k's gradient is L times
    the unit vector of flattened coordinate j_k; ``in_step`` (m,) marks the
    canaries in this step's sample. Each is clipped by the same eq. (8).
    """
    coordinates, norm = canaries
    l2_clip, clip_factors = clip
    flat, unravel = ravel_pytree(total)
    norms = (Layer(W=jnp.full(coordinates.shape, norm**2, jnp.float32), b=0.0),)
    c = clip_factors(norms, l2_clip, flat.dtype)
    added = jnp.where(in_step, c * norm, 0).astype(flat.dtype)
    return unravel(flat.at[coordinates].add(added))
