"""Equations (21)–(25) of docs/derivation.md: spectra from matrix-vector products alone.

The math of `spectra`, on a symmetric operator given only as ``matvec``, a
function from a flat vector (n,) to a flat vector (n,): Lanczos with full
reorthogonalization (21), Ritz pairs from the tridiagonal matrix in float64
(22), Hutchinson's trace (23) and Hutch++ (24), and stochastic Lanczos
quadrature (25). `spectra` builds ``matvec`` from the hand-derived ∇²Ē v or
G v; nothing here knows about nets, and nothing here calls autodiff. The
functions that run inside `jax.jit` take and return arrays; those that run on
the host (the float64 tridiagonal eigenproblem) say so.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
MatVec = Callable[[Array], Array]


# --- Lanczos, eq. (21) ---------------------------------------------------------------------


def orthogonalize(V: Array, w: Array) -> Array:
    """w − Vᵀ(V w), twice: classical Gram–Schmidt against the rows of V, repeated once.

    One pass leaves w orthogonal to V only up to its condition; two passes
    ("twice is enough") leave it orthogonal to working precision. Rows of V
    not yet filled are zero and remove nothing. Shapes: V (m, n), w (n,).
    """
    w = w - V.T @ (V @ w)
    return w - V.T @ (V @ w)


def lanczos(matvec: MatVec, v0: Array, steps: int, key: Array, reorthogonalize: bool = True):
    """Eq. (21): m = ``steps`` Lanczos steps from v0: q_j, α_j and β_j, with A Q = Q T + r e_mᵀ.

    q_1 = v0/‖v0‖;  w = A q_j − α_j q_j − β_{j−1} q_{j−1},  α_j = q_jᵀ A q_j;
    w ← w − Q Qᵀ w (full reorthogonalization, twice);  β_j = ‖w‖, q_{j+1} = w/β_j.

    Where β_j vanishes (A q_1's Krylov space is exhausted, an invariant
    subspace found), the next q is a fresh random direction orthogonal to
    Q and β_j = 0: T splits into blocks, each exact for its own subspace.
    ``reorthogonalize=False`` is the textbook three-term recurrence alone,
    whose q_j lose orthogonality once a Ritz value converges (kept for the
    test that shows the verifier catching it).

    Returns:
        (Q (m, n), α (m,), β (m,)); β[:m−1] is T's off-diagonal, β[m−1] the
        norm of the remainder r.
    """
    n, dtype = v0.shape[0], v0.dtype
    tiny = jnp.finfo(dtype).eps

    def fresh(j, V):
        w = jax.random.normal(jax.random.fold_in(key, j), (n,), dtype)
        w = orthogonalize(V, w) if reorthogonalize else w
        return w / jnp.linalg.norm(w)

    def step(j, carry):
        V, alpha, beta, q, q_prev, b_prev, scale = carry
        V = V.at[j].set(q)
        w = matvec(q)
        a = jnp.vdot(q, w)
        w = w - a * q - b_prev * q_prev
        if reorthogonalize:
            w = orthogonalize(V, w)
        b = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.abs(a) + b_prev)
        broken = b <= tiny * scale
        q_next = jax.lax.cond(broken, fresh, lambda j, V: w / b, j, V)
        b = jnp.where(broken, jnp.zeros((), dtype), b)
        return V, alpha.at[j].set(a), beta.at[j].set(b), q_next, q, b, scale

    zero = jnp.zeros((), dtype)
    carry = (
        jnp.zeros((steps, n), dtype),
        jnp.zeros((steps,), dtype),
        jnp.zeros((steps,), dtype),
        v0 / jnp.linalg.norm(v0),
        jnp.zeros((n,), dtype),
        zero,
        zero,
    )
    V, alpha, beta, *_ = jax.lax.fori_loop(0, steps, step, carry)
    return V, alpha, beta


# --- Ritz pairs in float64, eq. (22) (host) ------------------------------------------------


def tridiagonal_eigh(alpha, beta) -> tuple[np.ndarray, np.ndarray]:
    """Eq. (22): T = S Θ Sᵀ in float64 on the host, T = tridiag(β, α, β) of (21).

    Args:
        alpha: (m,) diagonal; beta: (m,) as `lanczos` returns it (the last is dropped).

    Returns:
        (θ (m,) ascending, S (m, m) float64, columns the eigenvectors).
    """
    # scipy (a dependency of jax) loads argparse on import: imported where it is used, so
    # that `import manualbp` stays light.
    import scipy.linalg

    alpha = np.asarray(alpha, np.float64)
    beta = np.asarray(beta, np.float64)[: alpha.shape[0] - 1]
    if alpha.shape[0] == 1:
        return alpha.copy(), np.ones((1, 1))
    return scipy.linalg.eigh_tridiagonal(alpha, beta)


def select(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    """Indices of the k largest (descending) or smallest (ascending) algebraic θ."""
    order = np.argsort(theta)
    return order[::-1][:k] if which == "largest" else order[:k]


def ritz_vectors(V, S: np.ndarray) -> np.ndarray:
    """Eq. (22): y_i = Q s_i, in float64 on the host. Shapes: V (m, n), S (m, k) → (k, n)."""
    return S.T @ np.asarray(V, np.float64)


def residual_norms(matvec: MatVec, Y: Array, theta: Array) -> Array:
    """Eq. (22): ‖A y_i − θ_i y_i‖ for each row y_i of Y (k, n), one product each."""
    return jax.lax.map(lambda yt: jnp.linalg.norm(matvec(yt[0]) - yt[1] * yt[0]), (Y, theta))


# --- trace, eqs. (23), (24) ----------------------------------------------------------------


def rademacher(key: Array, shape: tuple[int, ...], dtype) -> Array:
    """Probes of independent ±1 entries: E[z zᵀ] = I."""
    return jax.random.rademacher(key, shape, dtype)


def quadratic_forms(matvec: MatVec, Z: Array) -> Array:
    """zᵢᵀ A zᵢ for each row zᵢ of Z (p, n), one product each: (p,)."""
    return jax.lax.map(lambda z: jnp.vdot(z, matvec(z)), Z)


def mean_and_error(samples) -> tuple[float, float]:
    """Eq. (23): the sample mean and its standard error s/√p (inf for one sample), in float64."""
    x = np.asarray(samples, np.float64)
    if x.shape[0] < 2:
        return float(x.mean()), float("inf")
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(x.shape[0]))


def hutch_plus_plus(matvec: MatVec, S: Array, G: Array) -> tuple[Array, Array]:
    """Eq. (24): tr(Qᵀ A Q) and the Hutchinson samples of the deflated remainder.

    Q = orth(A S) spans A's dominant range; the remainder's samples are
    g̃ᵢᵀ A g̃ᵢ with g̃ᵢ = (I − Q Qᵀ) gᵢ. Shapes: S (p₁, n), G (p₂, n).
    """
    AS = jax.lax.map(matvec, S)
    Q, _ = jnp.linalg.qr(AS.T)
    AQ = jax.lax.map(matvec, Q.T)
    G_perp = G - (G @ Q) @ Q.T
    return jnp.sum(Q.T * AQ), quadratic_forms(matvec, G_perp)


# --- stochastic Lanczos quadrature, eq. (25) (host) ----------------------------------------


def quadrature(alpha, beta) -> tuple[np.ndarray, np.ndarray]:
    """Eq. (25): Gauss quadrature of one probe's spectral measure: nodes θ_j, weights (s_1j)²."""
    theta, S = tridiagonal_eigh(alpha, beta)
    return theta, S[0] ** 2


def gaussian_density(nodes, weights, grid, width: float) -> np.ndarray:
    """Eq. (25): φ(t) = (1/P) Σ_v Σ_j τ_vj N(t; θ_vj, width²) on ``grid``, in float64.

    Shapes: nodes, weights (P, m); grid (G,); returns (G,).
    """
    nodes, weights = np.asarray(nodes, np.float64), np.asarray(weights, np.float64)
    t = np.asarray(grid, np.float64)[:, None, None]
    kernel = np.exp(-0.5 * ((t - nodes[None]) / width) ** 2) / (width * np.sqrt(2 * np.pi))
    return np.sum(kernel * weights[None], axis=(1, 2)) / nodes.shape[0]


def moments(nodes, weights, powers) -> np.ndarray:
    """Eq. (25): Σ_j τ_vj θ_vj^p per probe v and power p: (P, len(powers)), in float64."""
    nodes, weights = np.asarray(nodes, np.float64), np.asarray(weights, np.float64)
    return np.stack([np.sum(weights * nodes**p, axis=1) for p in powers], axis=1)
