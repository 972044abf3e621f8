"""Spectra of the Hessian and the GGN from hand-derived products: eigenpairs, trace, density.

Equations (20)–(25) of docs/derivation.md. The operator A is ∇²Ē (`hvp_layers`,
equations (18), (19)) or G (`ggn_vp_layers`), for the mean Ē over a batch or
over a data set too large for one product, summed chunk by chunk (20),
optionally preconditioned (20). On it:

* `eigenpairs`: the k largest or smallest algebraic eigenvalues, their
  eigenvectors and the residual ‖A v − λ v‖ of each, by Lanczos with full
  reorthogonalization (21), the tridiagonal problem solved in float64 (22);
* `hutchinson_trace`: tr A with its standard error, by Rademacher probes (23)
  or Hutch++ (24);
* `spectral_density`: stochastic Lanczos quadrature, nodes and weights per
  probe, their moments and a smoothed density on a grid (25).

Each runs one jitted program, with the net static, that makes every product
(the whole Lanczos iteration is one program); the float64 eigenproblem of the
small tridiagonal matrix runs on the host. Nothing here calls autodiff.
`SpectralMethods` gathers the Krylov pieces so that `verify_spectra` can check a
replacement (and be seen to catch a broken one).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from manualbp import validation
from manualbp._entry import in_compute_dtype
from manualbp.extensions import _krylov
from manualbp.extensions._curvature_checks import check_direction, check_quantity
from manualbp.extensions._spectral_programs import (
    OPERATORS,
    SPECTRAL,
    Problem,
    SpectralMethods,
    lanczos_program,
    probe_program,
    residual_program,
    slq_program,
)
from manualbp.network import MLP, Params

Array = jax.Array

__all__ = [
    "Eigenpairs",
    "SpectralDensity",
    "SpectralMethods",
    "TraceEstimate",
    "eigenpairs",
    "hutchinson_trace",
    "spectral_density",
]


class Eigenpairs(NamedTuple):
    """k eigenpairs of A: λ in float64, v shaped like params with a leading axis k.

    Attributes:
        values: (k,) float64, descending for ``which="largest"``, ascending for "smallest".
        vectors: `Layer`s whose leaves are (k, *shape); unit norm over all leaves.
        residuals: (k,) ‖A v − λ v‖, the product made once more for each pair.
        steps: the Lanczos steps m taken.
    """

    values: np.ndarray
    vectors: Params
    residuals: np.ndarray
    steps: int

    def vector(self, i: int) -> Params:
        """The i-th eigenvector as params-shaped `Layer`s."""
        return jax.tree.map(lambda t: t[i], self.vectors)


class TraceEstimate(NamedTuple):
    """tr A ≈ estimate ± standard_error, from ``products`` products by ``method``."""

    estimate: float
    standard_error: float
    products: int
    method: str


class SpectralDensity(NamedTuple):
    """Eq. (25): per probe v, the nodes θ_vj and weights τ_vj of its Gauss quadrature.

    Attributes:
        nodes, weights: (P, m) float64; each row of weights sums to 1.
    """

    nodes: np.ndarray
    weights: np.ndarray

    def moments(self, powers=(1, 2, 3)) -> tuple[np.ndarray, np.ndarray]:
        """Eq. (25): estimates of tr(Aᵖ)/n for each power p, and their standard errors."""
        per_probe = _krylov.moments(self.nodes, self.weights, powers)
        pairs = [_krylov.mean_and_error(per_probe[:, i]) for i in range(len(powers))]
        return np.array([m for m, _ in pairs]), np.array([s for _, s in pairs])

    def on_grid(self, grid, width: float) -> np.ndarray:
        """Eq. (25): the density smoothed by a Gaussian of standard deviation ``width``."""
        return _krylov.gaussian_density(self.nodes, self.weights, grid, width)


# --- the public functions ------------------------------------------------------------------


def eigenpairs(
    net: MLP,
    params: Params,
    X: Array,
    Y: Array,
    *,
    k: int = 1,
    operator: str = "hessian",
    which: str = "largest",
    key: Array | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    preconditioner: Params | None = None,
    methods: SpectralMethods = SPECTRAL,
) -> Eigenpairs:
    """The k largest (or smallest) algebraic eigenpairs of ∇²Ē or G, by equations (20)–(22).

    The options follow scipy's ``eigsh`` (k, which, the Krylov dimension).

    Args:
        net, params, X, Y: the network and the data set; Ē is the mean over all N rows.
        k: eigenpairs wanted, 1 ≤ k ≤ n (the parameter count).
        operator: ``"hessian"`` (∇²Ē, needs σ'' of every layer) or ``"ggn"`` (G).
        which: ``"largest"`` or ``"smallest"`` algebraic eigenvalues (negative curvature).
        key: a `jax.random` key for the start vector (default ``jax.random.key(0)``).
        steps: Lanczos steps m, k ≤ m ≤ n (default min(n, max(30, 3k))). More steps,
            smaller residuals; m = n finds every eigenvalue.
        batch_size: rows per product; the products are summed over chunks (20).
        preconditioner: a positive diagonal P shaped like params: the pairs are then
            those of P^{-1/2} A P^{-1/2}, whose eigenvalues are those of P⁻¹A.
        methods: the Krylov pieces (default manualbp's; `verify_spectra` checks others).

    Returns:
        `Eigenpairs`: values (float64), vectors, the residual ‖A v − λ v‖ of each, steps.
    """
    problem, X, Y, n = _checked("eigenpairs", net, params, (X, Y), (operator, batch_size, methods))
    _check_count("k", k, n, "the parameter count n")
    _check_choice("which", which, ("largest", "smallest"))
    steps = min(n, max(30, 3 * k)) if steps is None else steps
    _check_count("steps", steps, n, "the parameter count n", least=k)
    key = _key(key)
    scale = _scale(net, params, preconditioner)
    V, alpha, beta = lanczos_program(problem, params, X, Y, scale, key, steps)
    _check_finite_products("eigenpairs", operator, alpha, beta)
    theta, S = _krylov.tridiagonal_eigh(alpha, beta)
    chosen = _krylov.select(theta, k, which)
    dtype = V.dtype
    vectors = jnp.asarray(_krylov.ritz_vectors(V, S[:, chosen]), dtype)
    residuals = residual_program(problem, params, X, Y, scale, vectors, jnp.asarray(theta[chosen]))
    _, unravel = ravel_pytree(in_compute_dtype(net, params, X)[0])
    return Eigenpairs(
        values=theta[chosen],
        vectors=jax.vmap(unravel)(vectors),
        residuals=np.asarray(residuals, np.float64),
        steps=steps,
    )


def hutchinson_trace(
    net: MLP,
    params: Params,
    X: Array,
    Y: Array,
    *,
    probes: int = 100,
    operator: str = "hessian",
    method: str = "hutchinson",
    key: Array | None = None,
    batch_size: int | None = None,
    methods: SpectralMethods = SPECTRAL,
) -> TraceEstimate:
    """tr ∇²Ē or tr G with its standard error, by Hutchinson (23) or Hutch++ (24).

    Args:
        probes: products spent (Hutch++: at least 3, a third each to sketch, to
            project and to probe the remainder).
        method: ``"hutchinson"`` or ``"hutch++"``.
        key: a `jax.random` key for the probes (default ``jax.random.key(0)``).
        Others as `eigenpairs`.
    """
    problem, X, Y, _ = _checked(
        "hutchinson_trace", net, params, (X, Y), (operator, batch_size, methods)
    )
    _check_choice("method", method, ("hutchinson", "hutch++"))
    _check_count("probes", probes, None, "", least=3 if method == "hutch++" else 1)
    head, samples = probe_program(problem, params, X, Y, None, _key(key), method, probes)
    samples = np.asarray(samples, np.float64)
    if not (np.isfinite(samples).all() and np.isfinite(float(head))):
        _check_finite_products("hutchinson_trace", operator, samples)
    mean, error = _krylov.mean_and_error(samples)
    return TraceEstimate(float(head) + mean, error, probes, method)


def spectral_density(
    net: MLP,
    params: Params,
    X: Array,
    Y: Array,
    *,
    probes: int = 10,
    steps: int = 30,
    operator: str = "hessian",
    key: Array | None = None,
    batch_size: int | None = None,
    methods: SpectralMethods = SPECTRAL,
) -> SpectralDensity:
    """The spectral density of ∇²Ē or G by stochastic Lanczos quadrature, equation (25).

    Args:
        probes: Rademacher start vectors, one Lanczos run of ``steps`` each.
        steps: m, 1 ≤ m ≤ n; the quadrature is exact for polynomials of degree < 2m.
        Others as `eigenpairs`.

    Returns:
        `SpectralDensity`: nodes and weights; ``.on_grid(grid, width)``, ``.moments()``.
    """
    problem, X, Y, n = _checked(
        "spectral_density", net, params, (X, Y), (operator, batch_size, methods)
    )
    _check_count("probes", probes, None, "")
    _check_count("steps", steps, n, "the parameter count n")
    alphas, betas = slq_program(problem, params, X, Y, _key(key), probes, steps)
    _check_finite_products("spectral_density", operator, alphas, betas)
    pairs = [_krylov.quadrature(a, b) for a, b in zip(alphas, betas, strict=True)]
    return SpectralDensity(np.stack([t for t, _ in pairs]), np.stack([w for _, w in pairs]))


# --- input checks ------------------------------------------------------------------------


def _checked(name: str, net, params, batch, options):
    """(Problem, X, Y, n) after every check spectral function ``name`` needs, one line each.

    ``batch`` = (X, Y); ``options`` = (operator, batch_size, methods) as the caller took them.
    """
    (X, Y), (operator, batch_size, methods) = batch, options
    _check_choice("operator", operator, tuple(OPERATORS))
    X, Y = validation.as_array(X, "X"), validation.as_array(Y, "Y")
    if getattr(X, "ndim", 0) >= 1 and X.shape[0] == 0:
        raise ValueError(
            f"{name}: the data set has no examples (X has 0 rows); expected at least one"
        )
    check_quantity(net, params, X, Y, name, factor=operator == "ggn", second=operator == "hessian")
    validation.check_finite(X, Y)
    if batch_size is not None:
        _check_count("batch_size", batch_size, None, "")
    n = sum(x.size for layer in params for x in layer)
    return Problem(net, OPERATORS[operator], batch_size, methods), X, Y, n


def _check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")


def _check_count(name: str, value, most: int | None, what: str, least: int = 1) -> None:
    """``value`` must be an integer in [least, most] (no upper bound where most is None)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise ValueError(f"{name}: expected an integer ≥ {least}, got {value!r}")
    if most is not None and value > most:
        raise ValueError(f"{name}: expected at most {what} = {most}, got {value}")


def _check_finite_products(name: str, operator: str, *arrays) -> None:
    for x in arrays:
        bad = ~np.isfinite(np.asarray(x, np.float64))
        if bad.any():
            where = int(np.argwhere(bad)[0][-1])
            raise FloatingPointError(
                f"{name}: the {operator} product is not finite (inf or NaN at product "
                f"{where + 1}); check params and the data for overflow"
            )


def _key(key):
    key = jax.random.key(0) if key is None else key
    validation.check_key(key)
    return key


def _scale(net: MLP, params: Params, preconditioner):
    """s = P^{-1/2}, flat, or None; P must be finite and positive."""
    if preconditioner is None:
        return None
    check_direction(net, params, preconditioner)
    P = np.asarray(ravel_pytree(preconditioner)[0], np.float64)
    if not (np.isfinite(P).all() and (P > 0).all()):
        raise ValueError("preconditioner: expected finite, positive entries (a diagonal P > 0)")
    dtype = ravel_pytree(in_compute_dtype(net, params, jnp.zeros((1, net.sizes[0])))[0])[0].dtype
    return jnp.asarray(1 / np.sqrt(P), dtype)
