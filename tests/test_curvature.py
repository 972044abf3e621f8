"""Curvature by hand, equations (10)–(19): agreement with autodiff, no autodiff, caught when broken.

* Across the output/loss catalogue, in float32 and float64, every row of
  `verify_curvature` passes (teacher-forced steps and end-to-end quantities),
  judged against a float64 reference by the same-dtype witness (float64: none).
* The public functions equal the composed quantities and never call autodiff.
* The Monte Carlo estimates converge to `diag_ggn` (unbiased), and a biased
  sampler is seen doing otherwise.
* Each equation, broken on purpose, fails at its own equation and layer only
  (and in the end-to-end rows that use it).
* A one-weight net with the arithmetic visible; input checks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_grads_close

import manualbp as mbp
from manualbp import activations, losses
from manualbp.data import random_batch
from manualbp.extensions import curvature as C
from manualbp.extensions.curvature_equations import CURVATURE
from manualbp.losses import OUTPUT_LOSS_PAIRS
from manualbp.verification import witnesses
from manualbp.verification.curvature import verify_curvature

CATALOGUE = [(out, loss, True) for out, loss in OUTPUT_LOSS_PAIRS] + [
    ("softmax", "cross_entropy", False),
    ("sigmoid", "binary_cross_entropy", False),
]
HIDDEN = list(activations.HIDDEN_ACTIVATIONS)


def catalogue_cases(catalogue, hidden) -> list[tuple]:
    """(output, loss, fused, hidden): both lists in turn, until the longer one is used up.

    Every catalogue entry and every hidden activation appears at least once, so a new
    activation (or output/loss pair) gets its own case, without the full product.
    """
    n = max(len(catalogue), len(hidden))
    return [(*catalogue[i % len(catalogue)], hidden[i % len(hidden)]) for i in range(n)]


CASES = catalogue_cases(CATALOGUE, HIDDEN)


def small(output="softmax", loss="cross_entropy", fused=True, hidden="tanh", dtype=jnp.float32):
    net = mbp.MLP((4, 5, 6, 3), hidden=hidden, output=output, loss=loss, fused=fused)
    params = net.init(jax.random.key(1), dtype)
    X, Y = random_batch(net, jax.random.key(2), 6, dtype)
    return net, params, X, Y


def direction(params, seed=3):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        tree, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
    )


FAST = {
    ("softmax", "cross_entropy", True),
    ("sigmoid", "cross_entropy", True),
}
"""Catalogue entries run by default (fused logits; σ^L with σ'' and a non-natural loss on ŷ);
each verification is one compiled program of a few seconds, so the rest run with -m slow."""


def marked(params, fast):
    """The params, those not ``fast`` marked slow."""
    slow = pytest.mark.slow
    return [
        p if fast(p) else pytest.param(*(p if isinstance(p, tuple) else (p,)), marks=slow)
        for p in params
    ]


@pytest.mark.parametrize(
    "output,loss,fused,hidden",
    marked(
        CASES,
        lambda p: tuple(p[:3]) in FAST,
    ),
    ids=lambda x: str(x),
)
def test_every_row_agrees_across_the_catalogue(output, loss, fused, hidden, dtype):
    net, params, X, Y = small(output, loss, fused, hidden, dtype)
    report = verify_curvature(net, params, X, Y, key=jax.random.key(4))
    assert report.passed, str(report)
    equations = {row.equation for row in report.rows}
    assert set(range(11, 20)) - {16} <= equations
    assert report.meta["reference"] == witnesses.reference_note(dtype)
    if dtype == jnp.float64:  # no higher precision: the reference is the witness
        # (the statistical rows judge a mean in standard errors: no witness, no ε units)
        assert all(row.witness_eps == 0 for row in report.rows if "statistical" not in row.check)
    else:
        assert any(row.witness_eps > 0 for row in report.rows)


def test_the_catalogue_cases_cover_every_activation_and_pair():
    """Each built-in σ is a hidden or an output activation of some case, each pair is used."""
    used = {name for output, _, _, hidden in CASES for name in (output, hidden)}
    assert set(activations.ACTIVATIONS) <= used
    assert {case[:3] for case in CASES} == set(CATALOGUE)
    # One more hidden activation than catalogue entries: it still gets a case of its own.
    grown = catalogue_cases(CATALOGUE[:2], ["a", "b", "c"])
    assert [case[-1] for case in grown] == ["a", "b", "c"]
    assert [case[:3] for case in grown] == [CATALOGUE[0], CATALOGUE[1], CATALOGUE[0]]


def without_second_derivative(registry) -> list[str]:
    """The activations in ``registry`` that carry no σ'' (``deriv2``)."""
    return [name for name, act in registry.items() if act.deriv2 is None]


def test_every_built_in_activation_has_its_second_derivative():
    """The README promises σ'' for every built-in; the Hessian's recursion (17) needs it."""
    assert without_second_derivative(activations.ACTIVATIONS) == []
    lacking = activations.tanh._replace(name="tanh_no_second", deriv2=None)
    registry = {**activations.ACTIVATIONS, lacking.name: lacking}
    assert without_second_derivative(registry) == ["tanh_no_second"]


