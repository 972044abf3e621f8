"""What test accuracy does DP-SGD reach at which ε, and does a one-run audit confirm the ε?

Accuracy against ε: a 784-100-10 tanh/softmax net on Fashion-MNIST (scikit-learn's
8×8 digits with a 64-wide hidden layer where Debian's dataset-fashion-mnist is
not installed), trained once without privacy and once per noise multiplier σ
with ``mbp.train(..., privacy=mbp.DPSGD(C, σ))``: Poisson-sampled batches of
expected size B̄, each example's gradient clipped to C by equations (5), (8),
(9), noise N(0, σ²C²) on the clipped sum, divided by B̄ (equation (9′)). The
history holds ε at δ after every epoch, by dp-accounting's PLD accountant,
add-or-remove-one adjacency. The inputs are the loaders' pixel scaling to
[0, 1], which looks at no statistic of the training data.

The audit: `mbp.privacy.audit` on the first ``audit_n`` training examples, one
run per σ with m white-box gradient canaries, each in the run with probability
½ (Steinke, Nasr and Jagielski, 2023): its empirical ε lower bound at 95%
confidence, beside the accountant's claimed ε for the same run, and the same
for three deliberately broken mechanisms (noise × 0.1, clipping off, noise
divided by the physical instead of the expected batch size). The answer:
``accuracy_vs_epsilon.png``, ``audit.png`` and the two tables; the manual
clipped step is also timed beside the ``vmap(jax.grad)``-then-clip route.

    pip install -e ".[experiments,privacy,audit]"
    nice python experiments/dp_sgd.py      # writes runs/dp_sgd/<run>/
    python experiments/dp_sgd.py -h        # every flag
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

import manualbp as mbp
from manualbp import data
from manualbp.tools import experiment, timing
from manualbp.tools.bench_extensions import vmap_grad_then_clip

CLIP_FACTORS = mbp.privacy.MECHANISM.clip_factors
BROKEN = {
    "noise × 0.1": mbp.privacy.Mechanism(
        CLIP_FACTORS, lambda sigma, C, expected, physical: 0.1 * sigma * C
    ),
    "clipping off": mbp.privacy.Mechanism(
        lambda norms, C, dtype: jnp.ones_like(norms[0].W), mbp.privacy.MECHANISM.noise_std
    ),
    "noise / physical size": mbp.privacy.Mechanism(
        CLIP_FACTORS, lambda sigma, C, expected, physical: sigma * C * expected / physical
    ),
}


@dataclasses.dataclass(frozen=True)
class Config(experiment.RunConfig):
    dataset: Literal["auto", "fashion-mnist", "digits"] = "auto"  # auto: Fashion-MNIST if present
    test_fraction: float = 0.2  # share of digits held out for testing
    hidden_width: int | None = None  # N_2 (default: 100 on Fashion-MNIST, 64 on digits)
    lr: float = 0.002  # Adam's step size
    epochs: int = 5  # passes over the training set
    batch_size: int = 256  # expected examples per step, B̄ = q n
    l2_clip: float = 1.0  # C, the largest norm of one example's gradient
    noise_multipliers: tuple[float, ...] = (0.6, 1.0, 2.0)  # σ, one training run and audit each
    delta: float = 1e-5  # the δ at which ε is reported (below 1/n)
    audit_n: int = 1000  # training examples in each audit run
    audit_batch_size: int = 100  # B̄ of the audit runs
    audit_epochs: int = 2  # epochs of each audit run
    canaries: int = 1000  # m, canaries per audit run
    timing_repeats: int = 30  # interleaved rounds of the step timing


def load(config: Config, key):
    """((X_train, Y_train), (X_test, Y_test), name): pixels in [0, 1] as the loaders give."""
    dataset = config.dataset
    if dataset == "auto":
        dataset = "fashion-mnist" if Path(data.FASHION_MNIST_DIR).is_dir() else "digits"
    if dataset == "fashion-mnist":
        train, test = data.fashion_mnist()
    else:
        X, Y = data.digits()
        train, test = data.train_test_split(key, X, Y, config.test_fraction)
    return train, test, dataset


def accuracy_runs(net, params, train, test, config: Config, run) -> tuple[list, dict]:
    """One `train` per setting: without privacy, then per σ; the final rows and histories."""
    optimizer = optax.adam(config.lr)  # one object: the compiled epochs are reused
    settings = {"none": None} | {
        f"σ={s:g}": mbp.DPSGD(config.l2_clip, s, config.delta) for s in config.noise_multipliers
    }
    histories, rows = {}, []
    for label, privacy in settings.items():
        result = mbp.train(
            net, params, optimizer, *train, epochs=config.epochs, batch_size=config.batch_size,
            key=jax.random.key(config.seed + 1), eval_data=test, progress=False, privacy=privacy,
            callback=lambda record, label=label: run.log(privacy=label, **record),
        )  # fmt: skip
        histories[label] = result.history
        last = result.history[-1]
        rows.append(
            {
                "privacy": label,
                "epsilon": last.get("epsilon"),
                "test_accuracy": last["test_accuracy"],
                "test_loss": last["test_loss"],
            }
        )
    return rows, histories


def audits(net, params, train, config: Config) -> list[dict]:
    """`mbp.privacy.audit` per σ with the correct mechanism, and each broken one at the
    largest σ: the lower bound beside the claim."""
    X, Y = train[0][: config.audit_n], train[1][: config.audit_n]
    largest = max(config.noise_multipliers)
    cases = [(f"σ={s:g}", s, mbp.privacy.MECHANISM) for s in config.noise_multipliers]
    cases += [(f"σ={largest:g}, {name}", largest, m) for name, m in BROKEN.items()]
    rows = []
    for label, sigma, mechanism in cases:
        # P = 4 B̄: where the physical size exceeds the expected one, noise scaled by it is
        # too small, so the broken variant has something to show.
        privacy = mbp.DPSGD(config.l2_clip, sigma, config.delta, 4 * config.audit_batch_size)
        result = mbp.privacy.audit(
            net, params, optax.sgd(0.1), (X, Y), privacy, batch_size=config.audit_batch_size,
            epochs=config.audit_epochs, key=jax.random.key(config.seed + 2),
            settings=mbp.privacy.AuditSettings(canaries=config.canaries), mechanism=mechanism,
        )  # fmt: skip
        print(f"{label}: {result.line()}", flush=True)
        rows.append(
            {
                "mechanism": label,
                "claimed_epsilon": result.epsilon_claimed,
                "epsilon_lower_95": result.epsilon_lower,
                "caught": result.caught,
            }
        )
    return rows


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
    key_split, key_init = jax.random.split(jax.random.key(config.seed))
    train, test, dataset = load(config, key_split)
    width = config.hidden_width or (100 if dataset == "fashion-mnist" else 64)
    net = mbp.MLP(
        (train[0].shape[1], width, 10), hidden="tanh", output="softmax", loss="cross_entropy"
    )
    params = net.init(key_init)
    rows, histories = accuracy_runs(net, params, train, test, config, run)
    audit_rows = audits(net, params, train, config)
    plot_accuracy_vs_epsilon(run.path / "accuracy_vs_epsilon.png", histories, config, dataset)
    plot_audit(run.path / "audit.png", audit_rows)
    batch = slice(0, config.batch_size)
    step = time_clipped_step(net, params, train[0][batch], train[1][batch], config)
    summary = {
        "dataset": dataset,
        "net": repr(net),
        "n_train": int(train[0].shape[0]),
        "adjacency": mbp.privacy.ADJACENCY,
        "final": rows,
        "audit": audit_rows,
        "step": step,
    }
    run.write_json("summary.json", summary)
    experiment.print_table(rows)
    experiment.print_table(audit_rows)
    ratio = step["manual_over_vmap"]
    interval = "too few rounds for a 95% interval"
    if ratio["ci95"] is not None:
        interval = "95% interval {:.3g} to {:.3g}".format(*ratio["ci95"])
    print(
        f"clipped step, B = {step['batch']}: manual {step['manual_ms']:.3g} ms, "
        f"vmap(grad)-then-clip {step['vmap_ms']:.3g} ms, paired ratio {ratio['median']:.3g} "
        f"({interval}); largest relative difference {step['max_rel_difference']:.1e}"
    )
    print(f"run folder: {run.path}")
    return experiment.to_json(summary)


def plot_accuracy_vs_epsilon(path, histories: dict, config: Config, dataset: str) -> None:
    """Test accuracy against ε, one curve per σ (a point per epoch), the baseline as a line."""
    figure, ax = _figure()
    for label, history in histories.items():
        accuracy = [h["test_accuracy"] for h in history]
        if label == "none":
            ax.axhline(accuracy[-1], color="black", linestyle="--", label="no privacy (final)")
            continue
        ax.plot([h["epsilon"] for h in history], accuracy, marker="o", markersize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel(f"ε at δ = {config.delta:g} (PLD, add-or-remove-one, after each epoch)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"DP-SGD on {dataset}, C = {config.l2_clip:g}, B̄ = {config.batch_size}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    figure.savefig(path)


def plot_audit(path, rows: list[dict]) -> None:
    """The audit's 95% lower bound against the claimed ε, one point per run; above the
    diagonal, the claim is broken."""
    figure, ax = _figure()
    top = max(max(r["claimed_epsilon"], r["epsilon_lower_95"]) for r in rows) * 1.15
    ax.plot([0, top], [0, top], color="black", linestyle="--", label="lower bound = claim")
    for i, row in enumerate(rows):
        marker = "x" if row["caught"] else "o"
        ax.scatter(row["claimed_epsilon"], row["epsilon_lower_95"], marker=marker, s=40)
        # Alternate above and below: broken variants of one σ share a claimed ε.
        ax.annotate(row["mechanism"], (row["claimed_epsilon"], row["epsilon_lower_95"]),
                    fontsize="x-small", xytext=(5, 4 if i % 2 else -9),
                    textcoords="offset points")  # fmt: skip
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("claimed ε (PLD accountant)")
    ax.set_ylabel("empirical ε lower bound, 95% (one run)")
    ax.set_title("One-run audit: correct mechanism (o), broken ones (x)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    figure.savefig(path)


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 3.8), dpi=80, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots()


if __name__ == "__main__":
    raise SystemExit(experiment.run_main(main, Config, __doc__))
