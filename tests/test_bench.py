"""The benchmark's FLOP counts and ratios by hand, and a smoke run of its command line.

The ratios are checked on planted times (`planted_times`): the harness's clock is
replaced by a table of seconds written here, so every ratio and interval it reports
can be worked out by hand, independently of what it records.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import manualbp as mbp
from manualbp import _records as records
from manualbp.tools import bench, bench_cli, cli, timing
from manualbp.tools import bench_curvature as bc
from manualbp.tools.console import UserError

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


def test_per_example_shapes_by_hand():
    assert bench.per_example_shapes((3, 4, 2), 5) == [(5, 4, 3), (5, 4), (5, 2, 4), (5, 2)]


def test_median_interval_by_the_binomial_by_hand():
    # n = 10: P(Bin(10, ½) ≤ 1) = 11/1024, so (x_(2), x_(9)) covers 1 − 22/1024 ≈ 97.9%;
    # (x_(3), x_(8)) only 1 − 2·56/1024 ≈ 89%.
    assert timing.median_interval(range(10, 0, -1)) == (2.0, 9.0)
    # n = 20: P(Bin(20, ½) ≤ 5) ≈ 0.0207 → (x_(6), x_(15)) covers ≈ 95.9%.
    assert timing.median_interval(range(1, 21)) == (6.0, 15.0)
    # n = 6: (min, max) covers 1 − 2/64 ≈ 96.9%; n = 5: 1 − 2/32 = 93.75% < 95%.
    assert timing.median_interval(range(6)) == (0.0, 5.0)
    assert timing.median_interval(range(5)) is None


def test_paired_ratio_pairs_round_by_round():
    paired = timing.paired_ratio([2.0, 4.0, 6.0, 8.0, 10.0, 12.0], [1.0, 4.0, 3.0, 8.0, 5.0, 12.0])
    assert paired["ratios"] == [2.0, 1.0, 2.0, 1.0, 2.0, 1.0]
    assert paired["median"] == 1.5
    assert paired["ci95"] == [1.0, 2.0]


def test_fresh_memory_time_counts_the_bytes_of_its_shapes():
    result = timing.fresh_memory_time([(5, 4, 3), (5, 4), (5, 2, 4), (5, 2)], repeats=3)
    assert result["bytes"] == 4 * (60 + 20 + 40 + 10)
    assert len(result["times_s"]) == result["repeats"] == 3
    assert result["gb_per_s"] == pytest.approx(result["bytes"] / result["median_s"] / 1e9)


def test_a_single_layer_has_no_eq1_work():
    assert bench.value_and_grad_flops((7, 3), 2)["eq1"] == 0


def test_quick_run_writes_the_report(tmp_path):
    path = tmp_path / "bench.json"
    markdown = tmp_path / "bench.md"
    argv = ["--quick", "--configs", "small", "--no-training", "--json", str(path)]
    assert bench_cli.main([*argv, "--markdown", str(markdown)]) == 0
    report = json.loads(path.read_text())
    assert {"environment", "matmul", "configs", "flop_count", "loadavg_end"} <= report.keys()
    assert {"device", "versions", "cpu_count", "env", "loadavg"} <= report["environment"].keys()
    assert {"jax", "jaxlib", "numpy", "optax", "python"} <= report["environment"]["versions"].keys()
    (row,) = report["configs"]
    assert row["config"]["name"] == "small"
    for variant in ("manual", "autodiff", "per_example"):
        assert {"median_s", "compile_s", "gflops", "repeats"} <= row[variant].keys()
    assert row["flops"] == bench.value_and_grad_flops((64, 32, 10), 128)
    assert row["ratio_manual_over_autodiff"] == pytest.approx(
        row["manual"]["median_s"] / row["autodiff"]["median_s"]
    )
    assert len(row["paired_manual_over_autodiff"]["ratios"]) == row["manual"]["repeats"]
    fresh = row["per_example"]["fresh_memory"]
    assert fresh["bytes"] == bench.per_example_bytes((64, 32, 10), 128)
    assert "transparent_hugepages" in report["environment"]
    assert "| small |" in markdown.read_text()
    # Two repeats give medians without intervals: no "[95% CI]" over those columns.
    assert row["paired_manual_over_autodiff"]["ci95"] is None
    assert "[95% CI]" not in markdown.read_text()
    assert "too few rounds for a 95% interval" in markdown.read_text()


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


@pytest.fixture
def planted_times(monkeypatch):
    """Replace the harness's clock: each function name times as the table given says.

    Nothing is called or timed; ``first_calls`` reports 1 s, a single timing 1 ms.
    """

    def plant(table: dict[str, list[float]]) -> None:
        monkeypatch.setattr(timing, "first_calls", lambda fns: dict.fromkeys(fns, 1.0))
        monkeypatch.setattr(timing, "seconds", lambda fn: 1e-3)
        monkeypatch.setattr(
            timing, "interleaved", lambda fns, repeats: {name: list(table[name]) for name in fns}
        )

    return plant


def test_ratios_and_fraction_of_matmul_on_planted_times(planted_times):
    # An 8-16-4 net at B = 32: forward 2·32·16·8 + 2·32·4·16 = 8192 + 4096 = 12288 FLOPs,
    # eq. (2) the same, eq. (1) layer 3 only: 4096. Total 28672.
    config = bench.Config("tiny", (8, 16, 4), "tanh", "identity", "mse", 32, paired_peak=True)
    ms = 1e-3
    # Six rounds. The 32 × 32 matmul (2·32³ = 65536 FLOPs) runs at 1 GFLOP/s every round;
    # the 64 × 64 one (524288 FLOPs) at 2 GFLOP/s in the first four, 0.5 in the last two.
    planted_times(
        {
            "manual": [1 * ms] * 4 + [2 * ms] * 2,
            "autodiff": [2 * ms] * 6,
            "matmul_32": [65536e-9] * 6,
            "matmul_64": [262144e-9] * 4 + [1048576e-9] * 2,
        }
    )
    row = bench.bench_config(
        config, repeats=6, budget_s=0.1, per_example_limit=0, peak_sizes=(32, 64)
    )
    assert row["flops"]["total"] == 28672
    # Medians 1 ms and 2 ms; round by round 0.5 four times, then 1 twice.
    assert row["ratio_manual_over_autodiff"] == pytest.approx(0.5)
    paired = row["paired_manual_over_autodiff"]
    assert paired["ratios"] == pytest.approx([0.5] * 4 + [1.0] * 2)
    assert paired["median"] == pytest.approx(0.5) and paired["ci95"] == pytest.approx([0.5, 1.0])
    assert row["manual"]["gflops"] == pytest.approx(28672 / 1e-3 / 1e9)
    # Round by round: 28672 FLOPs / manual time / that round's best matmul rate:
    # 28672 / 1 ms / 2e9 = 0.014336 in the first four rounds, 28672 / 2 ms / 1e9 in the last two.
    fraction = row["paired_fraction_of_matmul"]
    assert fraction["ratios"] == pytest.approx([0.014336] * 6)
    assert fraction["peak_gflops_median"] == pytest.approx(2.0)  # best of each round: 2 2 2 2 1 1
    assert bench._fraction(row, {"gflops_median": 1.0}) == "1% [1%, 1%] of 2, paired"


def test_training_ratios_on_planted_times(planted_times):
    # n_train = 200: a timed call runs 3 epochs of 200 // B · B = 200 examples, 600 samples;
    # the NumPy loop one epoch of its 100 examples.
    planted_times({"manual": [0.1, 0.2] * 3, "autodiff": [0.2] * 6, "numpy": [1.0] * 6})
    result = bench.bench_training(n_train=200, n_numpy=100, repeats=6)
    assert [row["batch_size"] for row in result["batches"]] == list(bench.TRAINING_BATCHES)
    for row in result["batches"]:
        assert (row["manual"]["samples"], row["numpy"]["samples"]) == (600, 100)
        # Medians: manual 600 / 0.15 s = 4000/s, autodiff 600 / 0.2 s = 3000/s, NumPy 100/s.
        assert row["manual"]["samples_per_s"] == pytest.approx(4000)
        assert row["ratio_manual_over_autodiff"] == pytest.approx(4000 / 3000)
        assert row["ratio_manual_over_numpy"] == pytest.approx(40)
        # Round by round: 0.2 / t_manual = 2, 1, ...; (600 / t_manual) / (100 / 1 s) = 60, 30, ...
        assert row["paired_manual_over_autodiff"]["ratios"] == pytest.approx([2.0, 1.0] * 3)
        assert row["paired_manual_over_autodiff"]["ci95"] == pytest.approx([1.0, 2.0])
        assert row["paired_manual_over_numpy"]["ratios"] == pytest.approx([60.0, 30.0] * 3)
        assert row["paired_manual_over_numpy"]["median"] == pytest.approx(45.0)
    table = bench.markdown(
        {
            "environment": records.environment(machine=True),
            "matmul": {"sizes": [], "n": 0, "gflops_median": 1},
            "configs": [],
            "training": result,
        }
    )
    assert "| 10 |" in table and "| 100 |" in table


def test_curvature_bench_smoke_and_its_programs_agree():
    """Two rounds on a tiny net: every row present; each autodiff route equals the manual one."""
    config = bc.Config("tiny", (3, 4, 2), "tanh", "softmax", "cross_entropy", 5)
    result = bc.bench_curvature(2, configs=(config,))
    (entry,) = result["configs"]
    assert set(entry["rows"]) == {"hvp", "ggn_vp", "diag_ggn", "diag_ggn / value_and_grad"}
    assert "| tiny" in bc.markdown(result)
    net = config.net()
    params = net.init(jax.random.key(0))
    X, Y = mbp.data.random_batch(net, jax.random.key(1), 5)
    Y = mbp.network.as_targets(net, Y, jnp.float32)
    v = jax.tree.map(jnp.ones_like, params)
    fns = bc.programs(net, X, Y)
    for manual, autodiff, _ in bc.PAIRS.values():
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
            fns[manual](params, v),
            fns[autodiff](params, v),
        )


def _args(argv):
    return bench_cli.check_args(bench_cli._parser().parse_args(argv))


def test_sections_default_to_all_quick_to_none_and_lists_take_commas_or_spaces():
    assert _args([]).sections == list(bench_cli.SECTIONS)
    assert _args(["--quick"]).sections == []
    assert _args(["--quick"]).configs == list(bench.QUICK_CONFIGS)
    chosen = _args(["--sections", "curvature,", "fashion-mnist", "--configs", "small,nielsen"])
    assert chosen.sections == ["curvature", "fashion-mnist"]
    assert chosen.configs == ["small", "nielsen"]
    with pytest.raises(UserError, match="--sections: unknown gpu; expected some of extensions"):
        _args(["--sections", "gpu"])


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--sections", "foo"], "--sections"),
        (["--configs", "small,huge"], "--configs"),
        (["--configs", ","], "--configs"),
        (["--repeats", "0"], "--repeats"),
        (["--budget", "-1"], "--budget"),
        (["--budget", "nan"], "--budget"),
        (["--per-example-limit-gib", "-2"], "--per-example-limit-gib"),
    ],
)
def test_a_bad_argument_is_refused_before_any_work(argv, flag, monkeypatch, capsys):
    def never(*args, **kwargs):
        raise AssertionError("the benchmark started before its arguments were checked")

    monkeypatch.setattr(bench_cli.timing, "matmul_peak", never)
    monkeypatch.setattr(bench_cli, "bench_config", never)
    try:
        status = cli.main(["bench", "--quick", *argv])
    except SystemExit as exit_:  # argparse's own usage errors
        status = exit_.code
    assert status == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert flag in line and "Traceback" not in err and len(err.splitlines()) <= 2


def test_the_ci_header_stands_only_over_columns_with_intervals():
    assert bench._ci_header([{"ci95": None}, {"ci95": [0.9, 1.1]}]) == " [95% CI]"
    assert bench._ci_header([{"ci95": None}, {"ci95": None}]) == ""
