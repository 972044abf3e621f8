"""Does full-batch training run at the edge of stability (Cohen et al., ICLR 2021 and 2022)?

The claim: under full-batch gradient descent with step size η, the sharpness
(the largest eigenvalue of ∇²Ē) rises ("progressive sharpening") until it
reaches about 2/η, then hovers there while the loss keeps falling, though not
monotonically. For Adam (Cohen et al., 2022) the same holds for the
preconditioned sharpness, the largest eigenvalue of P⁻¹∇²Ē with Adam's
preconditioner P = (1 − β₁ᵗ) diag(√ν̂ + ε), against the threshold
(2 + 2β₁)/((1 − β₁) η) (38/η for β₁ = 0.9).

A tanh MLP on standardized digits (the first ``n_examples`` of scikit-learn's
1,797), with the mean squared error on one-hot targets and with softmax
cross-entropy, is trained by full-batch gradient descent and by full-batch
Adam, from ``seeds`` initializations each. Every ``every`` steps the top
eigenvalue of ∇²Ē and of the GGN G is found by Lanczos with full
reorthogonalization (`mbp.extensions.eigenpairs`, equations (20)–(22), on the
hand-derived products), with its residual ‖A v − λ v‖. The answer: per loss
and optimizer, the sharpness over the last half of training divided by its
threshold, its median over the seeds and its spread (min, max), a plot, and
the run's manifest.

    nice python experiments/edge_of_stability.py     # about 5 min of CPU; runs/edge_of_stability/
    python experiments/edge_of_stability.py -h       # every flag
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

import manualbp as mbp
from manualbp import backprop, data
from manualbp._records import environment
from manualbp.tools import experiment


@dataclasses.dataclass(frozen=True)
class Config(experiment.RunConfig):
    data_mse: Literal["digits", "fashion"] = "digits"  # the mse's data (digits: scikit-learn)
    data_cross_entropy: Literal["digits", "fashion"] = "fashion"  # cross-entropy's data
    n_examples: int = 1000  # the first training images used
    widths: tuple[int, ...] = (64, 64)  # hidden widths N_2 ... N_{L-1}
    losses: tuple[str, ...] = ("mse", "cross_entropy")  # the mse on ŷ; cross-entropy on softmax
    optimizers: tuple[str, ...] = ("gd", "adam")  # full-batch gradient descent and Adam
    seeds: int = 3  # initializations per loss and optimizer: seed, seed + 1, ...
    eta_gd_mse: float = 0.3  # gradient descent's η for the mse
    eta_gd_cross_entropy: float = 0.15  # gradient descent's η for cross-entropy
    eta_adam_mse: float = 0.01  # Adam's η for the mse (β₁ = 0.9, β₂ = 0.999, ε = 1e-7)
    eta_adam_cross_entropy: float = 0.02  # Adam's η for cross-entropy
    steps: int = 600  # full-batch steps per run
    every: int = 30  # steps between measurements
    lanczos_steps: int = 40  # Krylov dimension m of each measurement


BETA1, BETA2, EPS = 0.9, 0.999, 1e-7


def threshold(optimizer: str, eta: float) -> float:
    """2/η for gradient descent; (2 + 2β₁)/((1 − β₁) η) for Adam (Cohen et al., 2022)."""
    return 2 / eta if optimizer == "gd" else (2 + 2 * BETA1) / ((1 - BETA1) * eta)


def load(config: Config, dataset: str):
    if dataset == "digits":
        X, labels = data.digits()
    else:
        (X, labels), _ = data.fashion_mnist()
    X, labels = X[: config.n_examples], labels[: config.n_examples]
    (X,) = data.standardize(X)
    return X, data.one_hot(labels, 10)


def make_net(config: Config, loss: str, inputs: int) -> mbp.MLP:
    output = "identity" if loss == "mse" else "softmax"
    return mbp.MLP((inputs, *config.widths, 10), hidden="tanh", output=output, loss=loss)


def step_size(config: Config, optimizer: str, loss: str) -> float:
    return getattr(config, f"eta_{optimizer}_{loss}")


def descend_program(net, X, Y, optimizer, every: int):
    """Jitted: ``every`` full-batch steps with the hand-derived gradient; the losses of each."""

    @jax.jit
    def descend(params, state):
        def step(carry, _):
            p, s = carry
            E, grads = backprop.fast_backprop(net, p, X, Y)
            # optax's Adam raises β to its int32 step count: allowed under any promotion setting.
            with jax.numpy_dtype_promotion("standard"):
                updates, s = optimizer.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), E

        return jax.lax.scan(step, (params, state), None, length=every)

    return descend


def adam_preconditioner(state, t: int):
    """P = (1 − β₁ᵗ) (√(ν/(1 − β₂ᵗ)) + ε), shaped like params: θ ← θ − η P⁻¹ m."""
    nu = state[0].nu
    return jax.tree.map(lambda v: (1 - BETA1**t) * (jnp.sqrt(v / (1 - BETA2**t)) + EPS), nu)


def sharpness(net, params, X, Y, key, config: Config, preconditioner=None) -> dict:
    """Top eigenvalue of ∇²Ē and of G (each preconditioned when P is given), with residuals."""
    out = {}
    for operator in ("hessian", "ggn"):
        pair = mbp.extensions.eigenpairs(
            net, params, X, Y, k=1, operator=operator, key=key,
            steps=config.lanczos_steps, preconditioner=preconditioner,
        )  # fmt: skip
        out[operator] = float(pair.values[0])
        out[f"{operator}_residual"] = float(pair.residuals[0] / abs(pair.values[0]))
    return out


def train_one(run, config: Config, loss: str, optimizer_name: str, seed: int, data_) -> dict:
    X, Y = data_
    net = make_net(config, loss, X.shape[1])
    params = net.init(jax.random.key(seed))
    eta = step_size(config, optimizer_name, loss)
    optimizer = optax.sgd(eta) if optimizer_name == "gd" else optax.adam(eta, BETA1, BETA2, EPS)
    state = optimizer.init(params)
    descend = descend_program(net, X, Y, optimizer, config.every)
    limit = threshold(optimizer_name, eta)
    curve, losses = [], []
    for k in range(config.steps // config.every):
        (params, state), Es = descend(params, state)
        losses += [float(E) for E in Es]
        if not np.isfinite(losses[-1]):
            break
        t = (k + 1) * config.every
        P = adam_preconditioner(state, t) if optimizer_name == "adam" else None
        measured = sharpness(net, params, X, Y, jax.random.key(seed + t), config, P)
        record = {"step": t, "loss": losses[-1], **measured, "ratio": measured["hessian"] / limit}
        run.log(loss_fn=loss, optimizer=optimizer_name, seed=seed, **record)
        curve.append(record)
    half = [r["ratio"] for r in curve[len(curve) // 2 :]]
    return {
        "loss": loss,
        "optimizer": optimizer_name,
        "seed": seed,
        "eta": eta,
        "threshold": limit,
        "curve": curve,
        "median_ratio_last_half": float(np.median(half)) if half else float("nan"),
        "peak_ratio": max((r["ratio"] for r in curve), default=float("nan")),
        "ggn_over_hessian_last": curve[-1]["ggn"] / curve[-1]["hessian"] if curve else None,
        "loss_increases": int(np.sum(np.diff(losses) > 0)),
        "final_loss": losses[-1],
        "max_relative_residual": max(max(r["hessian_residual"], r["ggn_residual"]) for r in curve),
    }


def summarize(runs: list[dict]) -> list[dict]:
    """Per loss and optimizer: the median ratio over seeds, its spread, the GGN beside H."""
    rows = []
    for loss, optimizer in dict.fromkeys((r["loss"], r["optimizer"]) for r in runs):
        group = [r for r in runs if r["loss"] == loss and r["optimizer"] == optimizer]
        ratios = [r["median_ratio_last_half"] for r in group]
        peaks = [r["peak_ratio"] for r in group]
        rows.append(
            {
                "loss": loss,
                "optimizer": optimizer,
                "η": group[0]["eta"],
                "threshold": round(group[0]["threshold"], 2),
                "λ/threshold, last half (median over seeds [min, max])": (
                    f"{np.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}]"
                ),
                "peak λ/threshold (median [min, max])": (
                    f"{np.median(peaks):.3f} [{min(peaks):.3f}, {max(peaks):.3f}]"
                ),
                "λ_G/λ_H at the end (min–max)": (
                    f"{min(r['ggn_over_hessian_last'] for r in group):.3f}–"
                    f"{max(r['ggn_over_hessian_last'] for r in group):.3f}"
                ),
                "loss increases (per seed)": ", ".join(str(r["loss_increases"]) for r in group),
                "final loss (min–max)": (
                    f"{min(r['final_loss'] for r in group):.4f}–"
                    f"{max(r['final_loss'] for r in group):.4f}"
                ),
                "max ‖Av−λv‖/|λ|": f"{max(r['max_relative_residual'] for r in group):.1e}",
                "seeds": len(group),
            }
        )
    return rows


def plot(run, runs: list[dict], config: Config) -> None:
    """One panel per loss and optimizer: λ_H/threshold (and λ_G's) per seed against the step."""
    x = list(range(config.every, config.steps + 1, config.every))
    panels = {}
    for r in runs:
        panel = panels.setdefault(f"{r['loss']}, {r['optimizer']}: λ / threshold", {})
        pad = [None] * (len(x) - len(r["curve"]))
        panel[f"H, seed {r['seed']}"] = [c["ratio"] for c in r["curve"]] + pad
        panel[f"G, seed {r['seed']}"] = [c["ggn"] / r["threshold"] for c in r["curve"]] + pad
    data_ = ", ".join(f"{loss}: {getattr(config, f'data_{loss}')}" for loss in config.losses)
    title = f"edge of stability ({data_}; {config.n_examples} examples)"
    run.plot("sharpness.png", panels, x=x, xlabel="step", title=title)


def main(config: Config) -> dict:
    run = experiment.start_run("edge_of_stability", config)
    datasets = {loss: getattr(config, f"data_{loss}") for loss in config.losses}
    loaded = {name: load(config, name) for name in set(datasets.values())}
    runs = [
        train_one(run, config, loss, optimizer, config.seed + s, loaded[datasets[loss]])
        for loss in config.losses
        for optimizer in config.optimizers
        for s in range(config.seeds)
    ]
    rows = summarize(runs)
    plot(run, runs, config)
    run.write_json("summary.json", {"results": rows, "runs": runs})
    run.write_json(
        "manifest.json",
        {
            "command": " ".join(["python", *sys.argv]),
            "config": config,
            "files": ["config.json", "metrics.jsonl", "summary.json", "sharpness.png"],
            "environment": environment(machine=True),
        },
    )
    experiment.print_table(rows)
    print(f"run folder: {run.path}")
    return experiment.to_json({"results": rows})


if __name__ == "__main__":
    raise SystemExit(experiment.run_main(main, Config, __doc__))
