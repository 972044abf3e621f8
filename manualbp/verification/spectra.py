"""Verification of the spectra, equations (20)–(25), against dense eigensolvers.

On a net small enough to form its n × n operator A (∇²Ē by `jax.hessian` of Ē
in the flat parameters, or G = (1/B) Σ_b J_bᵀ H_b J_b from per-example
Jacobians and the loss's autodiff Hessian), `verify_spectra` checks:

* Eigenvalues (21), (22): the k largest and the k smallest from Lanczos run
  to m = n steps (every eigenvalue, up to rounding) against
  ``jnp.linalg.eigh`` of A in float64 (the reference), judged by the
  tolerance rule (`tolerance.judge`) with eigh of A in the net's dtype as the
  witness, at the scale s = max|λ|, depth L − 1.
* The stated residuals ‖A v − λ v‖ (22) against the same residuals of the same
  vectors with A in float64 (witness: A in the net's dtype).
* Per SLQ probe v, the quadrature Σ_j τ_j θ_jᵖ against vᵀ Aᵖ v (25), exact for
  p < 2m: judged like the eigenvalues, at the scale max|λ|ᵖ.
* Statistical rows: Hutchinson's (23) and Hutch++'s (24) trace against tr A,
  and the density's moments against tr(Aᵖ)/n, each within z standard errors
  at the stated two-sided confidence (default 99.9%, z = 3.29). A correct
  estimator misses this with probability 1 − confidence; a biased one (probes
  with E[z zᵀ] ≠ I) misses it once its bias exceeds z standard errors.

A float64 net has no higher precision: its reference has no witness.
"""

from __future__ import annotations

import functools
import statistics
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from manualbp import tolerance, validation
from manualbp._entry import in_compute_dtype
from manualbp._records import environment
from manualbp.extensions import _krylov
from manualbp.extensions import spectra as S
from manualbp.extensions.curvature_equations import logits_are_f
from manualbp.network import MLP, Params, forward_pass, mean_loss
from manualbp.parameters import param_dtype
from manualbp.verification import witnesses
from manualbp.verification.compare import Rounding, Site, compare
from manualbp.verification.report import Report, Row

Array = jax.Array

MAX_PARAMETERS = 2048
"""Most parameters n: the references form the dense n × n operator and its eigh."""
PARTS = ("eigenvalues", "density", "trace")
"""The groups of rows `verify_spectra` can run."""
POWERS = (1, 2, 3)
"""The moments tr(Aᵖ)/n checked."""


def verify_spectra(
    net: MLP,
    params: Params,
    X: Array,
    Y: Array,
    *,
    operator: str = "hessian",
    key: Array | None = None,
    methods: S.SpectralMethods = S.SPECTRAL,
    k: int = 3,
    probes: int = 200,
    confidence: float = 0.999,
    parts: tuple[str, ...] = PARTS,
) -> Report:
    """Check eigenpairs, trace and density of ∇²Ē or G against the dense operator.

    Args:
        net, params, X, Y: a small net (at most `MAX_PARAMETERS` parameters) and batch.
        operator: ``"hessian"`` or ``"ggn"``.
        key: a `jax.random` key for the start vectors and probes (default key 0).
        methods: the `SpectralMethods` under test (default: manualbp's).
        k: eigenvalues checked at each end of the spectrum.
        probes: products for each trace estimate; the density uses a tenth of them.
        confidence: the two-sided confidence of the statistical rows.
        parts: which rows, any of ``"eigenvalues"``, ``"density"``, ``"trace"``.

    Returns:
        A `Report`.
    """
    key = jax.random.key(0) if key is None else key
    unknown = set(parts) - set(PARTS)
    if unknown or not parts:
        raise ValueError(f"parts: expected some of {', '.join(PARTS)}, got {parts!r}")
    validation.check_batch(net, params, X, Y)
    n = sum(x.size for layer in params for x in layer)
    if n > MAX_PARAMETERS:
        raise ValueError(
            f"verify_spectra: its reference is the dense n × n operator, so it takes nets of at "
            f"most {MAX_PARAMETERS} parameters; got n = {n} (sizes={net.sizes}). Check a small "
            "net of the same activations and loss"
        )
    dtype = jnp.dtype(param_dtype(params))
    A, A_witness = dense_operators(net, params, X, Y, operator)
    case = _Case(net, params, X, Y, dict(operator=operator, key=key, methods=methods), confidence)
    dense = _Dense(A, A_witness, dtype)
    rows = []
    if "eigenvalues" in parts:
        rows += _eigen_rows(case, dense, k)
    if "density" in parts:
        rows += _density_rows(case, dense, probes)
    if "trace" in parts:
        rows += _trace_rows(case, dense, probes)
    meta = {
        "subject": f"{operator} spectra of {net!r}",
        "batch": int(X.shape[0]),
        "dtype": str(dtype),
        "reference": witnesses.reference_note(dtype),
        "confidence": confidence,
        **environment(),
    }
    return Report(tuple(rows), meta)


