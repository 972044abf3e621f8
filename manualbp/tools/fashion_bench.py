"""Benchmark row: one training epoch on full-size Fashion-MNIST, manualbp against scikit-learn.

The recipe is the Fashion-MNIST paper's MLPClassifier benchmark entry: 784-100-10,
relu, softmax with cross-entropy, Adam (lr 1e-3), mini-batches of 200, all
60,000 training images, float32 on both sides (``--dtype float64``: float64 on both, JAX's
x64 switched on). Three trainers run it:

* ``manual``: `manualbp.training` with the hand-derived gradients (equations (1)–(4));
* ``autodiff``: the same call with ``grad="autodiff"``;
* ``sklearn``: scikit-learn's ``MLPClassifier.fit``, its NumPy backprop on its BLAS.

Each timed call trains `EPOCHS` epochs from the same start (so the per-call
costs, `train`'s input checks and scikit-learn's, are shared over several
epochs) and the epoch time is the call's time over `EPOCHS`. The three run in
interleaved rounds (`timing.interleaved`) and are compared round by round
(`timing.paired_ratio`). The epoch's FLOP rate counts the matmuls of
equations (1)–(4) as `manualbp.tools.bench` does, 2 B Σ_l N_l N_{l-1} (3 − [l = 2])
per step of B, over ⌊60000 / 200⌋ = 300 steps, and is set against the float32
matmul peak measured in the same run (`timing.matmul_peak`).

Threads: by default each library uses what it finds (XLA's CPU thread pool and
OpenBLAS's threads, one per core). ``--threads 1`` confines the process to one
CPU before JAX starts its backend, since XLA's CPU client sizes its thread pool
by the CPUs the process may run on (on jax 0.10.2 the flag
``--xla_cpu_multi_thread_eigen=false`` left the work spread over its threads),
and limits OpenBLAS and OpenMP to one thread with threadpoolctl. Each result
records the process's CPU time over the wall time of the timed rounds, at most
1 when one thread did the work.

    python -m manualbp.tools.fashion_bench 11
    python -m manualbp.tools.fashion_bench 5 --threads 1 --dtype float64 --trainers manual sklearn
    python -m manualbp.tools.fashion_bench 5 --thread-settings   # the four settings, paired
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import time
import warnings

import jax
import numpy as np
import optax

import manualbp as mbp
from manualbp import data
from manualbp.tools import timing
from manualbp.tools.fashion_bench_threads import one_thread, thread_settings

SIZES = (784, 100, 10)
BATCH = 200
LR = 1e-3
EPOCHS = 3
PEAK_SIZES = (512, 1024, 2048)
TRAINERS = ("manual", "autodiff", "sklearn")


def epoch_flops(sizes, n: int, batch: int) -> int:
    """Matmul FLOPs of one epoch: ⌊n / B⌋ steps of forward, eq. (2) and eq. (1) but for l = 2."""
    layers = list(zip(sizes[:-1], sizes[1:], strict=True))
    per_step = sum(
        2 * batch * n_out * n_in * (3 if k else 2) for k, (n_in, n_out) in enumerate(layers)
    )
    return (n // batch) * per_step


def _manualbp_epochs(net, params, optimizer, X, Y, grad: str):
    return mbp.train(
        net,
        params,
        optimizer,
        X,
        Y,
        epochs=EPOCHS,
        batch_size=BATCH,
        key=jax.random.key(1),
        grad=grad,
        progress=False,
    ).params


def _sklearn_epochs(X, Y):
    from sklearn.neural_network import MLPClassifier

    classifier = MLPClassifier(
        hidden_layer_sizes=SIZES[1:-1],
        activation="relu",
        solver="adam",
        batch_size=BATCH,
        learning_rate_init=LR,
        max_iter=EPOCHS,
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "maximum iterations reached": on purpose
        return classifier.fit(X, Y)


def bench_fashion_epoch(
    repeats: int, dtype: str = "float32", trainers=TRAINERS, peak: bool = True
) -> dict:
    """Seconds per epoch of the trainers, their paired ratios, and the share of peak.

    Args:
        repeats: interleaved rounds, after one compiling and one warm-up call each.
        dtype: ``"float32"`` or ``"float64"`` (needs JAX's x64 switched on).
        trainers: some of `TRAINERS`; ``manual`` always runs, as every ratio's reference.
        peak: also measure the float32 matmul peak (skipped: no share of peak).

    Returns:
        {"skipped": reason} without the Fashion-MNIST files or scikit-learn;
        else the per-trainer timing summaries (of calls of `EPOCHS` epochs),
        ``epoch_s`` (wall) and ``cpu_epoch_s`` (the process's CPU time) per
        trainer, ``paired`` ratios of wall times and ``paired_cpu`` of CPU times,
        ``cpu_over_wall`` of the timed rounds, and with ``peak`` the ``peak`` and
        ``fraction_of_peak``.
    """
    if dtype == "float64" and not jax.config.jax_enable_x64:
        raise ValueError("dtype float64: expected JAX's x64 switched on, got it off")
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return {"skipped": "scikit-learn absent: pip install manualbp[experiments]"}
    try:
        (X, Y), _ = data.fashion_mnist(dtype=dtype)
    except FileNotFoundError:
        return {"skipped": "Fashion-MNIST absent: apt-get install dataset-fashion-mnist"}
    fns = _trainer_calls(X, Y, dtype, trainers)
    load_before = os.getloadavg()
    first = timing.first_calls(fns)
    cpu_s = {name: [] for name in fns}
    wall, cpu = time.perf_counter(), time.process_time()
    times = timing.interleaved(_cpu_timed(fns, cpu_s), repeats)
    cpu_over_wall = (time.process_time() - cpu) / (time.perf_counter() - wall)
    flops = epoch_flops(SIZES, X.shape[0], BATCH)
    result = {
        "recipe": f"784-100-10 relu, softmax + cross-entropy, Adam 1e-3, batch 200, {dtype}",
        "n_train": int(X.shape[0]),
        "epochs_per_call": EPOCHS,
        "epoch_flops": flops,
        "cpu_over_wall": cpu_over_wall,
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
    }
    if peak:
        measured = timing.matmul_peak(PEAK_SIZES, repeats=5)
        result["peak"] = {"n": measured["n"], "gflops_median": measured["gflops_median"]}
    for name in fns:
        result[name] = timing.summary(times[name], first[name])
        epoch_s = result[name]["median_s"] / EPOCHS
        result[name]["epoch_s"] = epoch_s
        result[name]["gflops"] = flops / epoch_s / 1e9
        if peak:
            result[name]["fraction_of_peak"] = result[name]["gflops"] / measured["gflops_median"]
    for name in fns:
        result[name]["cpu_epoch_s"] = float(np.median(cpu_s[name])) / EPOCHS
    result["paired"] = _paired(times)
    result["paired_cpu"] = _paired(cpu_s)
    return result


def _cpu_timed(fns: dict, cpu_s: dict) -> dict:
    """The same calls, each appending the process's CPU seconds it took to ``cpu_s[name]``.

    On a shared machine a call's wall time includes the time it waited for a core; its CPU
    time does not (with one thread, it is the work itself; with more, their sum).
    """

    def timed(name, fn):
        def call():
            start = time.process_time()
            jax.block_until_ready(fn())
            cpu_s[name].append(time.process_time() - start)

        return call

    return {name: timed(name, fn) for name, fn in fns.items()}


def _paired(times: dict) -> dict:
    """Round-by-round ratios: manual / autodiff and scikit-learn / manual, where they ran."""
    pairs = {
        "manual_over_autodiff_time": ("manual", "autodiff"),
        "sklearn_over_manual_time": ("sklearn", "manual"),
    }
    return {
        key: timing.paired_ratio(times[a], times[b])
        for key, (a, b) in pairs.items()
        if a in times and b in times
    }


def _trainer_calls(X, Y, dtype: str, trainers) -> dict:
    """One call per trainer, each training `EPOCHS` epochs from the same start."""
    net = mbp.MLP(SIZES, hidden="relu", output="softmax", loss="cross_entropy")
    params = jax.tree.map(lambda a: a.astype(dtype), net.init(jax.random.key(0), scheme="glorot"))
    optimizer = optax.adam(LR)  # one object, so the compiled epoch is reused
    fns = {
        grad: functools.partial(_manualbp_epochs, net, params, optimizer, X, Y, grad)
        for grad in ("manual", "autodiff")
        if grad == "manual" or grad in trainers
    }
    if "sklearn" in trainers:
        fns["sklearn"] = functools.partial(_sklearn_epochs, np.asarray(X), np.asarray(Y))
    return fns


def markdown(result: dict) -> str:
    """The row as a small Markdown table, with the trainers and the peak the result has."""
    if "skipped" in result:
        return f"Fashion-MNIST epoch: skipped ({result['skipped']})"
    names = [name for name in TRAINERS if name in result]
    has_peak = "peak" in result
    lines = [
        "| trainer | s / epoch | CPU s / epoch | GFLOP/s |"
        + (" of matmul peak |" if has_peak else ""),
        "|---|---|---|---|" + ("---|" if has_peak else ""),
    ]
    for name in names:
        row = result[name]
        share = f" {row['fraction_of_peak']:.0%} |" if has_peak else ""
        lines.append(
            f"| {name} | {row['epoch_s']:.3f} | {row['cpu_epoch_s']:.3f} | {row['gflops']:.0f} |"
            + share
        )
    paired, paired_cpu = result["paired"], result["paired_cpu"]
    texts = [
        f"{label} time {_ratio(paired[key])} (CPU time {_ratio(paired_cpu[key])})"
        for key, label in (
            ("sklearn_over_manual_time", "scikit-learn / manual"),
            ("manual_over_autodiff_time", "manual / autodiff"),
        )
        if key in paired
    ]
    rounds = len(next(iter(paired.values()))["ratios"]) if paired else 0
    notes = [f"Paired, median over {rounds} rounds: " + ", ".join(texts)] if texts else []
    if has_peak:
        notes.append(
            f"peak {result['peak']['gflops_median']:.0f} GFLOP/s (n = {result['peak']['n']})"
        )
    notes.append(
        f"CPU time / wall time {result['cpu_over_wall']:.2f}; "
        f"1-minute load average {result['load_average_1min']['before']:.1f} before, "
        f"{result['load_average_1min']['after']:.1f} after."
    )
    return "\n".join([*lines, "", "; ".join(notes)])


def _ratio(paired: dict) -> str:
    interval = paired["ci95"]
    text = f"{paired['median']:.2f}"
    return text + (f" (95% CI {interval[0]:.2f}–{interval[1]:.2f})" if interval else "")


def main(argv=None) -> dict | list[dict]:
    parser = argparse.ArgumentParser(
        prog="python -m manualbp.tools.fashion_bench",
        description="One Fashion-MNIST training epoch: manualbp against scikit-learn.",
    )
    parser.add_argument("repeats", nargs="?", type=int, default=7, help="rounds (default 7)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--threads", choices=("default", "1"), default="default")
    parser.add_argument("--trainers", nargs="+", choices=TRAINERS, default=list(TRAINERS))
    parser.add_argument("--no-peak", action="store_true", help="skip the matmul peak")
    parser.add_argument("--json", action="store_true", help="print only the result's JSON")
    parser.add_argument(
        "--thread-settings",
        action="store_true",
        help="manual and sklearn, one thread and default × float32 and float64, each in its own "
        "process; takes no other flag but the rounds",
    )
    args = parser.parse_args(argv)
    others = [args.dtype != "float32", args.threads != "default", args.no_peak, args.json]
    if args.thread_settings and (any(others) or args.trainers != list(TRAINERS)):
        parser.error("--thread-settings: expected only the rounds beside it, got other flags")
    if args.thread_settings:
        results = thread_settings(args.repeats)
        print(json.dumps(results))
        return results
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    threads = one_thread() if args.threads == "1" else contextlib.nullcontext()
    with threads:
        report = bench_fashion_epoch(args.repeats, args.dtype, args.trainers, not args.no_peak)
    report["threads"] = args.threads
    print(json.dumps(report, indent=None if args.json else 2))
    if not args.json:
        print(markdown(report))
    return report


if __name__ == "__main__":
    main()
