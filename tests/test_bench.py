"""The benchmark's FLOP count by hand, and a smoke run of its command line (no timing asserted)."""

import json

import jax
import jax.numpy as jnp
import numpy as np

import manualbp as mbp
from manualbp import bench

# A 3-4-2 net, batch B = 5: layer l = 2 is (n_out, n_in) = (4, 3), layer l = 3 is (2, 4).
#   forward  = 2·5·4·3 + 2·5·2·4 = 120 + 80 = 200
#   eq. (2)  = the same            = 200
#   eq. (1)  = layer 3 only        = 80   (no δ for the input layer)
#   total    = 480
#   per-example: forward 200 + eq. (1) 80 + outer products 5·(4·3 + 2·4) = 100 → 380


def test_value_and_grad_flops_by_hand():
    assert bench.value_and_grad_flops((3, 4, 2), 5) == {
        "forward": 200,
        "eq1": 80,
        "eq2": 200,
        "total": 480,
    }


def test_per_example_flops_and_bytes_by_hand():
    assert bench.per_example_flops((3, 4, 2), 5) == 380
    # 5 · (4·3 + 4 + 2·4 + 2) float32 numbers = 5 · 26 · 4 bytes
    assert bench.per_example_bytes((3, 4, 2), 5) == 520


def test_a_single_layer_has_no_eq1_work():
    assert bench.value_and_grad_flops((7, 3), 2)["eq1"] == 0


def test_quick_run_writes_the_report(tmp_path):
    path = tmp_path / "bench.json"
    markdown = tmp_path / "bench.md"
    argv = ["--quick", "--configs", "small", "--no-training", "--json", str(path)]
    assert bench.main([*argv, "--markdown", str(markdown)]) == 0
    report = json.loads(path.read_text())
    assert {"environment", "matmul", "configs", "flop_count", "loadavg_end"} <= report.keys()
    assert {"device", "jax", "cpu_count", "env", "loadavg"} <= report["environment"].keys()
    (row,) = report["configs"]
    assert row["config"]["name"] == "small"
    for variant in ("manual", "autodiff", "per_example"):
        assert {"median_s", "compile_s", "gflops", "repeats"} <= row[variant].keys()
    assert row["flops"] == bench.value_and_grad_flops((64, 32, 10), 128)
    assert row["ratio_manual_over_autodiff"] > 0
    assert "| small |" in markdown.read_text()


def test_training_numpy_loop_matches_the_equations():
    """One step of the textbook loop on one example equals a step along eqs. (1)–(4)."""
    net = mbp.MLP((3, 4, 2), hidden="sigmoid", output="sigmoid", loss="mse")
    params = net.init(jax.random.key(0), scheme="nielsen")
    X = np.asarray(jax.random.uniform(jax.random.key(1), (1, 3)))
    Y = np.array([[0.0, 1.0]], np.float32)
    _, grads = mbp.manual_value_and_grad(net, params, jnp.asarray(X), jnp.asarray(Y))
    np_params = [(np.array(W), np.array(b)) for W, b in params]
    bench.numpy_sgd_epoch(np_params, X, Y, 1, 1.0, np.random.default_rng(0))
    for (W, b), (W0, b0), g in zip(np_params, params, grads, strict=True):
        np.testing.assert_allclose(W, W0 - g.W, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b, b0 - g.b, rtol=1e-5, atol=1e-6)
