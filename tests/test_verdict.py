"""The verdict at its edges: correct nets pass, the misses it once had are caught, NaN never passes.

Small shapes throughout; scripts/verdict_sweep.py runs the same questions at full size.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import numpy_case

import manualbp as mbp
from manualbp import backprop, losses, tolerance
from manualbp.network import Layer
from manualbp.tools.cli import main as cli_main
from manualbp.verification.blocks import NULL_DIRECTION
from manualbp.verification.compare import diagnose


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
    assert [r.check for r in report.failures] == ["dE/dŷ"]
    assert report.failures[0].diagnosis == NULL_DIRECTION


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
    assert all("noise floor" in r.diagnosis for r in report.rows if "finite" in r.check)


@pytest.mark.slow
def test_the_quick_sweep_has_no_false_alarm_and_misses_nothing():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import verdict_sweep

    counts, worst = verdict_sweep.false_alarms(quick=True)
    assert counts["false alarms"] == 0 and worst <= tolerance.K
    assert all(all(hits) for hits in verdict_sweep.catches(quick=True).values())