def dense_operators(net, params, X, Y, operator: str):
    """(A in float64, A in the net's dtype or None for a float64 net), by autodiff."""
    p, X, Y = in_compute_dtype(net, params, X, Y)
    dtype = jnp.dtype(param_dtype(p))
    witness = None
    if dtype != witnesses.REFERENCE_DTYPE:
        witness = np.asarray(_dense(net, p, X, Y, operator), np.float64)
    with jax.enable_x64(True):
        up = jax.tree.map(lambda t: jnp.asarray(np.asarray(t, np.float64)), (p, X, Y))
        reference = np.asarray(_dense(net, *up, operator))
    return reference, witness


@functools.partial(jax.jit, static_argnums=(0, 4))
def _dense(net, p, X, Y, operator):
    """A as an n × n matrix: `jax.hessian` of Ē, or (1/B) Σ_b J_bᵀ H_b J_b."""
    flat, unravel = ravel_pytree(p)
    if operator == "hessian":
        return jax.hessian(lambda t: mean_loss(net, unravel(t), X, Y))(flat)

    def f(t, x):
        fwd = forward_pass(net, unravel(t), x)
        return fwd.z[-1] if logits_are_f(net) else fwd.a[-1]

    loss_fn = net.fused_loss.fn if logits_are_f(net) else net.loss.fn
    J = jax.vmap(jax.jacrev(f), (None, 0))(flat, X)
    f_all = jax.vmap(f, (None, 0))(flat, X)
    H = jax.vmap(jax.hessian(loss_fn))(f_all, Y)
    return jnp.einsum("bin,bij,bjm->nm", J, H, J) / X.shape[0]


class _Case(NamedTuple):
    """What every spectra row is computed from: the net, its batch, the methods' options."""

    net: MLP
    params: Params
    X: Array
    Y: Array
    options: dict
    confidence: float


class _Dense(NamedTuple):
    """The dense reference: A in float64, A in the net's dtype (None for float64), the dtype."""

    A: np.ndarray
    A_w: np.ndarray | None
    dtype: np.dtype


def _judged(site: Site, arrays, dtype, depth: int, scale: float) -> Row:
    """A row by the tolerance rule, at the scale ``scale`` (the cancellation refinement).

    ``arrays`` = (manual, float64 reference, witness or None).
    """
    magnitude = np.full(np.shape(arrays[1]), scale)
    return compare(site, *arrays, Rounding(dtype, depth, magnitude))


def _eigen_rows(case: _Case, dense: _Dense, k: int) -> list[Row]:
    net, params, X, Y, options, _ = case
    A, A_w, dtype = dense
    n, depth = A.shape[0], net.L - 1
    lam = np.linalg.eigvalsh(A)
    lam_w = None if A_w is None else np.linalg.eigvalsh(A_w.astype(dtype)).astype(np.float64)
    scale = float(np.max(np.abs(lam)))
    rows = []
    for which, order in (("largest", slice(None, None, -1)), ("smallest", slice(None))):
        pairs = S.eigenpairs(net, params, X, Y, k=k, which=which, steps=n, **options)
        ref = lam[order][:k]
        wit = None if lam_w is None else lam_w[order][:k]
        site = Site(f"λ {which} {k}", 22)
        rows.append(_judged(site, (pairs.values, ref, wit), dtype, depth, scale))
        V = np.asarray(ravel_vectors(pairs.vectors), np.float64)
        residual_ref = np.linalg.norm(V @ A - pairs.values[:, None] * V, axis=1)
        residual_w = None
        if A_w is not None:
            residual_w = np.linalg.norm(V @ A_w - pairs.values[:, None] * V, axis=1)
        site = Site(f"residual ‖Av − λv‖ {which}", 22)
        rows.append(_judged(site, (pairs.residuals, residual_ref, residual_w), dtype, depth, scale))
    return rows


