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
medians are quoted. Every timed call ends in `jax.block_until_ready`.

FLOP count (float32 multiply-adds counted as 2 FLOPs; elementwise work, the
loss, σ and σ' are not counted). For a layer l with n_out = N_l, n_in = N_{l-1}
and a batch of B:

* forward, Z^l = A^{l-1} (W^l)ᵀ:          2 B n_out n_in
* eq. (2), ∂E/∂W^l = (Δ^l)ᵀ A^{l-1}:        2 B n_out n_in
* eq. (1), Δ^{l-1} = Δ^l W^l ⊙ σ':          2 B n_out n_in, for every layer but the
  first (l = 2), whose δ^1 (the gradient with respect to the input) is not needed.

So value-and-grad costs Σ_l 2 B N_l N_{l-1} (3 − [l = 2]) FLOPs, the same work for
the manual and the autodiff path. Per-example gradients do the forward and
eq. (1) matmuls and B outer products δ^l (a^{l-1})ᵀ of N_l N_{l-1} multiplies
each: Σ_l B N_l N_{l-1} (5 − 2 [l = 2]). The matmul peak is the best median
rate 2 n³ / t over a few square sizes n of a jitted float32 product, timed in
the same run.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import manualbp as mbp
from manualbp.data import random_batch
from manualbp.tools import timing


@dataclasses.dataclass(frozen=True)
class Config:
    """One benchmark network and batch size (float32)."""

    name: str
    sizes: tuple[int, ...]
    hidden: str
    output: str
    loss: str
    batch: int
    paired_peak: bool = False
    """Time the matmul peak in the same rounds (the configuration with a target on it)."""

    def net(self) -> mbp.MLP:
        return mbp.MLP(self.sizes, hidden=self.hidden, output=self.output, loss=self.loss)


CONFIGS = (
    Config("small", (64, 32, 10), "tanh", "softmax", "cross_entropy", 128),
    Config("nielsen", (784, 30, 10), "sigmoid", "sigmoid", "mse", 10),
    Config("regression", (1, 64, 64, 1), "tanh", "identity", "mse", 1024),
    Config("medium", (784, 512, 512, 10), "relu", "softmax", "cross_entropy", 512),
    Config("deep", (784,) + (256,) * 8 + (10,), "tanh", "softmax", "cross_entropy", 256),
    Config("large", (1024, 2048, 2048, 1024), "gelu", "identity", "mse", 1024, paired_peak=True),
)
CONFIGS_BY_NAME = {c.name: c for c in CONFIGS}
QUICK_CONFIGS = ("small", "nielsen", "regression")
"""What ``--quick`` times: the configurations whose calls take milliseconds."""

TRAINING = Config("nielsen", (784, 30, 10), "sigmoid", "sigmoid", "mse", 10)
"""The training benchmark: Nielsen's chapter-1 network and SGD with η = 3."""
TRAINING_ETA = 3.0
TRAINING_BATCHES = (10, 100)
"""Mini-batch sizes for the training rows: the textbook's 10, and 100."""
TRAINING_EPOCHS = 3
"""Epochs per timed `train` call: a run's one-time setup (input checks, placing the
data on the device) is shared by its epochs, as in real use."""


# --- FLOP counts (documented in the module docstring) ----------------------------


def value_and_grad_flops(sizes: Sequence[int], batch: int) -> dict[str, int]:
    """Matmul FLOPs of one value-and-grad: forward, eq. (1) and eq. (2), and their total."""
    layers = list(zip(sizes[:-1], sizes[1:], strict=True))  # (n_in, n_out) for l = 2..L
    forward = sum(2 * batch * n_out * n_in for n_in, n_out in layers)
    eq2 = forward
    eq1 = sum(2 * batch * n_out * n_in for n_in, n_out in layers[1:])
    return {"forward": forward, "eq1": eq1, "eq2": eq2, "total": forward + eq1 + eq2}


def per_example_flops(sizes: Sequence[int], batch: int) -> int:
    """FLOPs of per-example gradients: forward and eq. (1) matmuls, B outer products for eq. (2)."""
    counts = value_and_grad_flops(sizes, batch)
    outer = sum(batch * n_out * n_in for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True))
    return counts["forward"] + counts["eq1"] + outer


