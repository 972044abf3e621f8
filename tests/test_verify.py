"""The verifier catches deliberately wrong derivations and localizes them; no false alarms."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import OUTPUT_LOSS_PAIRS, numpy_case

import manualbp as mbp
from manualbp import activations, backprop, losses
from manualbp.activations import HIDDEN_ACTIVATIONS
from manualbp.network import Layer, forward_pass_batch
from manualbp.tools.cli import main as cli_main

B = 6
SQUARE = (4, 4, 4, 4, 3)  # equal hidden widths, so a missing transpose or a layer off by one runs


def run(net, dtype=jnp.float32, seed=0, **options):
    params, X, Y = numpy_case(net, seed, B, dtype)
    with jax.disable_jit():
        return mbp.verify(net, params, X, Y, **options)


def failing(report, kind):
    """(equation, layer) of the failing rows of one kind: 'eq' rows or building blocks."""
    rows = [r for r in report.failures if r.equation is not None or kind == "all"]
    if kind == "blocks":
        rows = [r for r in report.failures if r.equation is None and "vs" not in r.check]
    return {(r.equation, r.layer) for r in rows}


def diagnoses(report, equation):
    return {r.diagnosis for r in report.failures if r.equation == equation}


def test_a_correct_derivation_passes_every_row():
    report = run(mbp.MLP(SQUARE, "tanh", "softmax", "cross_entropy"))
    assert report.passed and not report.failures
    assert {r.equation for r in report.rows} == {None, 1, 2, 3, 4}
    assert {r.layer for r in report.rows if r.equation == 2} == {2, 3, 4, 5}
    assert str(report).startswith("PASSED")


def test_wrong_sigma_prime_is_a_building_block_and_equation_1_at_its_layers():
    # tanh' written as 1 − z² instead of 1 − tanh²(z).
    wrong_tanh = mbp.Activation("tanh", jnp.tanh, lambda z: 1 - z**2)
    net = mbp.MLP(SQUARE, ["relu", wrong_tanh, "relu"], "identity", "mse")
    report = run(net)
    # The batch's σ' row at its layer, and the plug-in's own grid (layer None).
    assert failing(report, "blocks") == {(None, 3), (None, None)}
    assert all("grid (tanh)" in r.check for r in report.failures if r.layer is None)
    assert failing(report, "eq") == {(1, 3)}


def test_dropped_sigma_prime_in_equation_1():
    dropped = backprop.EQUATIONS._replace(hidden_delta=lambda d, W, sp: d @ W)
    report = run(mbp.MLP(SQUARE, "tanh", "identity", "mse"), equations=dropped)
    assert failing(report, "eq") == {(1, 2), (1, 3), (1, 4)}
    assert diagnoses(report, 1) == {"σ' missing"}


def test_missing_transpose_in_equation_1():
    untransposed = backprop.EQUATIONS._replace(hidden_delta=lambda d, W, sp: (d @ W.T) * sp)
    report = run(mbp.MLP((4, 4, 4, 4, 4), "sigmoid", "identity", "mse"), equations=untransposed)
    assert failing(report, "eq") == {(1, 2), (1, 3), (1, 4)}
    assert diagnoses(report, 1) == {"W^{l+1} not transposed"}


def test_sign_flip_in_equation_4_stays_at_layer_L():
    flipped = backprop.EQUATIONS._replace(output_delta=lambda *args: -backprop.delta_L_batch(*args))
    report = run(mbp.MLP(SQUARE, "tanh", "softmax", "cross_entropy"), equations=flipped)
    assert failing(report, "eq") == {(4, 5)}
    assert diagnoses(report, 4) == {"sign flipped"}


def test_sum_instead_of_mean_in_equation_2():
    summed = backprop.EQUATIONS._replace(weight_grad=lambda d, a: d.T @ a)
    report = run(mbp.MLP(SQUARE, "elu", "identity", "mse"), equations=summed)
    assert failing(report, "eq") == {(2, 2), (2, 3), (2, 4), (2, 5)}
    assert diagnoses(report, 2) == {"summed over the batch, not averaged"}
    end_to_end = {r.diagnosis for r in report.failures if r.check == "∂E/∂W vs autodiff"}
    assert end_to_end == {f"off by ×{B}"}


def off_by_one_backward(net, params, X, Y):
    """A hand-written backward pass whose equation (2) takes a^l where a^{l-1} belongs."""
    fwd = forward_pass_batch(net, params, X)
    delta = backprop.delta_L_batch(net, fwd.z[-1], fwd.a[-1], Y)
    grads, deltas = [None] * len(params), [None] * len(params)
    for k in reversed(range(len(params))):  # params[k] is layer l = k + 2
        deltas[k] = delta
        a_l, a_prev = fwd.a[k + 1], fwd.a[k]
        a = a_l if a_l.shape[1] == a_prev.shape[1] else a_prev
        grads[k] = Layer(delta.T @ a / B, jnp.mean(delta, axis=0))
        if k > 0:
            sp = backprop.sigma_prime(net.activations[k - 1], fwd.z[k], fwd.a[k])
            delta = backprop.hidden_delta_batch(delta, params[k].W, sp)
    E = jnp.mean(jax.vmap(net.loss.fn)(fwd.a[-1], Y))
    return E, tuple(grads), tuple(deltas)


def test_off_by_one_layer_in_equation_2():
    net = mbp.MLP((4, 4, 4, 4, 4), "tanh", "identity", "mse")
    report = run(net, backward=off_by_one_backward)
    assert failing(report, "eq") == {(2, 2), (2, 3), (2, 4), (2, 5)}
    assert diagnoses(report, 2) == {"a^l in place of a^{l-1} (one layer off)"}


def test_wrong_loss_gradient():
    doubled = mbp.Loss("mse", losses.mse.fn, lambda y_hat, y: 2 * (y_hat - y))
    report = run(mbp.MLP(SQUARE, "tanh", "identity", doubled))
    assert failing(report, "blocks") == {(None, 5), (None, None)}  # the batch, and its grid
    assert all("grid (mse)" in r.check for r in report.failures if r.layer is None)
    assert [r.diagnosis for r in report.failures if r.check == "dE/dŷ"] == ["off by ×2"]
    assert failing(report, "eq") == {(4, 5)}


def test_a_one_percent_error_in_a_derivative_is_caught_in_float64():
    scaled = mbp.Activation(
        "sigmoid", jax.nn.sigmoid, lambda z: 1.01 * activations.sigmoid.deriv(z)
    )
    with jax.enable_x64():
        report = run(mbp.MLP(SQUARE, scaled, "identity", "mse"), dtype=jnp.float64)
    assert failing(report, "eq") == {(1, 2), (1, 3), (1, 4)}
    # (1) itself is applied right: it only carries the σ' rows' error, and says so.
    assert all(d.startswith("inherited: (1) applied right") for d in diagnoses(report, 1))
    assert failing(report, "blocks") == {(None, 2), (None, 3), (None, 4), (None, None)}
    assert all(r.diagnosis.startswith("off by ×1.01") for r in report.failures if r.check == "σ'")


def test_finite_differences_are_a_third_witness_that_can_fail():
    net = mbp.MLP((3, 4, 2), "tanh", "identity", "mse")
    report = run(net, finite_differences=True)
    fd_rows = [r for r in report.rows if "finite" in r.check]
    assert len(fd_rows) == 4 and all(r.passed for r in fd_rows)
    summed = backprop.EQUATIONS._replace(weight_grad=lambda d, a: d.T @ a)
    report = run(net, finite_differences=True, equations=summed)
    assert {r.check for r in report.failures if "finite" in r.check} == {"∂E/∂W vs finite diff."}


def test_devices_all_reports_per_device():
    report = run(mbp.MLP((3, 4, 2)), devices="all")
    assert report.passed
    assert report.meta["devices"] == [str(d) for d in jax.devices()]
    assert all(r.device for r in report.rows)


@pytest.mark.parametrize("act", list(mbp.ACTIVATIONS))
def test_every_builtin_activation_passes_its_grid(act):
    report = mbp.verify_activation(act)
    assert report.passed, str(report)


@pytest.mark.parametrize("loss", list(mbp.LOSSES))
def test_every_builtin_loss_passes_its_spread(loss):
    report = mbp.verify_loss(loss)
    assert report.passed, str(report)


def test_building_block_checks_fail_on_wrong_derivatives():
    # At the kink any slope between the one-sided ones (0 and 1) is right; 2 is not.
    relu_wrong_at_0 = mbp.Activation(
        "relu", jax.nn.relu, lambda z: (z > 0).astype(z.dtype) + 2 * (z == 0).astype(z.dtype)
    )
    report = mbp.verify_activation(relu_wrong_at_0)
    assert [r.check for r in report.failures] == ["σ' at 0"], str(report)
    bce_wrong = mbp.Loss("bce", losses.binary_cross_entropy.fn, lambda y_hat, y: y_hat - y)
    assert not mbp.verify_loss(bce_wrong).passed
    softmax_no_offdiag = mbp.Activation(
        "softmax",
        activations.softmax.fn,
        lambda z: jnp.diag(activations.softmax.deriv(z).diagonal()),
        elementwise=False,
    )
    assert not mbp.verify_activation(softmax_no_offdiag).passed


def _random_draws(count: int) -> None:
    # Random activations, losses, fusing, dtypes, batches and parameters over a
    # few architectures (shapes repeat, so op-by-op kernels compile once).
    rng = np.random.default_rng(0)
    architectures = ((3, 5, 2), (4, 6, 5, 3), (6, 3, 4, 4, 2))
    for draw in range(count):
        output, loss = OUTPUT_LOSS_PAIRS[rng.integers(len(OUTPUT_LOSS_PAIRS))]
        sizes = architectures[draw % 3]
        hidden = [str(h) for h in rng.choice(HIDDEN_ACTIVATIONS, size=len(sizes) - 2)]
        net = mbp.MLP(sizes, hidden, output, loss, fused=bool(rng.integers(2)))
        dtype = (jnp.float32, jnp.float64)[rng.integers(2)]
        with jax.enable_x64(dtype == jnp.float64):
            params, X, Y = numpy_case(net, draw, int(rng.choice([4, 8])), dtype)
            with jax.disable_jit():
                report = mbp.verify(net, params, X, Y)
        assert report.passed, str(report)


def test_no_false_alarms_over_a_few_random_draws():
    _random_draws(3)  # one per architecture


@pytest.mark.slow
def test_no_false_alarms_over_random_draws():
    _random_draws(16)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_bands_pass_correct_and_catch_wrong(dtype):
    net = mbp.MLP((4, 6, 3), "tanh", "softmax", "cross_entropy")
    assert run(net, dtype=dtype).passed
    flipped = backprop.EQUATIONS._replace(hidden_delta=lambda d, W, sp: -(d @ W) * sp)
    assert failing(run(net, dtype=dtype, equations=flipped), "eq") == {(1, 2)}


def test_report_to_dict_is_json_with_versions():
    report = run(mbp.MLP((3, 4, 2)))
    data = json.loads(report.to_json())
    assert data["passed"] is True and data["dtype"] == "float32"
    assert {"jax", "numpy", "manualbp"} <= set(data["versions"])
    assert set(data["rows"][0]) == {
        "check",
        "equation",
        "layer",
        "max_abs_err",
        "rel_err",
        "tol",
        "passed",
        "diagnosis",
        "device",
        "error_eps",
        "witness_eps",
        "allowance_eps",
        "judged",
    }


# --- the command line ---------------------------------------------------------------

WRONG_ACTIVATION = """
import jax, jax.numpy as jnp, manualbp as mbp
my_tanh = mbp.Activation("my_tanh", jnp.tanh, lambda z: 1 - z**2)
fixed_tanh = mbp.Activation("my_tanh", jnp.tanh, lambda z: 1 - jnp.tanh(z) ** 2)
# Right wherever a small net's z lands, wrong only in saturation (|z| > 50):
far_tanh = mbp.Activation(
    "far_tanh", jnp.tanh, lambda z: jnp.where(jnp.abs(z) > 50, 1.0, 1 - jnp.tanh(z) ** 2)
)
"""


def test_cli_verifies_a_plugged_in_derivation(tmp_path, monkeypatch, capsys):
    (tmp_path / "mine_tanh.py").write_text(WRONG_ACTIVATION)
    monkeypatch.chdir(tmp_path)
    # A name of its own: another test imports a different mine.py in this process.
    args = ["verify", "--sizes", "3,4,2", "--loss", "mse", "--json", str(tmp_path / "r.json")]
    assert cli_main([*args, "--hidden", "mine_tanh:my_tanh"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "σ'" in out
    assert json.loads((tmp_path / "r.json").read_text())["passed"] is False
    assert cli_main([*args, "--hidden", "mine_tanh:fixed_tanh"]) == 0
    assert "PASSED" in capsys.readouterr().out
    # Wrong only where the batch never goes: the net's own report finds it on the grid of
    # hard places, and says where the batch's z lay.
    assert cli_main([*args, "--hidden", "mine_tanh:far_tanh"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: activation 'far_tanh'" in out and "FAILED: MLP" in out
    assert "grid (far_tanh)" in out and "the batch's z" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["verify", "--hidden", "nope"], "unknown activation 'nope'"),
        (["verify", "--hidden", "no_such_module:x"], "cannot import 'no_such_module'"),
        (["verify", "--sizes", "3", "--loss", "mse"], "at least two layers"),
        (["verify", "--batch", "0", "--sizes", "3,2"], "positive batch size"),
    ],
)
def test_cli_user_errors_are_one_line_and_exit_2(argv, message, capsys):
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_cli_bad_flag_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["verify", "--dtype", "float8"])
    assert exit_info.value.code == 2