def ravel_vectors(vectors) -> Array:
    """(k, n): each eigenvector of `Eigenpairs.vectors` flattened as `ravel_pytree` orders θ."""
    return jax.vmap(lambda v: ravel_pytree(v)[0])(vectors)


def _density_rows(case: _Case, dense: _Dense, probes: int) -> list[Row]:
    """Per-probe quadrature against vᵀAᵖv (judged), and the moments against tr(Aᵖ)/n."""
    net, params, X, Y, options, confidence = case
    A, A_w, dtype = dense
    n, depth = A.shape[0], net.L - 1
    count, steps = max(probes // 10, 2), min(n, 10)
    density = S.spectral_density(
        net, params, X, Y, probes=count, steps=steps, **options
    )  # fmt: skip
    Z = np.asarray(slq_probes(options, count, n, dtype), np.float64)
    Z = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    per_probe = _krylov.moments(density.nodes, density.weights, POWERS)
    lam = np.linalg.eigvalsh(A)
    scale = float(np.max(np.abs(lam)))
    estimate, error = density.moments(POWERS)
    rows = []
    for i, p in enumerate(POWERS):
        reference = np.einsum("vi,vi->v", Z @ np.linalg.matrix_power(A, p), Z)
        witness = None
        if A_w is not None:
            A_p = np.linalg.matrix_power(A_w.astype(dtype), p).astype(np.float64)
            witness = np.einsum("vi,vi->v", Z.astype(dtype).astype(np.float64) @ A_p, Z)
        site = Site(f"SLQ quadrature vᵀA^{p}v", 25)
        rows.append(_judged(site, (per_probe[:, i], reference, witness), dtype, depth, scale**p))
        exact = float(np.sum(lam**p) / n)
        rounding = _rounding(dtype, depth, float(np.sum(np.abs(lam) ** p) / n))
        check = f"SLQ moment tr(A^{p})/n"
        rows.append(
            statistical_row(check, 25, (estimate[i], error[i], rounding), exact, confidence)
        )
    return rows


def slq_probes(options, count: int, n: int, dtype) -> Array:
    """The probes `spectral_density` draws for ``count`` probes: the same keys, same order."""
    keys = jax.random.split(options["key"], count)
    draw = options["methods"].probes
    return jnp.stack([draw(jax.random.split(k)[0], (n,), dtype) for k in keys])


def _trace_rows(case: _Case, dense: _Dense, probes: int) -> list[Row]:
    net, params, X, Y, options, confidence = case
    A, dtype = dense.A, dense.dtype
    lam = np.linalg.eigvalsh(A)
    exact, rounding = float(np.sum(lam)), _rounding(dtype, net.L - 1, float(np.sum(np.abs(lam))))
    rows = []
    for method, equation in (("hutchinson", 23), ("hutch++", 24)):
        t = S.hutchinson_trace(net, params, X, Y, probes=probes, method=method, **options)
        check = f"trace ({method}, {probes} products)"
        estimate = (t.estimate, t.standard_error, rounding)
        rows.append(statistical_row(check, equation, estimate, exact, confidence))
    return rows


def _rounding(dtype, depth: int, scale: float) -> float:
    """The tolerance rule's allowance without a witness, K · F · d · eps · s: rounding alone."""
    return tolerance.allowance(0.0, tolerance.floor(dtype, depth, scale))


def statistical_row(check, equation, estimate, exact, confidence) -> Row:
    """|estimate − exact| ≤ z · SE + rounding, z the two-sided normal quantile of ``confidence``.

    ``estimate`` = (value, standard error, rounding allowance): an estimate whose
    samples barely vary (Hutch++ on a low-rank A) is still allowed its rounding.
    The row's rel_err and tol are the miss and the allowance over |exact| (or 1
    where exact is 0); the eps columns do not apply and stay empty.
    """
    value, error, rounding = estimate
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    miss, allowed = abs(value - exact), z * error + rounding
    scale = abs(exact) or 1.0
    passed = bool(np.isfinite(value) and miss <= allowed)
    diagnosis = ""
    if not passed:
        diagnosis = f"{value:.6g} ± {error:.2g} (SE) against exact {exact:.6g}"
    return Row(check, equation, None, miss, miss / scale, allowed / scale, passed, diagnosis)
