"""Timing for the benchmark: interleaved repeats, paired ratios and their intervals, floors.

On a shared machine the load drifts between calls, so `interleaved` runs the
variants round by round and `paired_ratio` compares them within each round;
`median_interval` puts a distribution-free 95% interval on the median of those
per-round ratios. `matmul_peak` and `fresh_memory_time` measure what the
machine can do at best: multiply matrices, and hand out new memory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def seconds(fn: Callable[[], object]) -> float:
    """Wall time of one call of ``fn``, waiting for its arrays to be computed."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Time each function ``repeats`` times, alternating the order A B, B A, ..."""
    names = list(fns)
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(seconds(fns[name]))
    return times


def summary(times: list[float], first_call_s: float | None = None) -> dict:
    """Median, min, max and every time (seconds), for the record.

    With ``first_call_s`` (the compiling call), also the compile time: the
    first call minus the steady median.
    """
    result = {
        "median_s": float(np.median(times)),
        "min_s": float(np.min(times)),
        "max_s": float(np.max(times)),
        "repeats": len(times),
        "times_s": [float(t) for t in times],
    }
    if first_call_s is not None:
        result["first_call_s"] = first_call_s
        result["compile_s"] = max(0.0, first_call_s - result["median_s"])
    return result


def median_interval(
    values: Sequence[float], confidence: float = 0.95
) -> tuple[float, float] | None:
    """A distribution-free confidence interval for the median of ``values``.

    The order statistics (x_(j), x_(n+1-j)) cover the median with probability
    1 − 2 P(Binomial(n, ½) ≤ j − 1), whatever the distribution; j is the
    largest index whose coverage is at least ``confidence``. None when even
    (min, max) covers less (n < 6 at 95%).
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = len(x)
    best = None
    tail = 0.0  # P(Binomial(n, ½) ≤ j − 1)
    for j in range(1, n // 2 + 1):
        tail += math.comb(n, j - 1) / 2**n
        if 1 - 2 * tail < confidence:
            break
        best = (float(x[j - 1]), float(x[n - j]))
    return best


def per_round(ratios: Sequence[float]) -> dict:
    """Per-round ratios with their median and its 95% interval (None with under 6 rounds)."""
    ratios = [float(r) for r in ratios]
    interval = median_interval(ratios)
    return {
        "median": float(np.median(ratios)),
        "ci95": list(interval) if interval else None,
        "ratios": ratios,
    }


def paired_ratio(times_a: Sequence[float], times_b: Sequence[float], scale: float = 1.0) -> dict:
    """scale · t_A / t_B round by round, from interleaved repeats (`per_round`).

    Round r's two calls ran back to back (`interleaved`), so their ratio
    cancels most of the drift in machine load that moves both alike.
    """
    return per_round([scale * a / b for a, b in zip(times_a, times_b, strict=True)])


def first_calls(fns: dict[str, Callable[[], object]]) -> dict[str, float]:
    """The first (compiling) call of each function, then one warm-up call."""
    first = {name: seconds(fn) for name, fn in fns.items()}
    for fn in fns.values():
        jax.block_until_ready(fn())
    return first


def repeats_for(seconds_per_round: float, budget_s: float, fixed: int | None) -> int:
    if fixed is not None:
        return fixed
    return int(min(200, max(5, budget_s / max(seconds_per_round, 1e-6))))


def fresh_memory_time(shapes: Sequence[tuple[int, ...]], repeats: int) -> dict:
    """Median time of a jitted function that returns new float32 arrays of ``shapes``.

    Each array is filled with one runtime value, so the time is what this
    process pays to obtain and write that much new memory: the floor under any
    function that materializes outputs of these shapes (per-example gradients).
    """
    fill = jax.jit(lambda value: [jnp.full(shape, value, jnp.float32) for shape in shapes])
    value = jnp.float32(1.0)
    jax.block_until_ready(fill(value))
    times = [seconds(lambda: fill(value)) for _ in range(repeats)]
    size = sum(math.prod(shape) for shape in shapes) * 4
    median = float(np.median(times))
    return {"bytes": size, **summary(times), "gb_per_s": size / median / 1e9}


def matmul_rate(n: int, repeats: int) -> dict:
    """The float32 rate of a jitted n × n matrix product, 2 n³ / median time."""
    A = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    B = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    first = seconds(lambda: matmul(A, B))
    jax.block_until_ready(matmul(A, B))
    times = [seconds(lambda: matmul(A, B)) for _ in range(repeats)]
    median = float(np.median(times))
    return {
        "n": n,
        **summary(times, first),
        "gflops_median": 2 * n**3 / median / 1e9,
        "gflops_best": 2 * n**3 / min(times) / 1e9,
    }


def matmul_peak(sizes: Sequence[int], repeats: int) -> dict:
    """The measured float32 matmul peak: the best median rate over square sizes."""
    rates = [matmul_rate(n, repeats) for n in sizes]
    best = max(rates, key=lambda rate: rate["gflops_median"])
    return {"n": best["n"], "gflops_median": best["gflops_median"], "sizes": rates}
