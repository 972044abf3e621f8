"""Benchmark row: one training epoch on full-size Fashion-MNIST, manualbp against scikit-learn.

The recipe is the Fashion-MNIST paper's MLPClassifier benchmark entry: 784-100-10,
relu, softmax with cross-entropy, Adam (lr 1e-3), mini-batches of 200, all
60,000 training images, float32 on both sides. Three trainers run it:

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
"""

from __future__ import annotations

import functools
import os
import warnings

import jax
import numpy as np
import optax

import manualbp as mbp
from manualbp import data
from manualbp.tools import timing

SIZES = (784, 100, 10)
BATCH = 200
LR = 1e-3
EPOCHS = 3
PEAK_SIZES = (512, 1024, 2048)


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


def bench_fashion_epoch(repeats: int) -> dict:
    """Seconds per epoch of the three trainers, their paired ratios, and the share of peak.

    Returns:
        {"skipped": reason} without the Fashion-MNIST files or scikit-learn;
        else the per-trainer timing summaries (of calls of `EPOCHS` epochs),
        ``epoch_s`` per trainer, ``paired`` ratios, ``peak`` and ``fraction_of_peak``.
    """
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return {"skipped": "scikit-learn absent: pip install manualbp[experiments]"}
    try:
        (X, Y), _ = data.fashion_mnist()
    except FileNotFoundError:
        return {"skipped": "Fashion-MNIST absent: apt-get install dataset-fashion-mnist"}
    net = mbp.MLP(SIZES, hidden="relu", output="softmax", loss="cross_entropy")
    params = net.init(jax.random.key(0), scheme="glorot")
    optimizer = optax.adam(LR)  # one object, so the compiled epoch is reused
    X_np, Y_np = np.asarray(X), np.asarray(Y)
    fns = {
        grad: functools.partial(_manualbp_epochs, net, params, optimizer, X, Y, grad)
        for grad in ("manual", "autodiff")
    }
    fns["sklearn"] = functools.partial(_sklearn_epochs, X_np, Y_np)
    load_before = os.getloadavg()
    first = timing.first_calls(fns)
    times = timing.interleaved(fns, repeats)
    peak = timing.matmul_peak(PEAK_SIZES, repeats=5)
    flops = epoch_flops(SIZES, X.shape[0], BATCH)
    result = {
        "recipe": "784-100-10 relu, softmax + cross-entropy, Adam 1e-3, batch 200, float32",
        "n_train": int(X.shape[0]),
        "epochs_per_call": EPOCHS,
        "epoch_flops": flops,
        "peak": {"n": peak["n"], "gflops_median": peak["gflops_median"]},
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
    }
    for name in fns:
        result[name] = timing.summary(times[name], first[name])
        epoch_s = result[name]["median_s"] / EPOCHS
        result[name]["epoch_s"] = epoch_s
        result[name]["gflops"] = flops / epoch_s / 1e9
        result[name]["fraction_of_peak"] = result[name]["gflops"] / peak["gflops_median"]
    result["paired"] = {
        "manual_over_autodiff_time": timing.paired_ratio(times["manual"], times["autodiff"]),
        "sklearn_over_manual_time": timing.paired_ratio(times["sklearn"], times["manual"]),
    }
    return result


def markdown(result: dict) -> str:
    """The row as a small Markdown table."""
    if "skipped" in result:
        return f"Fashion-MNIST epoch: skipped ({result['skipped']})"
    lines = [
        "| trainer | s / epoch | GFLOP/s | of matmul peak |",
        "|---|---|---|---|",
    ]
    for name in ("manual", "autodiff", "sklearn"):
        row = result[name]
        lines.append(
            f"| {name} | {row['epoch_s']:.3f} | {row['gflops']:.0f} | "
            f"{row['fraction_of_peak']:.0%} |"
        )
    paired = result["paired"]
    lines.append("")
    lines.append(
        f"Paired, median over {len(paired['sklearn_over_manual_time']['ratios'])} rounds: "
        f"scikit-learn / manual time {_ratio(paired['sklearn_over_manual_time'])}, "
        f"manual / autodiff time {_ratio(paired['manual_over_autodiff_time'])}; "
        f"peak {result['peak']['gflops_median']:.0f} GFLOP/s (n = {result['peak']['n']}); "
        f"1-minute load average {result['load_average_1min']['before']:.1f} before, "
        f"{result['load_average_1min']['after']:.1f} after."
    )
    return "\n".join(lines)


def _ratio(paired: dict) -> str:
    interval = paired["ci95"]
    text = f"{paired['median']:.2f}"
    return text + (f" (95% CI {interval[0]:.2f}–{interval[1]:.2f})" if interval else "")


if __name__ == "__main__":
    import json
    import sys

    report = bench_fashion_epoch(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
    print(json.dumps(report, indent=2))
    print(markdown(report))