@pytest.mark.slow
def test_a_bfloat16_net_is_judged_by_its_own_witness():
    """In bfloat16 the same rule holds: a correct net passes, a broken (13) is still caught."""
    net, params, X, Y = small("sigmoid", "mse", hidden="tanh", dtype=jnp.bfloat16)
    report = verify_curvature(net, params, X, Y, key=jax.random.key(4))
    assert report.passed, str(report)
    assert "bfloat16" in report.meta["reference"]
    wrong, expected = MUTATIONS["hidden_factor"]
    broken = verify_curvature(
        net, params, X, Y, key=jax.random.key(4), equations=CURVATURE._replace(hidden_factor=wrong)
    )
    located = {(row.equation, row.layer) for row in broken.failures if row.equation is not None}
    assert located == expected, str(broken)


def test_public_functions_equal_the_composed_quantities_without_autodiff(autodiff_forbidden):
    """The public functions are the verified compositions, jitted, and never call autodiff."""
    net, params, X, Y = small("softmax", "mse", hidden="gelu")
    Yt = mbp.network.as_targets(net, Y, jnp.float32)
    v, key = direction(params), jax.random.key(5)
    public = [
        mbp.extensions.diag_ggn(net, params, X, Y),
        mbp.extensions.diag_ggn_mc(net, params, X, Y, key=key, samples=3),
        mbp.extensions.kflr(net, params, X, Y),
        mbp.extensions.kfac(net, params, X, Y, key=key),
        mbp.extensions.diag_hessian(net, params, X, Y),
        mbp.extensions.hvp(net, params, X, Y, v),
        mbp.extensions.ggn_vp(net, params, X, Y, v),
    ]

    @jax.jit
    def composed(params, v):
        return [
            C.diag_ggn_layers(net, params, X, Yt),
            C.diag_ggn_layers(net, params, X, Yt, key=key, samples=3),
            C.kron_layers(net, params, X, Yt),
            C.kron_layers(net, params, X, Yt, key=key),
            C.diag_hessian_layers(net, params, X, Yt),
            C.hvp_layers(net, params, X, Yt, v),
            C.ggn_vp_layers(net, params, X, Yt, v),
        ]

    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
        public,
        composed(params, v),
    )
    with pytest.raises(autodiff_forbidden):
        jax.grad(lambda w: jnp.sum(w**2))(jnp.ones(2))


def test_kflr_is_the_ggn_block_for_one_example():
    """G ⊗ A equals Jᵀ H J for W^l of a single example, from the dense GGN."""
    net, params, X, Y = small("softmax", "cross_entropy")
    X, Y = X[:1], Y[:1]
    Yt = mbp.network.as_targets(net, Y, jnp.float32)

    def logits(W, k):
        q = list(params)
        q[k] = q[k]._replace(W=W)
        return mbp.network.forward_pass_batch(net, tuple(q), X).z[-1][0]

    z_L = mbp.network.forward_pass_batch(net, params, X).z[-1][0]
    H = net.fused_loss.hessian(z_L, Yt[0])
    for k, (A, G) in enumerate(mbp.extensions.kflr(net, params, X, Y)):
        J = jax.jacrev(logits)(params[k].W, k).reshape(3, -1)
        np.testing.assert_allclose(jnp.kron(G, A), J.T @ H @ J, rtol=1e-4, atol=1e-6)


# --- Monte Carlo: unbiased, converging to diag_ggn ------------------------------------


