"""Spectra, equations (20)–(25): agreement with dense eigensolvers, caught when broken, no autodiff.

* `verify_spectra` passes on a small net for the Hessian and the GGN, and fails
  for a Lanczos without reorthogonalization (on the GGN's cluster of zero
  eigenvalues) and for Gaussian probes with the wrong variance.
* Lanczos on a diagonal matrix with repeated eigenvalues, the arithmetic visible:
  the breakdown restarts recover every multiplicity.
* The public functions never call autodiff; chunked products equal the batch's.
* Bad input: one clear line each.
"""

from __future__ import annotations

import ast
import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import manualbp as mbp
from manualbp.activations import Activation
from manualbp.data import random_batch
from manualbp.extensions import _krylov
from manualbp.extensions import spectra as S
from manualbp.verification.spectra import statistical_row, verify_spectra

AUTODIFF = {"grad", "value_and_grad", "vjp", "jvp", "linearize", "jacfwd", "jacrev", "hessian"}


def small(hidden="tanh", sizes=(4, 5, 6, 3), batch=6):
    net = mbp.MLP(sizes, hidden=hidden, output="softmax", loss="cross_entropy")
    params = net.init(jax.random.key(1))
    X, Y = random_batch(net, jax.random.key(2), batch)
    return net, params, X, Y


@pytest.mark.parametrize("operator", ["hessian", pytest.param("ggn", marks=pytest.mark.slow)])
def test_every_row_agrees_with_the_dense_operator(operator):
    report = verify_spectra(*small(), operator=operator, key=jax.random.key(3))
    assert report.passed, str(report)
    assert {row.equation for row in report.rows} == {22, 23, 24, 25}


def test_lanczos_without_reorthogonalization_is_caught():
    """On the GGN (rank 12 of 82: a cluster of 70 zeros) the q_j lose orthogonality,
    and ghost copies of the top eigenvalue push out the true second and third."""
    bad = S.SpectralMethods(lanczos=functools.partial(_krylov.lanczos, reorthogonalize=False))
    report = verify_spectra(*small(), operator="ggn", methods=bad, parts=("eigenvalues",))
    assert not report.passed
    assert report.failures[0].check.startswith("λ largest")


def gaussian(variance):
    def probes(key, shape, dtype):
        return jnp.sqrt(jnp.asarray(variance, dtype)) * jax.random.normal(key, shape, dtype)

    return probes


@pytest.mark.parametrize("variance, caught", [(2.0, True), (1.0, False)])
def test_wrongly_scaled_gaussian_probes_are_caught(variance, caught):
    """E[zᵀAz] = variance · tr A: twice the trace is caught; unit Gaussian probes pass."""
    methods = S.SpectralMethods(probes=gaussian(variance))
    report = verify_spectra(*small(), operator="ggn", methods=methods, parts=("trace",))
    assert report.passed is not caught, str(report)


def test_the_statistical_row_can_fail():
    """z(99.9%) = 3.29: 3 standard errors pass, 4 fail; rounding alone is allowed."""
    assert statistical_row("t", 23, (13.0, 1.0, 0.0), 10.0, 0.999).passed
    assert not statistical_row("t", 23, (14.0, 1.0, 0.0), 10.0, 0.999).passed
    assert statistical_row("t", 24, (10.0 + 1e-7, 0.0, 1e-6), 10.0, 0.999).passed


def test_lanczos_recovers_repeated_eigenvalues_by_restarting():
    """diag(3, 3, 3, 1, 1, 0): from one start the Krylov space has dimension 3 (one per
    distinct eigenvalue), β_3 = 0, and the fresh directions find the multiplicities."""
    d = jnp.array([3.0, 3.0, 3.0, 1.0, 1.0, 0.0])
    v0 = jnp.ones(6)
    _, alpha, beta = _krylov.lanczos(lambda v: d * v, v0, 6, jax.random.key(0))
    theta, _ = _krylov.tridiagonal_eigh(alpha, beta)
    np.testing.assert_allclose(theta, [0, 1, 1, 3, 3, 3], atol=1e-5)
    assert float(beta[2]) == 0.0  # the breakdown after the three distinct eigenvalues
    assert theta.dtype == np.float64


def tiny():
    """(3, 4, 2), n = 26, B = 6: every call below with steps=20 shares one compiled program."""
    return small(sizes=(3, 4, 2), batch=6)


def test_chunked_products_sum_to_the_batch_s():
    net, params, X, Y = tiny()
    whole = S.eigenpairs(net, params, X, Y, k=2, steps=20)
    chunked = S.eigenpairs(net, params, X, Y, k=2, steps=20, batch_size=4)  # 4 rows, then 2
    np.testing.assert_allclose(chunked.values, whole.values, rtol=1e-5)
    assert whole.values.dtype == np.float64 and np.all(whole.residuals < 1e-5)


