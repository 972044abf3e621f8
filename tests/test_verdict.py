"""The verdict at its edges: correct nets pass, the misses it once had are caught, NaN never passes.

Small shapes throughout; scripts/verdict_sweep.py runs the same questions at full size.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import numpy_case

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from verdict_classes import nielsen_loop  # noqa: E402  (the sweep's correct per-example loop)

import manualbp as mbp
from manualbp import backprop, losses, tolerance
from manualbp.network import Layer
from manualbp.tools.cli import main as cli_main
from manualbp.verification.blocks import NULL_DIRECTION
from manualbp.verification.diagnosis import diagnose


def run(net, dtype=jnp.float32, batch=6, scale=1.0, seed=0, **options):
    with jax.enable_x64(dtype == jnp.float64):
        params, X, Y = numpy_case(net, seed, batch, dtype)
        X = (X.astype(jnp.float32) * scale).astype(dtype)
        return mbp.verify(net, params, X, Y, **options)


def failing_equations(report):
    return {(r.equation, r.layer) for r in report.failures if r.equation is not None}


# --- correct nets at the edges pass ----------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize(
    "hidden, output, loss", [("tanh", "softmax", "mse"), ("sigmoid", "tanh", "mse")]
)
def test_saturated_nets_pass(hidden, output, loss, dtype):
    report = run(mbp.MLP((4, 6, 5, 3), hidden, output, loss), dtype, scale=1e3)
    assert report.passed, str(report)


@pytest.mark.parametrize("sizes", [(1, 1, 1), (3, 1, 1, 2)])
def test_width_one_passes(sizes):
    for hidden in ("tanh", "relu"):
        assert run(mbp.MLP(sizes, hidden, "identity", "mse"), batch=1).passed


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_16_bit_nets_pass(dtype):
    for output, loss in (("softmax", "cross_entropy"), ("identity", "mse")):
        report = run(mbp.MLP((4, 6, 5, 3), "tanh", output, loss), dtype)
        assert report.passed, str(report)


def test_a_large_batch_with_small_widths_passes():
    assert run(mbp.MLP((3, 4, 2), "elu", "sigmoid", "binary_cross_entropy"), batch=1024).passed


def test_a_forward_pass_that_overflows_is_inconclusive_not_wrong():
    net = mbp.MLP((4, 8, 3), "relu", "identity", "mse")
    params, X, Y = numpy_case(net, 0, 4, jnp.float16)
    params = (Layer(params[0].W * 1e4, params[0].b), params[1])
    report = mbp.verify(net, params, X * 100, Y)
    assert report.inconclusive and report.verdict().startswith("INCONCLUSIVE")
    assert "overflows in float16" in report.rows[0].diagnosis


# --- the misses are caught -----------------------------------------------------------


def mutated(**equations):
    return backprop.EQUATIONS._replace(**equations)


def test_equation_2_off_by_a_thousandth_in_float32():
    wrong = mutated(weight_grad=lambda d, a: 1.001 * backprop.weight_grad_batch(d, a))
    report = run(
        mbp.MLP((16,) * 5 + (4,), "tanh", "softmax", "cross_entropy"), batch=512, equations=wrong
    )
    assert failing_equations(report) == {(2, l) for l in range(2, 7)}


def one_entry_off(net, params, X, Y):
    E, grads, deltas = backprop.backward_with_deltas(net, params, X, Y)
    W = grads[1].W
    i, j = np.unravel_index(int(jnp.argmax(jnp.abs(W))), W.shape)
    grads = (grads[0], grads[1]._replace(W=W.at[i, j].multiply(1 + 1e-4)), *grads[2:])
    return E, grads, deltas


def test_one_entry_of_dE_dW3_off_by_1e_4_in_float32():
    report = run(
        mbp.MLP((16, 16, 16, 4), "tanh", "identity", "mse"), batch=256, backward=one_entry_off
    )
    assert failing_equations(report) == {(2, 3)}


def test_example_0_dropped_from_the_sums_of_2_and_3():
    wrong = mutated(
        weight_grad=lambda d, a: (d[1:].T @ a[1:]) / d.shape[0],
        bias_grad=lambda d: jnp.sum(d[1:], axis=0) / d.shape[0],
    )
    report = run(mbp.MLP((8, 8, 8, 3), "tanh", "identity", "mse"), batch=512, equations=wrong)
    assert failing_equations(report) == {(eq, l) for eq in (2, 3) for l in (2, 3, 4)}


def test_bfloat16_catches_a_doubled_equation_2_and_a_missing_sigma_prime_at_every_layer():
    net = mbp.MLP((8,) * 6 + (3,), "tanh", "identity", "mse")
    doubled = mutated(weight_grad=lambda d, a: 2 * backprop.weight_grad_batch(d, a))
    report = run(net, jnp.bfloat16, batch=32, equations=doubled)
    assert failing_equations(report) == {(2, l) for l in range(2, 8)}
    dropped = mutated(hidden_delta=lambda d, W, sp: d @ W)
    report = run(net, jnp.bfloat16, batch=32, equations=dropped)
    assert failing_equations(report) == {(1, l) for l in range(2, 7)}


# --- non-finite values never pass ----------------------------------------------------


def test_an_all_nan_loss_never_passes():
    nan_loss = mbp.Loss(
        "nan", lambda y_hat, y: jnp.sum(y_hat) * jnp.nan, lambda y_hat, y: y_hat * jnp.nan
    )
    assert not mbp.verify_loss(nan_loss).passed
    report = run(mbp.MLP((3, 4, 2), "tanh", "identity", nan_loss))
    assert not report.passed
    assert "not finite in float64 either" in report.failures[0].diagnosis


def test_an_all_nan_activation_never_passes():
    nan_act = mbp.Activation("nan", lambda z: z * jnp.nan, lambda z: z * jnp.nan)
    assert not mbp.verify_activation(nan_act).passed


def test_a_nan_in_the_manual_derivative_fails_and_says_where_it_arose():
    nan_tanh = mbp.Activation(
        "tanh", jnp.tanh, lambda z: jnp.where(z > 0, jnp.nan, 1 - jnp.tanh(z) ** 2)
    )
    report = run(mbp.MLP((3, 5, 2), nan_tanh, "identity", "mse"))
    row = next(r for r in report.failures if r.check == "σ'")
    assert row.judged and "arises here" in row.diagnosis
    delta_row = next(r for r in report.failures if r.check == "δ vs autodiff" and r.layer == 2)
    assert delta_row.judged and not delta_row.passed


# --- a more accurate σ' passes ---------------------------------------------------------

TANH_SECH = mbp.Activation("tanh_sech", jnp.tanh, lambda z: 1 / jnp.cosh(z) ** 2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_a_sigma_prime_more_accurate_than_autodiff_passes(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        assert mbp.verify_activation(TANH_SECH, dtype).passed


def test_the_cli_passes_tanh_sech(tmp_path, monkeypatch, capsys):
    (tmp_path / "mine.py").write_text(
        "import jax.numpy as jnp, manualbp as mbp\n"
        "tanh_sech = mbp.Activation('tanh_sech', jnp.tanh, lambda z: 1 / jnp.cosh(z) ** 2)\n"
    )
    monkeypatch.chdir(tmp_path)
    assert cli_main(["verify", "--sizes", "3,4,2", "--hidden", "mine:tanh_sech"]) == 0
    capsys.readouterr()


# --- diagnoses that do not mislead ---------------------------------------------------


def test_no_factor_of_one_and_no_vanishing_factor():
    assert diagnose([1.5], [1.0]) == ""  # one number fits any factor
    assert diagnose([1.0 + 1e-9, 2.0 + 2e-9], [1.0, 2.0], allowed=1e-6) == ""
    assert diagnose([1e-43, 2e-43], [1.0, 2.0], allowed=1e-3) == "zero"
    assert diagnose([2.0, 4.0], [1.0, 2.0]) == "off by ×2"


def test_a_wrong_loss_gradient_with_identity_output_is_not_a_missing_sigma_prime():
    doubled = mbp.Loss("mse", losses.mse.fn, lambda y_hat, y: 2 * (y_hat - y))
    report = run(mbp.MLP((4, 5, 3), "tanh", "identity", doubled))
    delta_L = next(r for r in report.failures if r.equation == 4)
    assert "σ^L' missing" not in delta_L.diagnosis
    assert "wrong ∂E/∂ŷ" in delta_L.diagnosis


def transposed_backward(net, params, X, Y):
    E, grads, deltas = backprop.backward_with_deltas(net, params, X, Y)
    return E, tuple(g._replace(W=g.W.T) for g in grads), deltas


@pytest.mark.parametrize("sizes", [(3, 5, 2), (4, 4, 4)])
def test_a_transposed_equation_2_has_its_own_diagnosis(sizes):
    report = run(mbp.MLP(sizes, "tanh", "identity", "mse"), backward=transposed_backward)
    rows = [r for r in report.failures if r.equation == 2]
    assert rows and all("transposed" in r.diagnosis for r in rows)


def test_a_loss_gradient_off_along_the_direction_softmax_removes():
    shifted = mbp.Loss("ce_shifted", losses.cross_entropy.fn, lambda y_hat, y: -y / y_hat + 3.0)
    report = run(mbp.MLP((4, 5, 3), "tanh", "softmax", shifted, fused=False))
    # The loss's own grid finds its ∂E/∂ŷ wrong, as it is; in the net it is harmless.
    batch = [r for r in report.failures if "grid" not in r.check]
    assert [r.check for r in batch] == ["dE/dŷ"]
    assert batch[0].diagnosis == NULL_DIRECTION


# --- the program that trains, and finite differences --------------------------------------


def test_a_broken_fast_form_fails_manualbp_verify(monkeypatch, capsys):
    args = ["verify", "--sizes", "3,4,2"]
    assert cli_main(args) == 0
    monkeypatch.setattr(backprop, "weight_grad_sum", lambda d, a: 2 * jnp.einsum("bk,bj->kj", d, a))
    assert cli_main(args) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "∂E/∂W fast form vs autodiff" in out


def test_finite_differences_state_their_noise_and_a_kink_inside_the_step():
    net = mbp.MLP((1, 1, 1), "relu", "identity", "mse")
    params = (Layer(jnp.ones((1, 1)), -jnp.ones(1)), Layer(jnp.ones((1, 1)), jnp.zeros(1)))
    X, Y = jnp.ones((1, 1)), jnp.ones((1, 1))
    report = mbp.verify(net, params, X, Y, finite_differences=True)
    fd = [r for r in report.rows if "finite" in r.check]
    assert fd and all(r.passed for r in fd)
    assert any("kink inside the step" in r.diagnosis for r in fd)
    report = run(mbp.MLP((3, 4, 2), "tanh", "identity", "mse"), finite_differences=True)
    fd = [r for r in report.rows if "finite" in r.check]
    assert all("witness: central differences" in r.diagnosis for r in fd)
    assert all(
        r.error_eps <= r.allowance_eps and abs(r.allowance_eps - tolerance.K) < 1e-9 for r in fd
    )


@pytest.mark.slow
def test_the_quick_sweep_has_no_false_alarm_and_misses_nothing():
    import verdict_sweep

    counts, worst = verdict_sweep.false_alarms(quick=True)
    assert counts["false alarms"] == 0 and worst <= tolerance.K
    assert all(all(hits) for hits in verdict_sweep.catches(quick=True).values())


# --- the hard classes: correct derivations that must pass, wrong ones that must fail -----


def test_a_per_example_loop_over_a_large_batch_passes():
    report = run(mbp.MLP((4, 8, 3), "tanh", "identity", "mse"), batch=16384, backward=nielsen_loop)
    assert report.passed, str(report)


def test_the_sequential_witness_rounds_as_a_loop_does():
    from manualbp.verification.witnesses import sequential_mean

    terms = np.full((300, 1), 1.0)
    assert sequential_mean(terms, None, jnp.bfloat16)[0] == 256 / 300  # bfloat16 stops at 256
    assert sequential_mean(terms, None, np.float64)[0] == 1.0


CUBE = mbp.Activation("cube", lambda z: z**3 / 3, lambda z: z * z)


@pytest.mark.parametrize("seed", [11, 12, 18, 19])
def test_cancelling_output_next_to_a_large_sigma_prime_passes(seed):
    report = run(mbp.MLP((4, 7, 6, 3), CUBE, CUBE, "mse"), batch=9, seed=seed)
    assert report.passed, str(report)


def integer_case(net, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    params = tuple(
        Layer(jnp.asarray(rng.integers(-2, 3, (o, i)), dtype), jnp.zeros(o, dtype))
        for i, o in zip(net.sizes[:-1], net.sizes[1:], strict=True)
    )
    X = jnp.asarray(rng.integers(-2, 3, (6, net.sizes[0])), dtype)
    Y = jnp.asarray(rng.integers(-2, 3, (6, net.sizes[-1])), dtype)
    return params, X, Y


def test_kinks_the_batch_lands_on_are_said_not_called_wrong():
    relu_max = mbp.Activation(
        "relu_max", lambda z: jnp.maximum(z, 0), lambda z: (z > 0).astype(z.dtype)
    )
    net = mbp.MLP((4, 6, 5, 3), relu_max, "identity", "mse")
    report = mbp.verify(net, *integer_case(net))
    assert report.passed, str(report)
    assert any("kink" in r.diagnosis for r in report.rows)
    wrong = mbp.Activation("relu2", jax.nn.relu, lambda z: 2 * (z >= 0).astype(z.dtype))
    net = mbp.MLP((4, 6, 5, 3), wrong, "identity", "mse")
    assert not mbp.verify(net, *integer_case(net)).passed


def test_a_sigma_prime_cut_to_zero_in_the_tails_fails_its_grid():
    cut = mbp.Activation("t4", jnp.tanh, lambda z: jnp.where(z > 4, 0.0, 1 - jnp.tanh(z) ** 2))
    report = mbp.verify_activation(cut)
    assert [r.check for r in report.failures] == ["σ' tails"], str(report)
    assert "z = 4.5: hand 0" in report.failures[0].diagnosis


def test_a_wrong_sigma_prime_the_batch_never_reaches_is_found_on_the_grid():
    s = jax.nn.sigmoid
    forgot_2 = mbp.Activation("sig2", lambda z: s(2 * z), lambda z: s(2 * z) * (1 - s(2 * z)))
    net = mbp.MLP((4, 6, 3), forgot_2, "identity", "mse")
    params, X, Y = numpy_case(net, 0, 6, jnp.float32)
    params = (Layer(params[0].W, params[0].b - 15.0), params[1])  # the layer sits at z ≈ −15
    report = mbp.verify(net, params, X, Y)
    assert not report.passed
    assert all("grid" in r.check for r in report.failures), str(report)
    assert any(
        "off by ×0.5" in r.diagnosis and "the batch's z" in r.diagnosis for r in report.failures
    )


def test_diagnoses_say_how_in_the_users_terms():
    r = np.linspace(1.0, 2.0, 5)
    assert diagnose(r * (1 + 2.4e-4), r, 1e-9) == "off by ×(1 + 0.00024)"
    assert "rounding error" in diagnose(r + np.array([0, 0, 2e-9, 0, 0]), r, 1e-9)
    negated = mbp.Activation("neg", jnp.tanh, lambda z: 1 - jnp.tanh(-z) ** 2 + 0.1 * z)
    report = mbp.verify_activation(negated)
    assert not report.passed and "worst at z = " in report.failures[0].diagnosis


def test_a_forward_pass_without_its_bias_is_named_first():
    net = mbp.MLP((4, 6, 3), "tanh", "identity", "mse")

    def no_bias(net, params, X, Y):
        params = tuple(Layer(p.W, jnp.zeros_like(p.b)) for p in params)
        return backprop.backward_with_deltas(net, params, X, Y)

    report = run(net, backward=no_bias)
    assert report.failures[0].check == "E vs autodiff (the forward pass)", str(report)


def test_a_sigma_prime_slip_is_named_and_eq_1_only_inherits_it():
    s = jax.nn.sigmoid
    at_a = mbp.Activation("at_a", s, lambda z: s(s(z)) * (1 - s(s(z))))
    report = run(mbp.MLP((4, 6, 3), at_a, "identity", "mse"))
    first = report.failures[0]
    assert first.check == "σ'" and first.diagnosis.startswith("σ' taken at a = σ(z)"), str(report)
    (eq1,) = [r for r in report.failures if r.equation == 1]
    assert eq1.diagnosis.startswith("inherited")


def test_subnormal_values_are_not_called_zero():
    net = mbp.MLP((4, 6, 3), "tanh", "identity", "mse")
    with jax.enable_x64():
        params, X, Y = numpy_case(net, 0, 6, jnp.float64)
        params = tuple(Layer(p.W, jnp.zeros_like(p.b)) for p in params)
        report = mbp.verify(net, params, X * 1e-155, Y * 1e-155)
    assert report.passed or report.inconclusive, str(report)
    assert all(r.diagnosis != "zero" for r in report.rows)