def mc_error(net, params, X, Y, samples, eqs=CURVATURE, seed=0):
    Yt = mbp.network.as_targets(net, Y, jnp.float64)
    exact = C.diag_ggn_layers(net, params, X, Yt, eqs)
    estimate = C.diag_ggn_layers(net, params, X, Yt, eqs, key=jax.random.key(seed), samples=samples)
    flat = lambda t: jnp.concatenate([x.ravel() for x in jax.tree.leaves(t)])  # noqa: E731
    e, x = flat(estimate), flat(exact)
    return float(jnp.max(jnp.abs(e - x)) / jnp.max(jnp.abs(x)))


@pytest.mark.parametrize(
    "output,loss,fused",
    [
        ("softmax", "cross_entropy", True),  # categorical targets
        ("sigmoid", "binary_cross_entropy", True),  # Bernoulli targets
        ("tanh", "mse", True),  # Gaussian targets N(ŷ, I)
        ("sigmoid", "cross_entropy", True),  # no natural parameter: S_f ε
    ],
)
def test_monte_carlo_converges_to_diag_ggn(output, loss, fused):
    with jax.enable_x64():
        net, params, X, Y = small(output, loss, fused, dtype=jnp.float64)
        few, many = mc_error(net, params, X, Y, 100), mc_error(net, params, X, Y, 10_000)
    # Unbiased: the error falls like 1/√samples (×10 here); biased, it would level off.
    assert many < 0.06, many
    assert many < 0.35 * few, (few, many)


def test_a_biased_sampler_does_not_converge():
    def biased(net, key, z, a, y, samples):
        return 1.2 * CURVATURE.sampled_factor(net, key, z, a, y, samples)

    with jax.enable_x64():
        net, params, X, Y = small(dtype=jnp.float64)
        error = mc_error(net, params, X, Y, 10_000, CURVATURE._replace(sampled_factor=biased))
    assert error > 0.3  # 1.2² − 1 = 0.44, far outside the sampling error


# --- broken on purpose: caught, and at its own equation and layer --------------------


def _drop_sigma(net, z_L, M):
    return M  # σ^L' forgotten in (12)


MUTATIONS = {
    "loss_hessian": (
        lambda net, z, a, y: 2 * CURVATURE.loss_hessian(net, z, a, y),
        {(11, 4)},
    ),
    "loss_hessian_dot": (
        lambda net, z, a, y, r: CURVATURE.loss_hessian_dot(net, z, a, y, r) + 1e-2 * r,
        {(11, 4)},
    ),
    "loss_factor": (
        lambda net, z, a, y: 1.1 * CURVATURE.loss_factor(net, z, a, y),
        {(11, 4)},
    ),
    "output_factor": (_drop_sigma, {(12, 4)}),
    "hidden_factor": (lambda S, W, sp: jnp.einsum("bmc,mk->bkc", S, W), {(13, 2), (13, 3)}),
    "ggn_diag": (
        lambda S, a: CURVATURE.ggn_diag(S, jnp.sqrt(jnp.abs(a))),
        {(14, 2), (14, 3), (14, 4)},
    ),
    "kron_factors": (
        lambda S, a: (
            CURVATURE.kron_factors(S, a)[0],
            S.shape[0] * CURVATURE.kron_factors(S, a)[1],
        ),
        {(15, 2), (15, 3), (15, 4)},
    ),
    "output_hessian": (
        lambda net, z, a, y: CURVATURE.loss_hessian(net, z, a, y),  # J_σᵀ H J_σ + σ'' dropped
        {(17, 4)},
    ),
    "hidden_hessian": (
        lambda H, d, W, sp, spp: CURVATURE.hidden_hessian(H, d, W, sp, 0 * spp),
        {(17, 2), (17, 3)},
    ),
    "hessian_diag": (
        lambda H, a: CURVATURE.hessian_diag(H, jnp.sqrt(jnp.abs(a))),
        {(17, 2), (17, 3), (17, 4)},
    ),
    "r_forward": (  # v_b^l forgotten; R{a^1} = 0 comes as None
        lambda Ra, a, W, V: a @ V.W.T + (0 if Ra is None else Ra @ W.T),
        {(18, 2), (18, 3), (18, 4)},
    ),
    "r_output_delta": (
        lambda net, z, a, y, Rz: -CURVATURE.r_output_delta(net, z, a, y, Rz),
        {(19, 4)},
    ),
    "r_hidden_delta": (
        lambda Rd, d, W, V, sp, spp, Rz: CURVATURE.r_hidden_delta(Rd, d, W, V, sp, 0 * spp, Rz),
        {(19, 2), (19, 3)},
    ),
    # R{a^1} = 0: the forgotten δ R{a^{l-1}}ᵀ term shows from layer 3 on.
    "r_grad": (lambda Rd, d, a, Ra: CURVATURE.r_grad(Rd, d, a, None), {(19, 3), (19, 4)}),
}