def per_example_shapes(sizes: Sequence[int], batch: int) -> list[tuple[int, ...]]:
    """Shapes of the per-example gradients: (B, N_l, N_{l-1}) and (B, N_l) for each layer."""
    layers = zip(sizes[:-1], sizes[1:], strict=True)
    return [shape for n_in, n_out in layers for shape in ((batch, n_out, n_in), (batch, n_out))]


def per_example_bytes(sizes: Sequence[int], batch: int, itemsize: int = 4) -> int:
    """Bytes of the materialized per-example gradients (every W^l and b^l, B times)."""
    return sum(math.prod(shape) for shape in per_example_shapes(sizes, batch)) * itemsize


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
    load_before = os.getloadavg()
    first = timing.first_calls(fns)
    round_s = sum(timing.seconds(fn) for fn in fns.values())
    times = timing.interleaved(fns, timing.repeats_for(round_s, budget_s, repeats))
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
    per_example = lambda: mbp.per_example_grads(net, params, X, Y)  # noqa: E731
    result["per_example"] = _bench_per_example(
        config,
        fns["manual"],
        per_example,
        result["manual"]["median_s"],
        repeats,
        budget_s,
        per_example_limit,
    )
    result["loadavg_before"] = load_before
    result["loadavg_after"] = os.getloadavg()
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


def _bench_per_example(
    config, batch_fn, per_example_fn, batch_s, repeats, budget_s, per_example_limit
) -> dict:
    """Per-example gradients timed in their own pair against the batch gradient."""
    size = per_example_bytes(config.sizes, config.batch)
    if size > per_example_limit:
        return {
            "skipped": f"would materialize {size / 2**30:.1f} GiB of per-example gradients "
            f"(limit {per_example_limit / 2**30:.1f} GiB)"
        }
    # Its own A B pair against the batch gradient: the per-example run writes
    # B copies of every gradient and would disturb the manual/autodiff pair.
    pair = {"batch": batch_fn, "per_example": per_example_fn}
    first = timing.seconds(per_example_fn)
    jax.block_until_ready(per_example_fn())
    round_s = batch_s + timing.seconds(per_example_fn)
    times = timing.interleaved(pair, timing.repeats_for(round_s, budget_s / 2, repeats))
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


# --- training ------------------------------------------------------------------------


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def numpy_sgd_epoch(
    params: list[tuple[np.ndarray, np.ndarray]],
    X: np.ndarray,
    Y: np.ndarray,
    batch_size: int,
    eta: float,
    rng: np.random.Generator,
) -> None:
    """One epoch of the textbook loop, in place: sigmoid layers, E = ½‖ŷ − y‖², plain SGD.

    One example at a time, as Nielsen's ``network.py``: forward storing every z^l
    and a^l, δ^L by eq. (4), δ^l by eq. (1), ∂E/∂W^l and ∂E/∂b^l by eqs. (2), (3),
    summed over the mini-batch, then W ← W − η/m Σ ∂E/∂W. The baseline for the
    training throughput of `manualbp.training`.
    """
    order = rng.permutation(len(X))
    for start in range(0, len(X) - batch_size + 1, batch_size):
        sum_dW = [np.zeros_like(W) for W, _ in params]
        sum_db = [np.zeros_like(b) for _, b in params]
        for i in order[start : start + batch_size]:
            zs, as_ = [], [X[i]]
            for W, b in params:
                zs.append(W @ as_[-1] + b)
                as_.append(_sigmoid(zs[-1]))
            delta = (as_[-1] - Y[i]) * as_[-1] * (1 - as_[-1])  # eq. (4), σ' = a(1 − a)
            for k in reversed(range(len(params))):
                sum_dW[k] += np.outer(delta, as_[k])  # eq. (2)
                sum_db[k] += delta  # eq. (3)
                if k > 0:
                    delta = (params[k][0].T @ delta) * as_[k] * (1 - as_[k])  # eq. (1)
        for k, (W, b) in enumerate(params):
            W -= eta / batch_size * sum_dW[k]
            b -= eta / batch_size * sum_db[k]


