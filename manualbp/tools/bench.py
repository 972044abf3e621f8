"""Benchmark: hand-derived gradients against `jax.grad`, the matmul rate, and training speed.

Answers: is the manual backward pass (equations (1)–(4)) at least as fast as XLA's
autodiff of the same loss, how close does it come to the machine's float32
matrix-multiply rate, and how fast does training with it run next to autodiff
and next to the textbook NumPy loop.

    python scripts/bench.py                        # every configuration (~2 min on 2 CPU cores)
    python scripts/bench.py --quick                # smoke test: the small configs, ~40 s
    python scripts/bench.py --configs small,medium --json bench.json --markdown bench.md

Method. Everything runs in one process. Each function is called once to compile
(its first-call time, minus the steady median, is reported as compile time),
once more to warm up, then timed ``repeats`` times with the variants
interleaved A B, B A, A B, ... so that drifting machine load hits both alike;
medians are quoted. Every timed call ends in `jax.block_until_ready`. The
matmul peak is the best median rate 2 n³ / t over a few square sizes n of a
jitted float32 product, timed in the same run.

The configurations and the FLOP counts (how each rate is computed) are in
`bench_configs`, the training rows in `bench_train`, the Markdown report in
`bench_report`; every name is imported from here.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import manualbp as mbp
from manualbp.data import random_batch
from manualbp.tools import timing
from manualbp.tools.bench_configs import (
    CONFIGS,
    CONFIGS_BY_NAME,
    QUICK_CONFIGS,
    TRAINING,
    TRAINING_BATCHES,
    TRAINING_EPOCHS,
    TRAINING_ETA,
    Config,
    per_example_bytes,
    per_example_flops,
    per_example_shapes,
    value_and_grad_flops,
)
from manualbp.tools.bench_report import _ci_header as _ci_header
from manualbp.tools.bench_report import _fraction as _fraction
from manualbp.tools.bench_report import _ratio as _ratio
from manualbp.tools.bench_report import markdown
from manualbp.tools.bench_train import bench_training, numpy_sgd_epoch

__all__ = [  # the benchmark's surface, whichever module of it a name lives in
    "CONFIGS",
    "CONFIGS_BY_NAME",
    "QUICK_CONFIGS",
    "TRAINING",
    "TRAINING_BATCHES",
    "TRAINING_EPOCHS",
    "TRAINING_ETA",
    "Config",
    "bench_config",
    "bench_training",
    "markdown",
    "numpy_sgd_epoch",
    "per_example_bytes",
    "per_example_flops",
    "per_example_shapes",
    "value_and_grad_flops",
]


class _Budget(NamedTuple):
    """How long to time: ``repeats`` rounds, or as many as fit in ``seconds`` when None;
    and the most bytes of per-example gradients to materialize."""

    repeats: int | None
    seconds: float
    per_example_limit: float


def bench_config(
    config: Config,
    *,
    repeats: int | None,
    budget_s: float,
    per_example_limit: float,
    peak_sizes: Sequence[int] = (),
) -> dict:
    """Manual and autodiff value-and-grad, and per-example gradients, for one configuration.

    With ``peak_sizes``, an n × n float32 matmul of each size joins the
    interleaved rounds, and the fraction of the matmul peak is also taken
    round by round (``paired_fraction_of_matmul``): the manual rate over the
    best matmul rate of the same round, so drifting load does not move it.
    """
    budget = _Budget(repeats, budget_s, per_example_limit)
    fns, per_example = _calls(config, peak_sizes)
    load_before = os.getloadavg()
    first = timing.first_calls(fns)
    round_s = sum(timing.seconds(fn) for fn in fns.values())
    times = timing.interleaved(fns, timing.repeats_for(round_s, budget.seconds, budget.repeats))
    result = _value_and_grad_rows(config, times, first, peak_sizes)
    pair = {"batch": fns["manual"], "per_example": per_example}
    result["per_example"] = _bench_per_example(config, pair, result["manual"]["median_s"], budget)
    result["loadavg_before"] = load_before
    result["loadavg_after"] = os.getloadavg()
    return result


def _calls(config: Config, peak_sizes: Sequence[int]) -> tuple[dict[str, Callable], Callable]:
    """The timed calls (manual, autodiff, a matmul of each peak size) and per-example's."""
    net = config.net()
    params = net.init(jax.random.key(0))
    X, Y = random_batch(net, jax.random.key(1), config.batch)
    fns = {
        "manual": lambda: mbp.manual_value_and_grad(net, params, X, Y),
        "autodiff": lambda: mbp.autodiff_value_and_grad(net, params, X, Y),
    }
    matmul = jax.jit(jnp.matmul)
    for n in peak_sizes:
        A = jax.random.normal(jax.random.key(2), (n, n), jnp.float32)
        fns[f"matmul_{n}"] = functools.partial(matmul, A, A)
    return fns, lambda: mbp.per_example_grads(net, params, X, Y)