FAST_MUTATIONS = {"hidden_factor", "hidden_hessian", "r_hidden_delta"}
"""One per backward recursion, (13), (17), (19), by default; the rest run with -m slow."""


@pytest.mark.parametrize("name", marked(list(MUTATIONS), lambda name: name in FAST_MUTATIONS))
def test_a_broken_equation_is_caught_at_its_equation_and_layer(name):
    wrong, expected = MUTATIONS[name]
    net, params, X, Y = small("sigmoid", "mse", hidden="tanh")
    report = verify_curvature(
        net, params, X, Y, key=jax.random.key(4), equations=CURVATURE._replace(**{name: wrong})
    )
    assert not report.passed
    located = {(row.equation, row.layer) for row in report.failures if row.equation is not None}
    assert located == expected, str(report)


def test_a_wrong_sigma_second_is_caught_at_its_layer_and_nowhere_upstream():
    tanh = activations.tanh
    wrong = tanh._replace(name="tanh_wrong", deriv2=lambda z: -tanh.deriv2(z))
    net = mbp.MLP((4, 5, 6, 3), hidden=(tanh, wrong), output="identity", loss="mse")
    params = net.init(jax.random.key(1))
    X, Y = random_batch(net, jax.random.key(2), 6)
    report = verify_curvature(net, params, X, Y)
    failing = {(row.check, row.layer) for row in report.failures}
    assert ("σ''", 3) in failing and ("σ''", 2) not in failing
    assert all(row.equation is None for row in report.failures)  # steps get the true σ''
    assert {check for check, _ in failing} >= {"diag_hessian vs autodiff W", "hvp vs autodiff W"}
    assert not mbp.verify_activation(wrong).passed


# --- by hand, and at the boundary -------------------------------------------------------


def test_one_weight_by_hand():
    """E = ½(w x + b − y)²: ∇²E = [[x², x], [x, 1]], the GGN equals it (linear net, mse)."""
    net = mbp.MLP((1, 1), output="identity", loss="mse")
    params = (mbp.Layer(jnp.array([[2.0]]), jnp.array([0.5])),)
    X, Y = jnp.array([[3.0]]), jnp.array([[1.0]])
    v = (mbp.Layer(jnp.array([[1.0]]), jnp.array([-2.0])),)
    (h,) = mbp.extensions.diag_hessian(net, params, X, Y)
    assert (float(h.W[0, 0]), float(h.b[0])) == (9.0, 1.0)  # x² = 9, 1
    (g,) = mbp.extensions.diag_ggn(net, params, X, Y)
    assert (float(g.W[0, 0]), float(g.b[0])) == (9.0, 1.0)
    (hv,) = mbp.extensions.hvp(net, params, X, Y, v)
    assert (float(hv.W[0, 0]), float(hv.b[0])) == (9.0 - 6.0, 3.0 - 2.0)  # [[9, 3], [3, 1]] (1, −2)
    ((A, G),) = mbp.extensions.kflr(net, params, X, Y)
    assert (float(A[0, 0]), float(G[0, 0])) == (9.0, 1.0)


def test_closed_form_hessian_products_equal_the_loss_hessians():
    """Each loss's H r, written without forming H, is its own H times r; a loss with a
    Hessian but no closed form gets H r from the matrix, to the same hvp and ggn_vp."""
    k1, k2, k3 = jax.random.split(jax.random.key(5), 3)
    y_hat = jax.random.uniform(k1, (7,), minval=0.05, maxval=0.95)
    y = jax.random.uniform(k2, (7,))
    r = jax.random.normal(k3, (7,))
    records = [(loss, y_hat) for loss in losses.LOSSES.values()]
    records += [(fused, 3 * r[::-1]) for fused in losses._FUSED.values()]  # f = z^L
    for record, f in records:
        np.testing.assert_allclose(
            record.hessian_dot(f, y, r), record.hessian(f, y) @ r, rtol=2e-6, atol=1e-6
        )
    net, params, X, Y = small("sigmoid", "mse", hidden="tanh")
    matrix_only = losses.mse._replace(name="mse_matrix", hessian_dot=None)
    plain = mbp.MLP(net.sizes, hidden="tanh", output="sigmoid", loss=matrix_only)
    v = direction(params)
    for quantity in (mbp.extensions.hvp, mbp.extensions.ggn_vp):
        ours, theirs = quantity(net, params, X, Y, v), quantity(plain, params, X, Y, v)
        assert_grads_close(ours, theirs, net.sizes, X.shape[0], jnp.float32)


