"""The operator of equation (20) on flat vectors, and the jitted spectral programs.

`spectra`'s machinery: which product (`OPERATORS`), what is static in a
program (`Problem`, with the Krylov pieces `SpectralMethods`), the data-set
operator summed over chunks (20), and one jitted program per public function
that makes every product in one compiled call. Nothing here calls autodiff.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from manualbp._entry import in_compute_dtype
from manualbp.extensions import _krylov
from manualbp.extensions import curvature as C
from manualbp.network import MLP, Params

Array = jax.Array

OPERATORS = {"hessian": C.hvp_layers, "ggn": C.ggn_vp_layers}
"""The products, ``(net, params, X, Y, v) -> Params``, of the mean over one batch."""


class SpectralMethods(NamedTuple):
    """The Krylov pieces the spectra use; `verify_spectra` checks any such set.

    ``lanczos(matvec, v0, steps, key)`` as `_krylov.lanczos`; ``probes(key,
    shape, dtype)`` draws the trace probes, rows with E[z zᵀ] = I.
    """

    lanczos: Callable = _krylov.lanczos
    probes: Callable = _krylov.rademacher


SPECTRAL = SpectralMethods()


class Problem(NamedTuple):
    """What is static in a spectral program: the net, the product, the chunk, the methods."""

    net: MLP
    product: Callable
    chunk: int | None = None
    methods: SpectralMethods = SPECTRAL


# --- the operator, eq. (20) ----------------------------------------------------------------


def data_operator(problem: Problem, params: Params, X: Array, Y: Array, scale=None):
    """Eq. (20): v ↦ s ⊙ A(s ⊙ v) on flat vectors, A = (1/N) Σ_c B_c A_c over chunks.

    A_c is chunk c's mean-loss product (``problem.product``), B_c its rows; the
    chunks are ``problem.chunk`` rows each, the last one what is left. Without a
    chunk the product is the batch's own. ``scale`` (n,) or None: s = P^{-1/2}
    of a diagonal preconditioner P.
    """
    net, product = problem.net, problem.product
    _, unravel = ravel_pytree(params)
    N = X.shape[0]
    c = N if problem.chunk is None else min(problem.chunk, N)
    full = N // c * c

    def flat(Xc, Yc, v):
        return ravel_pytree(product(net, params, Xc, Yc, unravel(v)))[0]

    def on_data(v):
        if c == N:
            return flat(X, Y, v)
        Xs = X[:full].reshape(N // c, c, X.shape[1])
        Ys = Y[:full].reshape(N // c, c, Y.shape[1])

        def add(total, chunk):
            return total + c * flat(*chunk, v), None

        total, _ = jax.lax.scan(add, jnp.zeros_like(v), (Xs, Ys))
        if full < N:
            total = total + (N - full) * flat(X[full:], Y[full:], v)
        return total / N

    if scale is None:
        return on_data
    return lambda v: scale * on_data(scale * v)


# --- the jitted programs, the problem static -----------------------------------------------


@functools.partial(jax.jit, static_argnums=(0, 6))
def lanczos_program(problem, params, X, Y, scale, key, steps):
    p, X, Y = in_compute_dtype(problem.net, params, X, Y)
    flat, _ = ravel_pytree(p)
    key_start, key_restart = jax.random.split(key)
    v0 = jax.random.normal(key_start, flat.shape, flat.dtype)
    matvec = data_operator(problem, p, X, Y, scale)
    return problem.methods.lanczos(matvec, v0, steps, key_restart)


@functools.partial(jax.jit, static_argnums=0)
def residual_program(problem, params, X, Y, scale, vectors, theta):
    p, X, Y = in_compute_dtype(problem.net, params, X, Y)
    matvec = data_operator(problem, p, X, Y, scale)
    return _krylov.residual_norms(matvec, vectors, theta.astype(vectors.dtype))


@functools.partial(jax.jit, static_argnums=(0, 6, 7))
def probe_program(problem, params, X, Y, scale, key, method, probes):
    p, X, Y = in_compute_dtype(problem.net, params, X, Y)
    flat, _ = ravel_pytree(p)
    matvec = data_operator(problem, p, X, Y, scale)
    key_1, key_2 = jax.random.split(key)
    draw = problem.methods.probes
    if method == "hutch++":
        third = probes // 3
        S = draw(key_1, (third, flat.shape[0]), flat.dtype)
        G = draw(key_2, (probes - 2 * third, flat.shape[0]), flat.dtype)
        return _krylov.hutch_plus_plus(matvec, S, G)
    Z = draw(key_1, (probes, flat.shape[0]), flat.dtype)
    return jnp.zeros((), flat.dtype), _krylov.quadratic_forms(matvec, Z)


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def slq_program(problem, params, X, Y, key, probes, steps):
    p, X, Y = in_compute_dtype(problem.net, params, X, Y)
    flat, _ = ravel_pytree(p)
    matvec = data_operator(problem, p, X, Y)
    keys = jax.random.split(key, probes)

    def one(k):
        k_probe, k_restart = jax.random.split(k)
        z = problem.methods.probes(k_probe, flat.shape, flat.dtype)
        _, alpha, beta = problem.methods.lanczos(matvec, z, steps, k_restart)
        return alpha, beta

    return jax.lax.map(one, keys)