def _train_epochs(train, net, params, optimizer, X, Y, batch_size: int, grad: str):
    return train(
        net,
        params,
        optimizer,
        X,
        Y,
        epochs=TRAINING_EPOCHS,
        batch_size=batch_size,
        key=jax.random.key(2),
        grad=grad,
        progress=False,
    ).params


def bench_training(*, n_train: int, n_numpy: int, repeats: int) -> dict:
    """Epoch throughput (samples/s): `manualbp.training` manual vs autodiff, and the NumPy loop.

    One row per mini-batch size in ``TRAINING_BATCHES``: the textbook's 10, where
    each step is too small to keep the machine busy, and 100. The three run in
    the same interleaved rounds (the NumPy loop on the first ``n_numpy``
    examples), so both ratios are also taken round by round.
    """
    config = TRAINING
    result = {"config": dataclasses.asdict(config), "eta": TRAINING_ETA, "n_train": n_train}
    net = config.net()
    params = net.init(jax.random.key(0), scheme="nielsen")
    key_X, key_Y = jax.random.split(jax.random.key(1))
    X = jax.random.uniform(key_X, (n_train, config.sizes[0]), jnp.float32)
    labels = jax.random.randint(key_Y, (n_train,), 0, config.sizes[-1])
    Y = jax.nn.one_hot(labels, config.sizes[-1], dtype=jnp.float32)
    X_np, Y_np = np.asarray(X[:n_numpy]), np.asarray(Y[:n_numpy])
    optimizer = optax.sgd(TRAINING_ETA)  # one object, so the compiled epoch is reused

    result["batches"] = []
    for batch_size in TRAINING_BATCHES:
        np_params = [(np.array(W), np.array(b)) for W, b in params]
        rng = np.random.default_rng(0)
        fns = {
            grad: functools.partial(
                _train_epochs, mbp.train, net, params, optimizer, X, Y, batch_size, grad
            )
            for grad in ("manual", "autodiff")
        }
        fns["numpy"] = functools.partial(
            numpy_sgd_epoch, np_params, X_np, Y_np, batch_size, TRAINING_ETA, rng
        )
        first = timing.first_calls(fns)
        times = timing.interleaved(fns, repeats)
        samples = {
            "manual": TRAINING_EPOCHS * (n_train // batch_size * batch_size),
            "autodiff": TRAINING_EPOCHS * (n_train // batch_size * batch_size),
            "numpy": n_numpy // batch_size * batch_size,
        }
        row = {"batch_size": batch_size}
        for name in fns:
            summary = timing.summary(times[name], first[name])
            summary["samples"] = samples[name]
            summary["samples_per_s"] = samples[name] / summary["median_s"]
            row[name] = summary
        row["ratio_manual_over_autodiff"] = (
            row["manual"]["samples_per_s"] / row["autodiff"]["samples_per_s"]
        )
        row["ratio_manual_over_numpy"] = (
            row["manual"]["samples_per_s"] / row["numpy"]["samples_per_s"]
        )
        # Throughput ratios round by round: (samples / t_manual) / (samples' / t_other).
        row["paired_manual_over_autodiff"] = timing.paired_ratio(times["autodiff"], times["manual"])
        row["paired_manual_over_numpy"] = timing.paired_ratio(
            times["numpy"], times["manual"], scale=samples["manual"] / samples["numpy"]
        )
        result["batches"].append(row)
    return result


# --- environment and report ------------------------------------------------------------


def _fraction(row: dict, peak: dict) -> str:
    """Manual GFLOP/s over the matmul peak; paired round by round where measured so."""
    paired = row.get("paired_fraction_of_matmul")
    if paired is None:
        return f"{row['manual']['gflops'] / peak['gflops_median']:.0%}"
    text = f"{paired['median']:.0%}"
    if paired["ci95"]:
        text += f" [{paired['ci95'][0]:.0%}, {paired['ci95'][1]:.0%}]"
    return text + f" of {paired['peak_gflops_median']:.0f}, paired"


def _ci_header(paired_ratios) -> str:
    """ " [95% CI]" over a column where some row has an interval; nothing over medians alone."""
    return " [95% CI]" if any(paired["ci95"] for paired in paired_ratios) else ""


def _ratio(paired: dict, digits: int = 3, unit: str = "") -> str:
    text = f"{paired['median']:.{digits}f}{unit}"
    if paired["ci95"]:
        low, high = paired["ci95"]
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g}" if seconds < 10 else f"{seconds * 1e3:.0f}"


def markdown(report: dict) -> str:
    """The report as markdown tables."""
    env, peak = report["environment"], report["matmul"]
    ci = _ci_header(row["paired_manual_over_autodiff"] for row in report["configs"])
    lines = [
        f"Device: {env['device']} ({env['cpu_count']} CPUs visible); jax {env['versions']['jax']}; "
        f"load average at start {env['loadavg'][0]:.2f}.",
        f"float32 matmul peak (best median rate over sizes "
        f"{', '.join(str(rate['n']) for rate in peak['sizes'])}; at {peak['n']}): "
        f"{peak['gflops_median']:.1f} GFLOP/s.",
        "",
        f"| config | B | manual ms | autodiff ms | manual/autodiff{ci} | manual GFLOP/s "
        "| % of matmul | per-example ms | per-example/batch | new memory ms "
        "| compile s (manual, autodiff) | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["configs"]:
        m, a, pe = row["manual"], row["autodiff"], row["per_example"]
        if "skipped" in pe:
            pe_ms, pe_ratio, fresh_ms = "skipped", "—", "—"
        else:
            pe_ms, pe_ratio = _ms(pe["median_s"]), f"{pe['ratio_over_batch']:.2f}"
            fresh_ms = _ms(pe["fresh_memory"]["median_s"])
        lines.append(
            f"| {row['config']['name']} | {row['config']['batch']} | {_ms(m['median_s'])} "
            f"| {_ms(a['median_s'])} | {_ratio(row['paired_manual_over_autodiff'])} "
            f"| {m['gflops']:.1f} | {_fraction(row, peak)} | {pe_ms} "
            f"| {pe_ratio} | {fresh_ms} | {m['compile_s']:.2f}, {a['compile_s']:.2f} "
            f"| {row['loadavg_before'][0]:.1f} |"
        )
    lines += [
        "",
        "manual/autodiff: median of the per-round ratios of back-to-back calls"
        + (
            ", with a distribution-free 95% interval for it"
            if ci
            else " (too few rounds for a 95% interval)"
        )
        + ". % of matmul: over the peak above, or, "
        "where it says paired, over the best matmul rate timed in each of the row's own "
        "rounds (the median of those rates in GFLOP/s after 'of'). New memory: the time to return "
        "new arrays of the per-example gradients' shapes, filled with one value (the floor "
        "under materializing them).",
    ]
    training = report.get("training")
    if training:
        lines += [
            "",
            f"Training {TRAINING.sizes} with SGD, {TRAINING_EPOCHS} epochs per `train` call; "
            "the NumPy loop one epoch (samples/s, median):",
            "",
        ]
        ci_a = _ci_header(row["paired_manual_over_autodiff"] for row in training["batches"])
        ci_n = _ci_header(row["paired_manual_over_numpy"] for row in training["batches"])
        lines += [
            f"| mini-batch | manual | autodiff | manual/autodiff{ci_a} | NumPy loop "
            f"| manual/NumPy{ci_n} |",
            "|---|---|---|---|---|---|",
        ]
        for row in training["batches"]:
            m, a = row["manual"]["samples_per_s"], row["autodiff"]["samples_per_s"]
            lines.append(
                f"| {row['batch_size']} | {m:,.0f} | {a:,.0f} "
                f"| {_ratio(row['paired_manual_over_autodiff'], digits=2)} "
                f"| {row['numpy']['samples_per_s']:,.0f} "
                f"| {_ratio(row['paired_manual_over_numpy'], digits=1, unit='×')} |"
            )
    lines.append("")
    return "\n".join(lines)