def test_inputs_are_checked():
    net, params, X, Y = small()
    v = direction(params)
    with pytest.raises(ValueError, match="v\\[0\\].W"):
        mbp.extensions.hvp(net, params, X, Y, (v[0]._replace(W=v[0].W.T), *v[1:]))
    with pytest.raises(ValueError, match="tuple of 3"):
        mbp.extensions.ggn_vp(net, params, X, Y, v[:2])
    with pytest.raises(ValueError, match="samples"):
        mbp.extensions.diag_ggn_mc(net, params, X, Y, key=jax.random.key(0), samples=0)
    with pytest.raises(TypeError, match="key"):
        mbp.extensions.kfac(net, params, X, Y, key=0)
    no_second = activations.tanh._replace(name="tanh2", deriv2=None)
    net2 = mbp.MLP((4, 5, 3), hidden=no_second, output="softmax", loss="cross_entropy")
    with pytest.raises(ValueError, match="σ''"):
        mbp.extensions.diag_hessian(net2, net2.init(jax.random.key(0)), X, Y)
    no_hessian = losses.mse._replace(name="mse2", hessian=None)
    net3 = mbp.MLP((4, 5, 3), loss=no_hessian)
    with pytest.raises(ValueError, match="Hessian"):
        mbp.extensions.diag_ggn(net3, net3.init(jax.random.key(0)), X, jnp.zeros((6, 3)))


def test_a_net_too_large_for_the_dense_references_is_refused_clearly():
    net = mbp.MLP((784, 30, 10), hidden="sigmoid", output="softmax", loss="cross_entropy")
    params = net.init(jax.random.key(0))
    X = jnp.zeros((4, 784))
    Y = jnp.zeros((4,), jnp.int32)
    with pytest.raises(ValueError, match=r"at most 2048 entries.*got 23520 entries"):
        verify_curvature(net, params, X, Y)


# --- the hard classes ----------------------------------------------------------------------


def test_a_confident_softmax_classifier_passes_in_float64():
    # The catalogue's float64 softmax case (leaky_relu hidden): only the parameters differ,
    # so its compiled program is that case's, loaded from the cache, not compiled again.
    with jax.enable_x64():
        net, params, X, Y = small(hidden="leaky_relu", dtype=jnp.float64)
        params = (*params[:-1], params[-1]._replace(W=params[-1].W * 30))
        report = verify_curvature(net, params, X, Y, key=jax.random.key(4))
    assert report.passed or report.inconclusive, str(report)
    assert all("not resolved" in r.diagnosis for r in report.failures), str(report)


def test_an_activation_without_sigma_second_skips_only_the_rows_that_need_it():
    tanh3 = mbp.Activation("tanh3", jnp.tanh, activations.tanh.deriv)
    net = mbp.MLP((4, 5, 3), tanh3, "softmax", "cross_entropy")
    params = net.init(jax.random.key(1))
    X, Y = random_batch(net, jax.random.key(2), 6)
    report = verify_curvature(net, params, X, Y)
    assert report.inconclusive, str(report)
    (skipped,) = report.failures
    assert "no σ''" in skipped.diagnosis and "'tanh3'" in skipped.diagnosis
    assert {12, 13, 14, 15, 18} <= {r.equation for r in report.rows}


def test_monte_carlo_that_estimates_the_wrong_thing_is_caught_statistically():
    def not_scaled(net, key, z, a, y, samples):
        return CURVATURE.sampled_factor(net, key, z, a, y, samples) * jnp.sqrt(samples)

    # The catalogue's float32 softmax case (leaky_relu hidden): its float64 reference
    # program, which the sampled factor under test does not enter, is loaded from the cache.
    net, params, X, Y = small(hidden="leaky_relu")
    wrong = CURVATURE._replace(sampled_factor=not_scaled)
    report = verify_curvature(net, params, X, Y, key=jax.random.key(4), equations=wrong)
    failing = {r.check for r in report.failures}
    assert failing and all("statistical" in check for check in failing), str(report)
    assert all(r.diagnosis.startswith("biased") for r in report.failures)
