"""Kinks the batch lands on exactly: where a hand σ' and autodiff may pick different slopes.

At a kink of σ (ReLU at 0, |z| at 0, hardtanh at ±1) σ has no derivative, only
two one-sided slopes. A hand rule picks one of them (manualbp's ReLU: 0 at 0);
autodiff picks by its own tie rule (½ for `jnp.maximum` and `jnp.clip`, 1 for
`abs`). With integer inputs and weights and zero biases a batch lands on kinks
exactly, and the two disagree there by O(1) while both are right.

The verdict therefore takes, at a z on a kink and only there, the hand's slope
when it is one of the one-sided slopes (or between them: a subgradient), and
says so in the row; a hand value outside them is still wrong. `tie_broken`
wraps σ so that autodiff itself makes that choice (a `jax.custom_jvp`), and
every reference built from the wrapped net (σ', (1), end to end, curvature)
agrees with it. A z is on a kink where the one-sided slopes of σ, by autodiff
at z ± s and z ± s/16, differ by the same jump at both steps: a smooth σ's
difference shrinks with the step, a kink's does not (T11).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from manualbp import autodiff
from manualbp.network import MLP

JUMP = 1e-3
"""A slope jump counts as a kink when it exceeds this fraction of σ's scale (`sigma_scale`)."""


def one_sided(sigma, z):
    """(left, right, on a kink?) at every z, by autodiff of σ either side (T11)."""
    eps = jnp.finfo(z.dtype).eps
    s = jnp.sqrt(eps) * jnp.maximum(1, jnp.abs(z))
    slope = functools.partial(autodiff.elementwise_derivative, sigma.fn)
    left, right = slope(z - s), slope(z + s)
    near_left, near_right = slope(z - s / 16), slope(z + s / 16)
    jump, near_jump = jnp.abs(right - left), jnp.abs(near_right - near_left)
    size = jnp.maximum(jnp.maximum(jnp.abs(left), jnp.abs(right)), 1)
    kink = (jump > JUMP * size) & (near_jump > 0.5 * jump)
    return left, right, kink


def hand_slope_ok(hand, left, right):
    """Whether the hand value lies between the one-sided slopes (a subgradient)."""
    tol = 1e-6 * jnp.maximum(jnp.abs(left), jnp.abs(right))
    return (hand >= jnp.minimum(left, right) - tol) & (hand <= jnp.maximum(left, right) + tol)


@functools.cache
def tie_broken(sigma):
    """σ whose autodiff derivative at a kink is the hand σ' where that is a one-sided slope."""

    @jax.custom_jvp
    def fn(z):
        return sigma.fn(z)

    @fn.defjvp
    def _jvp(primals, tangents):
        (z,), (t,) = primals, tangents
        auto = autodiff.elementwise_derivative(sigma.fn, z)
        hand = sigma.deriv(z).astype(z.dtype)
        left, right, kink = one_sided(sigma, z)
        slope = jnp.where(kink & hand_slope_ok(hand, left, right), hand, auto)
        return sigma.fn(z), slope * t

    return sigma._replace(fn=fn)


def on_kinks(net: MLP, zs) -> dict:
    """{layer index k: (count, an example z, hand σ'(z), autodiff's)} where z^{k+2} sits on a
    kink and the hand σ' differs from autodiff's tie rule there. ``zs`` in float64."""
    found = {}
    with jax.enable_x64():
        for k, sigma in enumerate(net.activations):
            if not sigma.elementwise:
                continue
            z = jnp.asarray(np.asarray(zs[k], np.float64))
            hand = sigma.deriv(z).astype(z.dtype)
            auto = autodiff.elementwise_derivative(sigma.fn, z)
            differ = np.asarray(jnp.abs(hand - auto) > 1e-9 * jnp.maximum(1, jnp.abs(auto)))
            if not differ.any():
                continue
            _, _, kink = one_sided(sigma, z)
            hit = differ & np.asarray(kink)
            if hit.any():
                i = tuple(np.argwhere(hit)[0])
                found[k] = (int(hit.sum()), float(z[i]), float(hand[i]), float(auto[i]))
    return found


def with_ties_broken(net: MLP, layers) -> MLP:
    """The net with σ^l replaced by `tie_broken` σ^l at the given layer indices."""
    sigmas = [tie_broken(s) if k in layers else s for k, s in enumerate(net.activations)]
    return MLP(net.sizes, sigmas[:-1], sigmas[-1], net.loss, net.fused)


def note(found_k) -> str:
    """What a row at a layer with kinks says."""
    count, z, hand, auto = found_k
    return (
        f"z on a kink at {count} entr{'y' if count == 1 else 'ies'} (z = {z:.4g}: hand σ' = "
        f"{hand:.4g}, autodiff's tie rule {auto:.4g}): σ has no derivative there; judged "
        "with the hand's one-sided slope"
    )