def test_spectra_run_without_autodiff(autodiff_forbidden):
    net, params, X, Y = tiny()
    assert np.isfinite(S.eigenpairs(net, params, X, Y, k=2, steps=20, batch_size=4).values).all()
    assert np.isfinite(S.hutchinson_trace(net, params, X, Y, probes=10).estimate)


def attributes_of_jax(source: str) -> set[str]:
    """Every ``jax.NAME`` and every name imported from a jax module."""
    tree = ast.parse(source)
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and getattr(node.value, "id", None) == "jax"
    } | {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jax")
        for alias in node.names
    }


def test_the_spectral_modules_name_no_autodiff_function():
    assert attributes_of_jax("import jax\nh = jax.hessian(f)") & AUTODIFF == {"hessian"}
    package = pathlib.Path(mbp.__file__).parent / "extensions"
    for module in ("spectra.py", "_krylov.py", "_spectral_programs.py"):
        found = attributes_of_jax((package / module).read_text()) & AUTODIFF
        assert not found, f"{module} uses {found}"


def test_preconditioned_eigenvalues_are_those_of_the_scaled_operator():
    """P = 4: the eigenvalues of P^{-1/2} A P^{-1/2} are A's divided by 4."""
    net, params, X, Y = tiny()
    four = jax.tree.map(lambda t: jnp.full_like(t, 4.0), params)
    plain = S.eigenpairs(net, params, X, Y, k=2, steps=20)
    scaled = S.eigenpairs(net, params, X, Y, k=2, steps=20, preconditioner=four)
    np.testing.assert_allclose(scaled.values, plain.values / 4, rtol=1e-5)


def test_the_smoothed_density_integrates_to_one_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    from manualbp.tools.plot_spectra import default_grid, plot_density

    density = S.SpectralDensity(np.array([[0.0, 1.0], [0.5, 2.0]]), np.array([[0.5, 0.5]] * 2))
    grid, width = default_grid(density, 2000)
    assert np.trapezoid(density.on_grid(grid, width), grid) == pytest.approx(1, abs=1e-3)
    mean, _ = density.moments((1,))
    assert mean[0] == pytest.approx((0.5 + 1.25) / 2)
    path = plot_density(density, tmp_path / "density.png", title="two probes")
    assert path.stat().st_size > 1000


def no_second_derivative():
    tanh = mbp.get_activation("tanh")
    return Activation("tanh_no_deriv2", tanh.fn, tanh.deriv)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda n, p, X, Y: S.eigenpairs(n, p, X, Y, k=27), "k: expected at most the parameter"),
        (lambda n, p, X, Y: S.hutchinson_trace(n, p, X, Y, probes=0), "probes: expected an"),
        (lambda n, p, X, Y: S.eigenpairs(n, p, X[:0], Y[:0]), "the data set has no examples"),
        (lambda n, p, X, Y: S.eigenpairs(n, p, X, Y, operator="fisher"), "operator: expected one"),
    ],
)
def test_bad_input_gets_one_clear_line(call, message):
    net, params, X, Y = tiny()  # n = 26
    with pytest.raises(ValueError, match=message) as info:
        call(net, params, X, Y)
    assert "\n" not in str(info.value)


def test_the_hessian_needs_second_derivatives_and_the_ggn_does_not():
    net, params, X, Y = small(hidden=no_second_derivative(), sizes=(3, 4, 2))
    with pytest.raises(ValueError, match="has no σ''"):
        S.eigenpairs(net, params, X, Y)
    assert np.isfinite(S.eigenpairs(net, params, X, Y, operator="ggn", steps=20).values).all()


def test_a_non_finite_product_is_one_clear_line():
    net, params, X, Y = tiny()
    params = (params[0]._replace(W=params[0].W.at[0, 0].set(jnp.nan)), params[1])
    with pytest.raises(FloatingPointError, match="hessian product is not finite"):
        S.eigenpairs(net, params, X, Y, steps=20)
    with pytest.raises(FloatingPointError, match="product is not finite"):
        S.hutchinson_trace(net, params, X, Y, probes=10)


def test_verify_curvature_gains_the_spectra_rows_and_says_why_the_hessian_is_left_out():
    # test_curvature's net without σ'' (sizes, batch, keys): the curvature rows' programs
    # are that test's, loaded from the compilation cache; the spectra rows are this test's.
    net, params, X, Y = small(hidden=no_second_derivative(), sizes=(4, 5, 3))
    report = mbp.verify_curvature(net, params, X, Y, spectra=True)
    spectra = [row for row in report.rows if row.check.startswith("spectra: ")]
    judged = [row for row in spectra if row.judged]
    assert judged and all(row.passed for row in judged), str(report)
    assert {row.equation for row in judged} == {22, 23, 24, 25}
    (left_out,) = [row for row in spectra if not row.judged]
    assert left_out.check == "spectra: Hessian" and "σ''" in left_out.diagnosis
    assert report.inconclusive, str(report)  # nothing judged failed; σ'' rows could not run
