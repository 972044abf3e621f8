"""The per-example extensions, equations (5)–(9): values, agreement with autodiff, mutations.

Small nets only; the whole catalogue runs under ``-m slow``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import manualbp as mbp
from manualbp.backprop import backward_with_deltas, delta_L_batch
from manualbp.data import random_batch
from manualbp.extensions import per_example
from manualbp.verification.extensions import CLIPS, catalogue_extensions

NET = mbp.MLP((5, 7, 6, 3), hidden="tanh", output="softmax", loss="cross_entropy")


def case(net=NET, batch=8, dtype=jnp.float32):
    key_params, key_data = jax.random.split(jax.random.key(0))
    params = net.init(key_params, dtype, scheme="nielsen_scaled")
    X, Y = random_batch(net, key_data, batch, dtype)
    return params, X, Y


# --- a case small enough to do by hand ---------------------------------------------------

# One layer, identity output, E = ½(ŷ − y)², so δ_b = ŷ_b − y_b and g_b = (δ_b a_b, δ_b).
# W = [1, 0], b = 0. Example 1: x = (1, 2), y = 0: ŷ = 1, δ = 1, g_1 = ((1, 2), 1).
# Example 2: x = (0, 1), y = 3: ŷ = 0, δ = −3, g_2 = ((0, −3), −3).
TINY = mbp.MLP((2, 1), output="identity", loss="mse")
TINY_PARAMS = (mbp.Layer(jnp.array([[1.0, 0.0]]), jnp.array([0.0])),)
TINY_X = jnp.array([[1.0, 2.0], [0.0, 1.0]])
TINY_Y = jnp.array([[0.0], [3.0]])


def test_hand_computed_case():
    (l2,) = mbp.extensions.batch_l2(TINY, TINY_PARAMS, TINY_X, TINY_Y)
    # (5): ‖δ‖²‖a‖² = 1·(1 + 4) = 5 and 9·(0 + 1) = 9; ‖δ‖² = 1 and 9.
    np.testing.assert_allclose(l2.W, [5.0, 9.0])
    np.testing.assert_allclose(l2.b, [1.0, 9.0])
    (sgs,) = mbp.extensions.sum_grad_squared(TINY, TINY_PARAMS, TINY_X, TINY_Y)
    # (6): (1, 4) + (0, 9) = (1, 13); 1 + 9 = 10.
    np.testing.assert_allclose(sgs.W, [[1.0, 13.0]])
    np.testing.assert_allclose(sgs.b, [10.0])
    (var,) = mbp.extensions.variance(TINY, TINY_PARAMS, TINY_X, TINY_Y)
    # (7): mean g = (0.5, −0.5), mean g² = (0.5, 6.5): (0.25, 6.25); b: 5 − (−1)² = 4.
    np.testing.assert_allclose(var.W, [[0.25, 6.25]])
    np.testing.assert_allclose(var.b, [4.0])
    E, (clipped,) = mbp.extensions.clipped_value_and_grad(
        TINY, TINY_PARAMS, TINY_X, TINY_Y, l2_clip=3.0
    )
    # (8): ‖g_1‖ = √6 < 3, c_1 = 1; ‖g_2‖ = √18, c_2 = 3/√18 = 1/√2. (9): the mean of c_b g_b.
    c2 = 1 / math.sqrt(2)
    np.testing.assert_allclose(clipped.W, [[0.5, (2 - 3 * c2) / 2]], atol=1e-6)
    np.testing.assert_allclose(clipped.b, [(1 - 3 * c2) / 2], atol=1e-6)
    np.testing.assert_allclose(E, (0.5 + 4.5) / 2)


# --- agreement with autodiff --------------------------------------------------------------


@pytest.mark.parametrize(
    "hidden, output, loss",
    [
        ("tanh", "softmax", "cross_entropy"),
        ("relu", "identity", "mse"),
        ("gelu", "sigmoid", "binary_cross_entropy"),
    ],
)
def test_extensions_agree_with_autodiff(dtype, hidden, output, loss):
    net = mbp.MLP((5, 7, 6, 3), hidden=hidden, output=output, loss=loss, fused=False)
    report = mbp.verify_extensions(net, *case(net, dtype=dtype))
    assert report.passed, str(report)
    # 3 quantities and the clipped gradient at 3 clips, × (W, b) × 3 layers, and Ē
    assert len(report.rows) == (3 + 3) * 2 * 3 + 1
    assert report.meta["dtype"] == jnp.dtype(dtype).name


def test_float64_option_runs_in_float64():
    report = mbp.verify_extensions(NET, *case())
    report64 = mbp.verify_extensions(NET, *case(), float64=True)
    assert report64.passed and report64.meta["dtype"] == "float64"
    assert max(r.rel_err for r in report64.rows) < 1e-12 < max(r.rel_err for r in report.rows)


@pytest.mark.slow
@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_whole_catalogue_agrees(dtype_name):
    reports = catalogue_extensions(jnp.dtype(dtype_name))
    failed = [r.verdict() for r in reports if not r.passed]
    assert not failed, failed


def test_per_example_deltas_are_the_batched_backwards():
    """The Δ^l the extensions use are section 5's, with Δ^L unscaled: not the fast form's."""
    params, X, Y = case()
    Y = mbp.network.as_targets(NET, Y, jnp.float32)
    _, _, deltas = backward_with_deltas(NET, params, X, Y)
    _, _, ext_deltas = backward_with_deltas(NET, params, X, Y, per_example.NORMS)
    for a, b in zip(deltas, ext_deltas, strict=True):
        np.testing.assert_array_equal(a, b)
    fwd = mbp.network.forward_pass_batch(NET, params, X)
    np.testing.assert_array_equal(ext_deltas[-1], delta_L_batch(NET, fwd.z[-1], fwd.a[-1], Y))


def test_extensions_never_start_autodiff(autodiff_forbidden):
    params, X, Y = case()
    for fn in (mbp.extensions.batch_l2, mbp.extensions.sum_grad_squared, mbp.extensions.variance):
        assert all(jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(fn(NET, params, X, Y)))
    E, grads = mbp.extensions.clipped_value_and_grad(NET, params, X, Y, l2_clip=0.1)
    assert jnp.isfinite(E) and all(jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads))
    with pytest.raises(autodiff_forbidden):
        mbp.verify_extensions(NET, params, X, Y)  # the reference is autodiff


def test_zero_gradient_is_kept_with_clip_factor_one():
    """‖g_b‖ = 0 (ŷ = y exactly under mse): c_b = 1, no NaN, and it adds nothing."""
    net = mbp.MLP((3, 4, 2), hidden="tanh", output="identity", loss="mse")
    params, X, Y = case(net, batch=4)
    Y = Y.at[0].set(mbp.forward(net, params, X)[0])
    (l2_first, *_) = mbp.extensions.batch_l2(net, params, X, Y)
    assert l2_first.W[0] == 0 and l2_first.b[0] == 0
    _, clipped = mbp.extensions.clipped_value_and_grad(net, params, X, Y, l2_clip=1e-3)
    _, rest = mbp.extensions.clipped_value_and_grad(net, params, X[1:], Y[1:], l2_clip=1e-3)
    for g, r in zip(jax.tree.leaves(clipped), jax.tree.leaves(rest), strict=True):
        assert jnp.all(jnp.isfinite(g))
        np.testing.assert_allclose(g, r * 3 / 4, rtol=1e-5, atol=1e-9)


def test_a_large_clip_gives_the_plain_gradient():
    params, X, Y = case()
    E, clipped = mbp.extensions.clipped_value_and_grad(NET, params, X, Y, l2_clip=1e6)
    E_ref, grads = mbp.manual_value_and_grad(NET, params, X, Y)
    np.testing.assert_allclose(E, E_ref, rtol=1e-6)
    for g, r in zip(jax.tree.leaves(clipped), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-7)


def test_usable_inside_jit_and_in_params_dtype():
    params, X, Y = case()
    l2 = jax.jit(lambda p: mbp.extensions.batch_l2(NET, p, X, Y))(params)
    assert [x.shape for x in jax.tree.leaves(l2)] == [(8,)] * 6
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(l2))


@pytest.mark.parametrize(
    "l2_clip, error", [(0.0, ValueError), (-1.0, ValueError), (math.inf, ValueError), ("1", None)]
)
def test_bad_clip_is_rejected(l2_clip, error):
    params, X, Y = case()
    if error is None:  # a string that reads as a number is a number
        mbp.extensions.clipped_value_and_grad(NET, params, X, Y, l2_clip=l2_clip)
        return
    with pytest.raises(error, match="l2_clip"):
        mbp.extensions.clipped_value_and_grad(NET, params, X, Y, l2_clip=l2_clip)


def test_bad_batch_is_rejected():
    params, X, Y = case()
    with pytest.raises(ValueError, match="X: expected shape"):
        mbp.extensions.batch_l2(NET, params, X[:, :4], Y)


# --- a wrong formula is caught, localized and diagnosed --------------------------------------


@pytest.fixture
def mutate(monkeypatch):
    """Replace a name in per_example for one test; its compiled programs are dropped around it.

    Only per_example's own: the autodiff reference stays compiled from test to test.
    """
    programs = (per_example._per_layer.program, per_example._clipped_value_and_grad.program)

    def replace(name, value):
        monkeypatch.setattr(per_example, name, value)
        for program in programs:
            program.clear_cache()

    yield replace
    for program in programs:
        program.clear_cache()


def failures(report):
    return {(r.check, r.layer): r.diagnosis for r in report.failures}


def test_missing_square_in_the_norms_is_caught(mutate):
    def not_squared(delta, a_prev):
        return jnp.linalg.norm(delta, axis=1) * jnp.linalg.norm(a_prev, axis=1)

    mutate("NORMS", per_example.NORMS._replace(weight_grad=not_squared))
    found = failures(mbp.verify_extensions(NET, *case()))
    for l in (2, 3, 4):
        assert found[("batch_l2 W", l)].startswith("not squared")
        assert ("batch_l2 b", l) not in found
        assert ("sum_grad_squared W", l) not in found and ("variance W", l) not in found


def test_fast_form_deltas_are_caught_as_a_power_of_B(mutate):
    B = 8
    scaled = per_example.NORMS._replace(output_delta=lambda *args: delta_L_batch(*args) / B)
    mutate("NORMS", scaled)
    found = failures(mbp.verify_extensions(NET, *case(batch=B)))
    for l in (2, 3, 4):
        for part in "Wb":
            assert found[(f"batch_l2 {part}", l)].startswith("Δ^l scaled by 1/B")


def test_a_mean_for_a_sum_is_caught_at_its_layer_only(mutate):
    """Wrong only where N_l = 6 (layer l = 3): the report names that layer alone."""
    right = per_example.weight_sum_squared

    def wrong_at_layer_3(delta, a_prev):
        scale = 1 / delta.shape[0] if delta.shape[1] == 6 else 1
        return right(delta, a_prev) * scale

    mutate("SUM_SQUARED", per_example.SUM_SQUARED._replace(weight_grad=wrong_at_layer_3))
    found = failures(mbp.verify_extensions(NET, *case()))
    assert found == {("sum_grad_squared W", 3): "averaged, not summed: off by ×1/B"}


def test_variance_without_the_mean_is_caught(mutate):
    mutate(
        "VARIANCE",
        per_example.VARIANCE._replace(
            bias_grad=lambda delta: jnp.mean(delta * delta, axis=0),
        ),
    )
    found = failures(mbp.verify_extensions(NET, *case()))
    assert set(found) == {("variance b", l) for l in (2, 3, 4)}
    assert all(d.startswith("mean not subtracted") for d in found.values())


CLIP_NAMES = tuple(CLIPS)


def clipped_checks(part, clips=CLIP_NAMES):
    return {f"clipped (C {name}) {part}" for name in clips}


def test_clipped_sum_for_the_mean_is_off_by_B(mutate):
    mutate("clipped_weight_grad", lambda c, delta, a_prev: (c[:, None] * delta).T @ a_prev)
    found = failures(mbp.verify_extensions(NET, *case()))
    assert set(found) == {(check, l) for check in clipped_checks("W") for l in (2, 3, 4)}
    # Named as the sum, or by its factor: B = 8 (where the 8× result rounds beyond the
    # allowance of the right one, the named form no longer matches within it).
    assert all("off by ×B" in d or "off by ×8" in d for d in found.values())


def test_clipping_per_layer_is_caught(mutate):
    def per_layer_factors(norms, l2_clip, dtype):
        # Wrong: the norm of the last layer alone stands in for the norm over all layers.
        return l2_clip / jnp.maximum(l2_clip, jnp.sqrt(norms[-1].W + norms[-1].b))

    mutate("clip_factors", per_layer_factors)
    found = failures(mbp.verify_extensions(NET, *case()))
    assert {check for check, _ in found} <= clipped_checks("W") | clipped_checks("b")
    below = "clipped (C below every ‖g_b‖) W"
    assert "clipped per layer, not over all layers together" in found[(below, 4)]
    assert (below, 2) in found


def test_a_clip_of_its_own_is_caught(mutate):
    """Clipping at the batch's median norm, whatever l2_clip says: wrong at the other clips."""
    right = per_example.clip_factors

    def median_clip(norms, l2_clip, dtype):
        total = sum(n.W + n.b for n in norms)
        return right(norms, jnp.sqrt(jnp.median(total)), dtype)

    mutate("clip_factors", median_clip)
    found = failures(mbp.verify_extensions(NET, *case()))
    assert {check for check, _ in found} & clipped_checks("W")


@pytest.mark.parametrize(
    "dtype, scale", [(jnp.float32, 1e15), (jnp.float32, 1e-20), (jnp.float64, 1e150)]
)
def test_extreme_scales_never_raise_and_never_fail_a_correct_derivation(dtype, scale):
    net = mbp.MLP((5, 7, 6, 3), "relu", "identity", "mse")
    with jax.enable_x64(dtype == jnp.float64):
        params, X, Y = case(net, dtype=dtype)
        X, Y = X * scale, Y * scale
        report = mbp.verify_extensions(net, params, X, Y, float64=dtype == jnp.float64)
    assert report.passed or report.inconclusive, str(report)
    for row in report.rows:
        assert row.passed or row.diagnosis, str(report)  # every row not judged says why
