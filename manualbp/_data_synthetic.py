"""The synthetic sets: xor, two_moons, spirals, sine and blobs, each drawn from a key.

Every generator returns ``(X, Y)`` as `manualbp.data` describes: X of shape
(n, N_1), integer class labels Y (n,) or regression values (n, N_L). The same
`jax.random` key gives the same set. Each generator is jitted whole (sizes and
dtype static), so a call compiles once instead of once per primitive.

Import them from `manualbp.data`, which re-exports every one.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

Array = jax.Array


@functools.partial(jax.jit, static_argnames=("n", "dtype"))
def xor(key: Array, n: int = 4, noise: float = 0.0, dtype=jnp.float32) -> tuple[Array, Array]:
    """The XOR problem: corners of the unit square, label x_1 XOR x_2.

    Example i sits on corner i mod 4, so ``n=4`` with no noise is exactly the
    truth table (0,0)→0, (0,1)→1, (1,0)→1, (1,1)→0.

    Args:
        key: a `jax.random` key (used for the noise).
        n: the number of examples.
        noise: the standard deviation of Gaussian noise added to the corners.

    Returns:
        X of shape (n, 2) and integer labels Y of shape (n,).
    """
    corners = jnp.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype)
    index = jnp.arange(n) % 4
    X = corners[index] + noise * jax.random.normal(key, (n, 2), dtype)
    Y = jnp.array([0, 1, 1, 0], jnp.int32)[index]
    return X, Y


@functools.partial(jax.jit, static_argnames=("n", "dtype"))
def two_moons(
    key: Array, n: int = 200, noise: float = 0.1, dtype=jnp.float32
) -> tuple[Array, Array]:
    """Two interleaved half circles (scikit-learn's ``make_moons``), labels 0 and 1.

    Class 0 is the upper half of the unit circle, class 1 the lower half
    shifted by (1, 0.5); each example draws its angle uniformly.

    Returns:
        X of shape (n, 2) and integer labels Y of shape (n,).
    """
    key_label, key_angle, key_noise = jax.random.split(key, 3)
    Y = jax.random.bernoulli(key_label, 0.5, (n,)).astype(jnp.int32)
    angle = jax.random.uniform(key_angle, (n,), dtype, 0.0, math.pi)
    upper = jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)
    lower = jnp.stack([1.0 - jnp.cos(angle), 0.5 - jnp.sin(angle)], axis=1)
    X = jnp.where((Y == 1)[:, None], lower, upper)
    X = X + noise * jax.random.normal(key_noise, (n, 2), dtype)
    return X.astype(dtype), Y


@functools.partial(jax.jit, static_argnames=("n", "classes", "dtype"))
def spirals(
    key: Array,
    n: int = 300,
    classes: int = 3,
    turns: float = 1.0,
    noise: float = 0.05,
    dtype=jnp.float32,
) -> tuple[Array, Array]:
    """Interleaved spiral arms, one per class, in the unit disc (CS231n's spiral set).

    Arm c starts at the origin and winds ``turns`` times, rotated by 2πc/classes.

    Returns:
        X of shape (n, 2) and integer labels Y of shape (n,), in 0..classes-1.
    """
    key_label, key_radius, key_noise = jax.random.split(key, 3)
    Y = jax.random.randint(key_label, (n,), 0, classes, jnp.int32)
    radius = jax.random.uniform(key_radius, (n,), dtype)
    angle = 2 * math.pi * (turns * radius + Y.astype(dtype) / classes)
    X = radius[:, None] * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)
    X = X + noise * jax.random.normal(key_noise, (n, 2), dtype)
    return X.astype(dtype), Y


@functools.partial(jax.jit, static_argnames=("n", "dtype"))
def sine(key: Array, n: int = 256, noise: float = 0.0, dtype=jnp.float32) -> tuple[Array, Array]:
    """Regression of y = sin(x) for x uniform on [−π, π], plus optional Gaussian noise.

    Returns:
        X of shape (n, 1) and Y of shape (n, 1).
    """
    key_x, key_noise = jax.random.split(key)
    X = jax.random.uniform(key_x, (n, 1), dtype, -math.pi, math.pi)
    Y = jnp.sin(X) + noise * jax.random.normal(key_noise, (n, 1), dtype)
    return X, Y


@functools.partial(jax.jit, static_argnames=("n", "classes", "dim", "dtype"))
def blobs(
    key: Array,
    n: int = 300,
    classes: int = 3,
    dim: int = 2,
    spread: float = 5.0,
    std: float = 1.0,
    dtype=jnp.float32,
) -> tuple[Array, Array]:
    """Gaussian blobs: centers uniform in [−spread, spread]^dim, examples N(center, std²).

    Returns:
        X of shape (n, dim) and integer labels Y of shape (n,), in 0..classes-1.
    """
    key_center, key_label, key_noise = jax.random.split(key, 3)
    centers = jax.random.uniform(key_center, (classes, dim), dtype, -spread, spread)
    Y = jax.random.randint(key_label, (n,), 0, classes, jnp.int32)
    X = centers[Y] + std * jax.random.normal(key_noise, (n, dim), dtype)
    return X, Y
