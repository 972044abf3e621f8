"""The Fashion-MNIST epoch row: its FLOP count by hand, its skips and its report."""

import time

import pytest

from manualbp import data
from manualbp.tools import bench, fashion_bench


def test_epoch_flops_by_hand():
    # 300 steps of B = 200: forward 2·200·(784·100 + 100·10), eq. (2) the same,
    # eq. (1) only for the output layer's W: 2·200·100·10.
    per_step = 2 * 200 * (784 * 100 + 100 * 10) * 2 + 2 * 200 * 100 * 10
    assert fashion_bench.epoch_flops((784, 100, 10), 60_000, 200) == 300 * per_step
    # The same rule as the benchmark's value-and-grad count, per step.
    assert per_step == bench.value_and_grad_flops((784, 100, 10), 200)["total"]
    assert fashion_bench.epoch_flops((784, 100, 10), 60_199, 200) == 300 * per_step


def test_skips_without_the_files(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(tmp_path))
    result = fashion_bench.bench_fashion_epoch(repeats=1)
    assert "apt-get install dataset-fashion-mnist" in result["skipped"]
    assert "skipped" in fashion_bench.markdown(result)


def test_markdown_of_a_result():
    row = {"epoch_s": 0.2, "cpu_epoch_s": 0.19, "gflops": 96.0, "fraction_of_peak": 0.48}
    paired = {"median": 3.1, "ci95": [2.9, 3.3], "ratios": [3.1] * 7}
    result = {
        "manual": row,
        "autodiff": row,
        "sklearn": row,
        "paired": {"sklearn_over_manual_time": paired, "manual_over_autodiff_time": paired},
        "paired_cpu": {"sklearn_over_manual_time": paired, "manual_over_autodiff_time": paired},
        "peak": {"gflops_median": 200.0, "n": 1024},
        "load_average_1min": {"before": 1.0, "after": 2.0},
        "cpu_over_wall": 0.98,
    }
    text = fashion_bench.markdown(result)
    assert "| manual | 0.200 | 0.190 | 96 | 48% |" in text
    assert "3.10 (95% CI 2.90–3.30)" in text and "7 rounds" in text
    assert "CPU time / wall time 0.98" in text


def test_markdown_of_two_trainers_without_the_peak():
    row = {"epoch_s": 0.2, "cpu_epoch_s": 0.19, "gflops": 96.0}
    paired = {"median": 3.1, "ci95": None, "ratios": [3.1] * 3}
    result = {
        "manual": row,
        "sklearn": row,
        "paired": {"sklearn_over_manual_time": paired},
        "paired_cpu": {"sklearn_over_manual_time": {**paired, "median": 2.5}},
        "load_average_1min": {"before": 1.0, "after": 2.0},
        "cpu_over_wall": 1.0,
    }
    text = fashion_bench.markdown(result)
    assert "| manual | 0.200 | 0.190 | 96 |\n| sklearn | 0.200 | 0.190 | 96 |" in text
    assert "scikit-learn / manual time 3.10 (CPU time 2.50)" in text
    assert "autodiff" not in text and "peak" not in text
    assert "3 rounds: scikit-learn" in text


def test_cpu_timed_calls_record_their_cpu_time():
    cpu_s = {"busy": [], "idle": []}
    calls = fashion_bench._cpu_timed(
        {"busy": lambda: sum(i * i for i in range(300_000)), "idle": lambda: time.sleep(0.05)},
        cpu_s,
    )
    for call in calls.values():
        call()
    assert cpu_s["busy"][0] > 0.005  # work shows as CPU time
    assert cpu_s["idle"][0] < 0.02  # waiting does not


def test_paired_ratios_of_the_trainers_that_ran():
    times = {"manual": [1.0, 2.0], "sklearn": [3.0, 4.0]}
    paired = fashion_bench._paired(times)
    assert set(paired) == {"sklearn_over_manual_time"}
    assert paired["sklearn_over_manual_time"]["ratios"] == [3.0, 2.0]


def test_float64_needs_x64():
    with pytest.raises(ValueError, match="x64"):
        fashion_bench.bench_fashion_epoch(1, dtype="float64")


def test_thread_settings_run_each_in_a_process_of_its_own(tmp_path, monkeypatch):
    """The four settings each start `main` in a subprocess and come back as its JSON."""
    pytest.importorskip("sklearn")
    pytest.importorskip("threadpoolctl")
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(tmp_path))  # no files: each one skips
    results = fashion_bench.thread_settings(rounds=1)
    assert [(r["threads"], r["dtype"]) for r in results] == [
        ("1", "float32"),
        ("1", "float64"),
        ("default", "float32"),
        ("default", "float64"),
    ]
    assert all("dataset-fashion-mnist" in r["skipped"] for r in results)


def test_thread_settings_take_no_other_flag(capsys):
    with pytest.raises(SystemExit):
        fashion_bench.main(["3", "--thread-settings", "--dtype", "float64"])
    assert "--thread-settings: expected only the rounds" in capsys.readouterr().err
