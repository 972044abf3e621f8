"""What test accuracy does DP-SGD reach at which ε on digits, and what does the clipped step cost?

A 64-64-10 tanh/softmax net on scikit-learn's 8×8 digits (standardized), trained
once without privacy and once per noise multiplier σ with
``mbp.train(..., privacy=mbp.DPSGD(l2_clip, σ))``: each step clips every
example's gradient to norm C by equations (5), (8), (9) (no per-example
gradient formed) and adds noise of standard deviation σC/B. The history
records ε at δ after every epoch (dp-accounting's RDP accountant, which
assumes Poisson sampling; training takes fixed-size shuffled batches, so ε is
the usual approximation). The answer: final test accuracy and ε per σ, the
accuracy-against-ε curves (``accuracy_vs_epsilon.png``), and the manual
clipped step timed side by side with the ``vmap(jax.grad)``-then-clip route
JAX users write today, on the same batch.

    pip install -e ".[experiments,privacy]"
    python experiments/dp_sgd.py          # writes runs/dp_sgd/<timestamp>/
    python experiments/dp_sgd.py -h       # every flag
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

import manualbp as mbp
from manualbp import data
from manualbp.tools import experiment, timing
from manualbp.tools.bench_extensions import vmap_grad_then_clip


@dataclasses.dataclass(frozen=True)
class Config(experiment.RunConfig):
    dataset: Literal["digits", "fashion-mnist", "mnist"] = "digits"  # IDX files for the MNISTs
    test_fraction: float = 0.2  # share held out for testing (digits; the MNISTs have their own)
    hidden_width: int = 64  # N_2
    hidden: str = "tanh"  # σ of the hidden layer
    lr: float = 0.002  # Adam's step size
    epochs: int = 30  # passes over the training set
    batch_size: int = 64  # examples per step, B
    l2_clip: float = 1.0  # C, the largest norm of one example's gradient
    noise_multipliers: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)  # σ, one training run each
    delta: float = 1e-5  # the δ at which ε is reported (below 1/n)
    timing_repeats: int = 50  # interleaved rounds of the step timing


def load(config: Config, key):
    """((X_train, Y_train), (X_test, Y_test)) of ``config.dataset``, standardized."""
    if config.dataset == "mnist":
        train, test = data.mnist()
    elif config.dataset == "fashion-mnist":
        train, test = data.fashion_mnist()
    else:
        X, Y = data.digits()
        train, test = data.train_test_split(key, X, Y, config.test_fraction)
    X_train, X_test = data.standardize(train[0], test[0])
    return (X_train, train[1]), (X_test, test[1])


def time_clipped_step(net, params, X, Y, config: Config) -> dict:
    """The manual clipped gradient against vmap(jax.grad)-then-clip, paired round by round."""
    clip = jnp.asarray(config.l2_clip, jnp.float32)
    fns = {
        "manual": lambda: mbp.extensions.clipped_value_and_grad(
            net, params, X, Y, l2_clip=config.l2_clip
        ),
        "vmap_grad_then_clip": lambda: vmap_grad_then_clip(net, params, X, Y, clip),
    }
    _, manual = fns["manual"]()
    reference = fns["vmap_grad_then_clip"]()
    agree = max(
        float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
        for a, b in zip(jax.tree.leaves(manual), jax.tree.leaves(reference), strict=True)
    )
    timing.first_calls(fns)
    times = timing.interleaved(fns, config.timing_repeats)
    return {
        "batch": int(X.shape[0]),
        "manual_ms": 1e3 * float(np.median(times["manual"])),
        "vmap_ms": 1e3 * float(np.median(times["vmap_grad_then_clip"])),
        "manual_over_vmap": timing.paired_ratio(times["manual"], times["vmap_grad_then_clip"]),
        "max_rel_difference": agree,
    }


def main(config: Config) -> dict:
    run = experiment.start_run("dp_sgd", config)
    key_split, key_init, key_train = jax.random.split(jax.random.key(config.seed), 3)
    (X_train, Y_train), (X_test, Y_test) = load(config, key_split)
    net = mbp.MLP(
        (X_train.shape[1], config.hidden_width, 10),
        hidden=config.hidden,
        output="softmax",
        loss="cross_entropy",
    )
    params = net.init(key_init)
    optimizer = optax.adam(config.lr)  # one object: the compiled epochs are reused

    settings = {"none": None} | {
        f"σ={s:g}": mbp.DPSGD(config.l2_clip, s, config.delta) for s in config.noise_multipliers
    }
    histories, rows = {}, []
    for label, privacy in settings.items():
        result = mbp.train(
            net,
            params,
            optimizer,
            X_train,
            Y_train,
            epochs=config.epochs,
            batch_size=config.batch_size,
            key=key_train,
            eval_data=(X_test, Y_test),
            progress=False,
            privacy=privacy,
            callback=lambda record, label=label: run.log(privacy=label, **record),
        )
        histories[label] = result.history
        last = result.history[-1]
        rows.append(
            {
                "privacy": label,
                "epsilon": last.get("epsilon", float("inf")),
                "test_accuracy": last["test_accuracy"],
                "test_loss": last["test_loss"],
            }
        )
    plot_accuracy_vs_epsilon(run.path / "accuracy_vs_epsilon.png", histories, config)

    batch = slice(0, config.batch_size)
    step = time_clipped_step(net, params, X_train[batch], Y_train[batch], config)
    summary = {"net": repr(net), "n_train": int(X_train.shape[0]), "final": rows, "step": step}
    run.write_json("summary.json", {**summary, "final": [_finite(r) for r in rows]})
    experiment.print_table(rows)
    ratio = step["manual_over_vmap"]
    print(
        f"clipped step, B = {step['batch']}: manual {step['manual_ms']:.3g} ms, "
        f"vmap(grad)-then-clip {step['vmap_ms']:.3g} ms, paired ratio {ratio['median']:.3f} "
        f"(95% CI {ratio['ci95']}); largest relative difference {step['max_rel_difference']:.1e}"
    )
    print(f"run folder: {run.path}")
    return experiment.to_json({**summary, "final": [_finite(r) for r in rows]})


def _finite(row: dict) -> dict:
    """ε = ∞ (no privacy) as None, so the summary stays strict JSON."""
    return {k: (None if isinstance(v, float) and np.isinf(v) else v) for k, v in row.items()}


def plot_accuracy_vs_epsilon(path, histories: dict, config: Config) -> None:
    """Test accuracy against ε, one curve per σ (a point per epoch), the baseline as a line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 3.8), dpi=80, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    for label, history in histories.items():
        accuracy = [h["test_accuracy"] for h in history]
        if label == "none":
            ax.axhline(accuracy[-1], color="black", linestyle="--", label="no privacy (final)")
            continue
        ax.plot([h["epsilon"] for h in history], accuracy, marker="o", markersize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel(f"ε at δ = {config.delta:g} (after each epoch)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"DP-SGD on {config.dataset}, C = {config.l2_clip:g}, B = {config.batch_size}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    figure.savefig(path)


if __name__ == "__main__":
    raise SystemExit(experiment.run_main(main, Config, __doc__))
