"""Does full-batch gradient descent train at the edge of stability (Cohen et al., ICLR 2021)?

The claim: under full-batch gradient descent with step size η, the sharpness
(the largest eigenvalue of ∇²Ē) rises ("progressive sharpening") until it
reaches about 2/η, then hovers there while the loss keeps falling, though not
monotonically. A tanh MLP with the mean squared error on one-hot targets
(scikit-learn's digits, all 1,797 images, standardized; or the first
``n_examples`` of MNIST) is trained at several step sizes from the same start.
Every ``every`` steps the sharpness is measured by power iteration with the
hand-derived Hessian-vector product (`mbp.extensions.hvp`, equations (18),
(19)), warm-started from the previous eigenvector; each measurement's last
product is also formed by autodiff (``jax.jvp`` of ``jax.grad``) and the
largest relative difference is reported. The answer: per η, the sharpness over
the last half of training against 2/η, how often the loss went up, and a plot.

    python experiments/edge_of_stability.py        # writes runs/edge_of_stability/<timestamp>/
    python experiments/edge_of_stability.py -h     # every flag
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

import manualbp as mbp
from manualbp import backprop, data
from manualbp.tools import experiment


@dataclasses.dataclass(frozen=True)
class Config(experiment.RunConfig):
    dataset: Literal["digits", "mnist"] = "digits"  # digits needs scikit-learn, mnist IDX files
    mnist_dir: str | None = None  # folder of the MNIST IDX files (default: $MANUALBP_MNIST_DIR)
    n_examples: int = 1797  # training examples (digits has 1,797)
    widths: tuple[int, ...] = (100, 100)  # hidden widths N_2 ... N_{L-1}
    step_sizes: tuple[float, ...] = (0.05, 0.15, 0.2, 0.3)  # η, one run each from the same start
    steps: int = 2000  # full-batch gradient descent steps per η
    every: int = 25  # steps between sharpness measurements
    power_iterations: int = 20  # Hessian-vector products per measurement (warm-started)


def load(config: Config):
    """Standardized inputs and one-hot float targets for the first ``n_examples``."""
    if config.dataset == "digits":
        X, labels = data.digits()
    else:
        (X, labels), _ = data.mnist(config.mnist_dir)
    X, labels = X[: config.n_examples], labels[: config.n_examples]
    (X,) = data.standardize(X)
    return X, data.one_hot(labels, 10)


def programs(net: mbp.MLP, X, Y, config: Config):
    """Jitted: ``every`` GD steps, a power iteration, and the autodiff check of hvp."""

    @jax.jit
    def descend(params, eta):
        def step(p, _):
            E, grads = backprop.fast_backprop(net, p, X, Y)
            return jax.tree.map(lambda w, g: w - eta * g, p, grads), E

        return jax.lax.scan(step, params, None, length=config.every)

    def dot(u, w):
        return sum(
            jnp.sum(a * b) for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(w), strict=True)
        )

    @jax.jit
    def sharpness(params, v):
        def iterate(_, carry):
            v, _ = carry
            Hv = mbp.extensions.hvp(net, params, X, Y, v)
            norm = jnp.sqrt(dot(Hv, Hv))
            return jax.tree.map(lambda t: t / norm, Hv), dot(v, Hv)  # λ ≈ vᵀHv, ‖v‖ = 1

        return jax.lax.fori_loop(0, config.power_iterations, iterate, (v, jnp.float32(0)))

    @jax.jit
    def hvp_difference(params, v):
        manual = mbp.extensions.hvp(net, params, X, Y, v)
        grad = jax.grad(lambda q: mbp.loss(net, q, X, Y))
        reference = jax.jvp(grad, (params,), (v,))[1]
        pairs = zip(jax.tree.leaves(manual), jax.tree.leaves(reference), strict=True)
        error = jnp.max(jnp.stack([jnp.max(jnp.abs(m - r)) for m, r in pairs]))
        scale = jnp.max(jnp.stack([jnp.max(jnp.abs(r)) for r in jax.tree.leaves(reference)]))
        return error / scale

    return descend, sharpness, hvp_difference


def train_one(run, net, params, X, Y, eta: float, config: Config, key) -> dict:
    descend, sharpness, hvp_difference = programs(net, X, Y, config)
    v = jax.tree.map(lambda t: jax.random.normal(key, t.shape, t.dtype), params)
    v = jax.tree.map(lambda t: t / jnp.sqrt(sum(jnp.sum(u * u) for u in jax.tree.leaves(v))), v)
    steps, losses, sharp, differences = [], [], [], []
    E0 = float(mbp.loss(net, params, X, Y))
    all_losses = [E0]
    for k in range(config.steps // config.every):
        params, Es = descend(params, jnp.float32(eta))
        all_losses += [float(E) for E in Es[1:]] + [float(mbp.loss(net, params, X, Y))]
        if not np.isfinite(all_losses[-1]):
            break
        v, lam = sharpness(params, v)
        difference = float(hvp_difference(params, v))
        steps.append((k + 1) * config.every)
        losses.append(all_losses[-1])
        sharp.append(float(lam))
        differences.append(difference)
        run.log(eta=eta, step=steps[-1], loss=losses[-1], sharpness=sharp[-1], hvp_diff=difference)
    half = sharp[len(sharp) // 2 :]
    increases = int(np.sum(np.diff(all_losses) > 0))
    return {
        "eta": eta,
        "two_over_eta": 2 / eta,
        "steps": steps,
        "loss": losses,
        "sharpness": sharp,
        "first_loss": E0,
        "final_loss": all_losses[-1],
        "sharpness_last_half": [float(np.min(half)), float(np.median(half)), float(np.max(half))],
        "median_over_two_over_eta": float(np.median(half)) * eta / 2,
        "first_step_within_5pct": next(
            (s for s, lam in zip(steps, sharp, strict=True) if lam >= 0.95 * 2 / eta), None
        ),
        "loss_increases": increases,
        "max_hvp_rel_diff": float(np.max(differences)),
    }


def main(config: Config) -> dict:
    run = experiment.start_run("edge_of_stability", config)
    key_init, key_v = jax.random.split(jax.random.key(config.seed))
    X, Y = load(config)
    net = mbp.MLP((X.shape[1], *config.widths, 10), hidden="tanh", output="identity", loss="mse")
    params = net.init(key_init)
    results = [train_one(run, net, params, X, Y, eta, config, key_v) for eta in config.step_sizes]
    x = results[0]["steps"]
    sharpness, loss = {}, {}
    for r in results:
        pad = [None] * (len(x) - len(r["steps"]))
        sharpness[f"η = {r['eta']:g}"] = r["sharpness"] + pad
        sharpness[f"2/η = {r['two_over_eta']:.3g}"] = [r["two_over_eta"]] * len(x)
        loss[f"η = {r['eta']:g}"] = r["loss"] + pad
    run.plot(
        "sharpness.png",
        {"sharpness (top eigenvalue of ∇²Ē)": sharpness, "loss Ē": loss},
        x=x,
        xlabel="step",
        title=f"gradient descent, tanh MLP {net.sizes}, MSE, {config.dataset}",
        logy=["loss Ē"],
    )
    rows = [
        {
            "η": r["eta"],
            "2/η": round(r["two_over_eta"], 3),
            "sharpness last half (min, median, max)": ", ".join(
                f"{s:.2f}" for s in r["sharpness_last_half"]
            ),
            "median / (2/η)": round(r["median_over_two_over_eta"], 3),
            "reaches 0.95·2/η at step": r["first_step_within_5pct"],
            "loss first → last": f"{r['first_loss']:.4f} → {r['final_loss']:.4f}",
            "loss increases": r["loss_increases"],
            "max hvp rel diff": f"{r['max_hvp_rel_diff']:.1e}",
        }
        for r in results
    ]
    summary = {"sizes": list(net.sizes), "examples": int(X.shape[0]), "results": rows}
    run.write_json("summary.json", {**summary, "curves": results})
    experiment.print_table(rows)
    print(f"run folder: {run.path}")
    return experiment.to_json(summary)


if __name__ == "__main__":
    raise SystemExit(experiment.run_main(main, Config, __doc__))