def _value_and_grad_rows(config: Config, times: dict, first: dict, peak_sizes) -> dict:
    """Manual and autodiff: their summaries and rates, the share of the peak, their ratios."""
    flops = value_and_grad_flops(config.sizes, config.batch)
    result = {"config": dataclasses.asdict(config), "flops": flops}
    for name in ("manual", "autodiff"):
        summary = timing.summary(times[name], first[name])
        summary["gflops"] = flops["total"] / summary["median_s"] / 1e9
        result[name] = summary
    if peak_sizes:
        result.update(_paired_peak(times, peak_sizes, flops["total"]))
    result["ratio_manual_over_autodiff"] = (
        result["manual"]["median_s"] / result["autodiff"]["median_s"]
    )
    result["paired_manual_over_autodiff"] = timing.paired_ratio(times["manual"], times["autodiff"])
    return result


def _paired_peak(times: dict, peak_sizes: Sequence[int], flops: int) -> dict:
    """Each matmul's times, and the manual rate over the best matmul rate, round by round."""
    peak_by_round = [
        max(2 * n**3 / times[f"matmul_{n}"][r] for n in peak_sizes)
        for r in range(len(times["manual"]))
    ]
    fractions = [flops / t / peak for t, peak in zip(times["manual"], peak_by_round, strict=True)]
    return {
        "matmul": {n: timing.summary(times[f"matmul_{n}"]) for n in peak_sizes},
        "paired_fraction_of_matmul": {
            **timing.per_round(fractions),
            "peak_gflops_median": float(np.median(peak_by_round)) / 1e9,
        },
    }


def _bench_per_example(config: Config, pair: dict, batch_s: float, budget: _Budget) -> dict:
    """Per-example gradients timed in their own pair against the batch gradient.

    Its own A B pair, ``{"batch": ..., "per_example": ...}``: the per-example run
    writes B copies of every gradient and would disturb the manual/autodiff pair.
    """
    size = per_example_bytes(config.sizes, config.batch)
    if size > budget.per_example_limit:
        return {
            "skipped": f"would materialize {size / 2**30:.1f} GiB of per-example gradients "
            f"(limit {budget.per_example_limit / 2**30:.1f} GiB)"
        }
    per_example_fn = pair["per_example"]
    first = timing.seconds(per_example_fn)
    jax.block_until_ready(per_example_fn())
    round_s = batch_s + timing.seconds(per_example_fn)
    times = timing.interleaved(
        pair, timing.repeats_for(round_s, budget.seconds / 2, budget.repeats)
    )
    summary = timing.summary(times["per_example"], first)
    summary["bytes"] = size
    summary["flops"] = per_example_flops(config.sizes, config.batch)
    summary["gflops"] = summary["flops"] / summary["median_s"] / 1e9
    summary["batch_median_s"] = float(np.median(times["batch"]))
    summary["ratio_over_batch"] = summary["median_s"] / summary["batch_median_s"]
    summary["fresh_memory"] = timing.fresh_memory_time(
        per_example_shapes(config.sizes, config.batch),
        repeats=min(20, max(3, summary["repeats"])),
    )
    summary["ratio_over_fresh_memory"] = summary["median_s"] / summary["fresh_memory"]["median_s"]
    return summary
