"""Fashion-MNIST: manualbp beside scikit-learn's MLPClassifier, under the paper's protocol and ours.

Xiao, Rasul and Vollgraf (2017) benchmark scikit-learn's MLPClassifier on
Fashion-MNIST; their table gives 0.871 test accuracy for relu with 100 hidden
units. Their benchmark's protocol, "paper" here: inputs standardized per pixel
(mean and sd of the training set), float64, ``fit()`` with scikit-learn's
defaults, which stop when the epoch's training loss has not improved on the
best by tol = 1e-4 for more than 10 epochs in a row, or after 200 epochs, and
the accuracy averaged over repeats. Ours, "ours" here: pixels in [0, 1],
float32, a fixed number of epochs (20). Each protocol trains every recipe once
per seed with manualbp's hand-derived gradients (equations (1)-(4),
``grad="manual"``) and with MLPClassifier, and reports each side's mean and
sample standard deviation over the seeds.

Same recipe on both sides, as scikit-learn defines it: Adam (lr 1e-3, β₁ 0.9,
β₂ 0.999, ε 1e-8), mini-batches of 200 reshuffled every epoch, and its L2 term:
its loss adds α/(2B)·Σ‖W‖² per batch of B (weights, not biases), so its
gradient adds (α/B)·W; manualbp gets the same as
``optax.add_decayed_weights(α/B)`` on the weights before Adam. Initial weights
and biases follow scikit-learn's rule, U(±√(6/(n_in+n_out))), each library
drawing its own. What differs: the shuffles, the draws, where Adam adds ε
(scikit-learn's ε is optax's ε/√(1−β₂ᵗ)), and, under the paper's protocol,
the loss the stopping rule reads: scikit-learn's includes the L2 term,
manualbp's history has the data loss only.

Under ours, scikit-learn is trained one epoch per `partial_fit` call, so the
test accuracy can be taken after each epoch. Given a `RandomState` object (an
int seed would be reseeded by every call, repeating epoch 1's shuffle) the
calls draw the same initial weights and run the same first epoch, to the bit,
as ``fit(max_iter=epochs)``, and keep Adam's state; each later epoch shuffles
afresh where ``fit`` reshuffles the previous order: another uniformly random
order, not the same bits (tested). Under the paper's, it is ``fit`` itself,
and manualbp stops by the same rule (`tolerance_stop`, tested against
scikit-learn's own stops).

The accuracy runs use one thread by default (--threads), so that on a shared
machine no CPU time goes to threads waiting for each other; the per-epoch
seconds they log are one thread's. Speed:
`manualbp.tools.fashion_bench.thread_settings` times one epoch of each library,
paired round by round, in float32 and float64, with one thread and with the
default threads, each setting in a process of its own.

    python experiments/fashion_mlp.py                         # both protocols, 5 seeds
    python experiments/fashion_mlp.py --protocols ours --seeds 1 --activations relu tanh \\
        --hidden 100 100-10 10 10-10 --autodiff relu-100      # ours, the paper's 8 architectures
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

import manualbp as mbp
from manualbp import data
from manualbp.tools import experiment, fashion_bench

PAPER = {"relu-100": 0.871}
"""Test accuracies quoted from the paper's MLPClassifier table, by recipe name."""

TOL, PATIENCE = 1e-4, 10
"""MLPClassifier's defaults for its stop: ``tol`` and ``n_iter_no_change``."""


@dataclasses.dataclass(frozen=True)
class Config(experiment.RunConfig):
    protocols: tuple[str, ...] = ("ours", "paper")  # ours: [0, 1], float32; paper: see above
    seeds: int = 5  # runs per side and protocol, seeds seed, seed + 1, ...
    activations: tuple[str, ...] = ("relu",)  # hidden σ: relu, tanh
    hidden: tuple[str, ...] = ("100",)  # hidden widths, '-' between: 100, 100-10, 10, 10-10
    epochs: int = 20  # ours: passes over the training set, both libraries
    max_epochs: int = 200  # paper: fit()'s max_iter, the cap of its tolerance stop
    batch_size: int = 200  # scikit-learn's default ("auto": min(200, n))
    lr: float = 0.001  # Adam's step size, scikit-learn's default
    alpha: float = 0.0001  # scikit-learn's L2 strength; 0 turns it off on both sides
    autodiff: tuple[str, ...] = ()  # recipes also trained with jax.grad (ours only)
    sklearn: bool = True  # train scikit-learn's MLPClassifier beside manualbp
    threads: str = "1"  # the accuracy runs: 1 (no CPU spent waiting on a shared machine), default
    timing_rounds: int = 5  # paired timing rounds per dtype and thread setting; 0: none
    n_train: int | None = None  # the first n training images (default: all 60,000)
    fashion_mnist_dir: str | None = None  # default: $MANUALBP_FASHION_MNIST_DIR, then Debian's


def recipe_name(activation: str, hidden: tuple[int, ...]) -> str:
    return "-".join([activation, *map(str, hidden)])


def parse_hidden(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split("-"))
    except ValueError:
        widths = ()
    if not widths or min(widths) < 1:
        raise ValueError(f"--hidden: expected widths like 100 or 100-10, got {text!r}")
    return widths


def sklearn_init(net: mbp.MLP, rng: np.random.RandomState, dtype=jnp.float32) -> mbp.Params:
    """scikit-learn's initial weights for relu and tanh: W and b ~ U(±√(6 / (n_in + n_out)))."""
    layers = []
    for n_in, n_out in zip(net.sizes[:-1], net.sizes[1:], strict=True):
        bound = np.sqrt(6.0 / (n_in + n_out))
        W = rng.uniform(-bound, bound, (n_in, n_out)).T  # drawn in its (in, out) order
        b = rng.uniform(-bound, bound, n_out)
        layers.append(mbp.Layer(jnp.asarray(W, dtype), jnp.asarray(b, dtype)))
    return tuple(layers)


@functools.cache  # one object per recipe, so the compiled epoch is reused across seeds
def sklearn_optimizer(lr: float, alpha: float, batch_size: int):
    """Adam on the gradient plus scikit-learn's (α/B)·W on the weights (not the biases)."""
    weights_only = lambda params: tuple(mbp.Layer(W=True, b=False) for _ in params)  # noqa: E731
    return optax.chain(
        optax.add_decayed_weights(alpha / batch_size, mask=weights_only), optax.adam(lr)
    )


def tolerance_stop(losses: list[float], tol: float = TOL, patience: int = PATIENCE) -> bool:
    """MLPClassifier's stop after the last epoch of ``losses``: more than ``patience``
    epochs in a row whose loss was above the best before it minus ``tol``."""
    best, count = np.inf, 0
    for loss in losses:
        count = count + 1 if loss > best - tol else 0
        best = min(best, loss)
    return count > patience


def standardized(train, test):
    """The paper's inputs: each pixel minus its training mean, over its training sd (1 if 0)."""
    X, X_test = (np.asarray(part[0], np.float64) for part in (train, test))
    mean, sd = X.mean(axis=0), X.std(axis=0)
    sd[sd == 0] = 1.0  # as StandardScaler: a constant pixel is only centred
    return (X - mean) / sd, (X_test - mean) / sd


class _Stopped(Exception):
    """Raised by the epoch callback when `tolerance_stop` says the run is over."""


def train_manualbp(net, params, config, data_sets, grad="manual", stop=False) -> dict:
    """mbp.train with each epoch's wall time (evaluation included); with ``stop``,
    ended by `tolerance_stop` on the epochs' training losses (at most max_epochs)."""
    train, test = data_sets
    stamps, history = [time.perf_counter()], []

    def after_epoch(record):
        stamps.append(time.perf_counter())
        history.append(record)
        if stop and tolerance_stop([h["loss"] for h in history]):
            raise _Stopped

    try:
        mbp.train(
            net,
            params,
            sklearn_optimizer(config.lr, config.alpha, config.batch_size),
            *train,
            epochs=config.max_epochs if stop else config.epochs,
            batch_size=config.batch_size,
            key=jax.random.key(config.seed + 1),
            grad=grad,
            eval_data=test,
            progress=False,
            callback=after_epoch,
        )
    except _Stopped:
        pass
    return {
        "accuracy": [h["test_accuracy"] for h in history],
        "loss": [h["loss"] for h in history],
        "epoch_s": np.diff(stamps).tolist(),
    }


def mlp_classifier(activation, hidden, config, **settings):
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(
        hidden_layer_sizes=hidden,
        activation=activation,
        solver="adam",
        alpha=config.alpha,
        batch_size=config.batch_size,
        learning_rate_init=config.lr,
        shuffle=True,
        **settings,
    )


def train_sklearn_per_epoch(activation, hidden, config, data_sets) -> dict:
    """Ours: one `partial_fit` per epoch, timed; the test accuracy after each."""
    (X, Y), (X_test, Y_test) = ((np.asarray(a) for a in part) for part in data_sets)
    rng = np.random.RandomState(config.seed)  # an object, not an int: see above
    classifier = mlp_classifier(activation, hidden, config, random_state=rng)
    accuracy, loss, seconds = [], [], []
    for _ in range(config.epochs):
        started = time.perf_counter()
        classifier.partial_fit(X, Y, classes=np.arange(10))
        seconds.append(time.perf_counter() - started)
        accuracy.append(float(classifier.score(X_test, Y_test)))
        loss.append(float(classifier.loss_))
    return {"accuracy": accuracy, "loss": loss, "epoch_s": seconds}


def train_sklearn_fit(activation, hidden, config, data_sets) -> dict:
    """The paper's: one ``fit`` to its tolerance stop; the test accuracy at the end."""
    (X, Y), (X_test, Y_test) = data_sets
    classifier = mlp_classifier(
        activation, hidden, config, max_iter=config.max_epochs, random_state=config.seed
    )
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a run that reaches max_epochs is reported as such
        classifier.fit(X, Y)
    seconds = time.perf_counter() - started
    epochs = classifier.n_iter_
    return {
        "accuracy": [None] * (epochs - 1) + [float(classifier.score(X_test, Y_test))],
        "loss": [float(v) for v in classifier.loss_curve_],
        "epoch_s": [seconds / epochs] * epochs,
    }


def data_for(protocol: str, train, test):
    """(train, test) as the protocol feeds them: [0, 1] float32, or standardized float64."""
    if protocol == "ours":
        return train, test
    X, X_test = standardized(train, test)
    return (X, np.asarray(train[1])), (X_test, np.asarray(test[1]))


def run_seed(protocol, recipe, seed, config, data_sets) -> dict:
    """Every side of one recipe, one seed, one protocol: {side: per-epoch results}."""
    activation, hidden = recipe
    config = dataclasses.replace(config, seed=seed)
    name = recipe_name(activation, hidden)
    net = mbp.MLP((784, *hidden, 10), hidden=activation, output="softmax", loss="cross_entropy")
    dtype = jnp.float32 if protocol == "ours" else jnp.float64
    params = sklearn_init(net, np.random.RandomState(seed), dtype)
    paper = protocol == "paper"
    sides = {"manualbp": train_manualbp(net, params, config, data_sets, stop=paper)}
    if name in config.autodiff and not paper:
        sides["autodiff"] = train_manualbp(net, params, config, data_sets, grad="autodiff")
    if config.sklearn:
        trainer = train_sklearn_fit if paper else train_sklearn_per_epoch
        sides["sklearn"] = trainer(activation, hidden, config, data_sets)
    return sides


def seed_rows(protocol: str, name: str, results: list[dict], max_epochs: int) -> list[dict]:
    """One row per side: accuracy mean ± sample sd over the seeds, epochs run, s per epoch."""
    rows = []
    for side in results[0]:
        final = np.array([r[side]["accuracy"][-1] for r in results])
        epochs = [len(r[side]["loss"]) for r in results]
        rows.append(
            {
                "protocol": protocol,
                "recipe": name,
                "side": side,
                "seeds": len(results),
                "acc_mean": float(final.mean()),
                "acc_sd": float(final.std(ddof=1)) if len(final) > 1 else None,
                "acc_min": float(final.min()),
                "acc_max": float(final.max()),
                "acc_per_seed": final.tolist(),
                "epochs": epochs,
                "at_cap": sum(e == max_epochs for e in epochs) if protocol == "paper" else None,
                "epoch_s_median": float(
                    np.median([s for r in results for s in r[side]["epoch_s"]])
                ),
                "paper": PAPER.get(name),
            }
        )
    return rows


def run_protocol(run, protocol, config, sets) -> list[dict]:
    """Every recipe and seed under one protocol, each epoch logged; the seed rows."""
    rows, curves = [], {}
    data_sets = data_for(protocol, *sets)
    for activation in config.activations:
        for hidden in map(parse_hidden, config.hidden):
            name = recipe_name(activation, hidden)
            results = []
            for seed in range(config.seed, config.seed + config.seeds):
                sides = run_seed(protocol, (activation, hidden), seed, config, data_sets)
                log_sides(run, {"protocol": protocol, "recipe": name, "seed": seed}, sides)
                results.append(sides)
            rows += seed_rows(protocol, name, results, config.max_epochs)
            experiment.print_table(rows[-len(results[0]) :])
            if protocol == "ours":
                curves[name] = {
                    side: np.mean([r[side]["accuracy"] for r in results], axis=0).tolist()
                    for side in results[0]
                }
    if protocol == "ours":  # the paper's runs stop at different epochs, without curves
        for activation in config.activations:
            panels = {name: c for name, c in curves.items() if name.split("-")[0] == activation}
            run.plot(f"accuracy_{activation}.png", panels, title="test accuracy per epoch (mean)")
    return rows


def log_sides(run, labels: dict, sides: dict) -> None:
    """One line of metrics.jsonl per side and epoch."""
    for side, result in sides.items():
        for epoch, values in enumerate(zip(*result.values(), strict=True), 1):
            record = dict(zip(("test_accuracy", "loss", "s"), values, strict=True))
            run.log(**labels, side=side, epoch=epoch, **record)


def main(config: Config) -> dict:
    if config.threads not in ("1", "default"):
        raise ValueError(f"--threads: expected 1 or default, got {config.threads!r}")
    unknown = set(config.protocols) - {"ours", "paper"}
    if unknown:
        raise ValueError(f"--protocols: expected ours or paper, got {sorted(unknown)}")
    for text in config.hidden:
        parse_hidden(text)
    try:
        (X_train, Y_train), test = data.fashion_mnist(config.fashion_mnist_dir)
    except FileNotFoundError as error:
        print(error)
        return {"skipped": str(error)}
    if config.sklearn and importlib.util.find_spec("sklearn") is None:
        message = "scikit-learn is absent: pip install manualbp[experiments], or pass --no-sklearn"
        print(message)
        return {"skipped": message}
    sets = ((X_train[: config.n_train], Y_train[: config.n_train]), test)
    run = experiment.start_run("fashion_mlp", config)
    rows = []
    with fashion_bench.one_thread() if config.threads == "1" else contextlib.nullcontext():
        for protocol in ("ours", "paper"):
            if protocol in config.protocols:
                with jax.enable_x64(protocol == "paper"):
                    rows += run_protocol(run, protocol, config, sets)
    summary = {"rows": rows, "n_train": len(sets[0][0])}
    if config.timing_rounds:
        summary["timing"] = fashion_bench.thread_settings(config.timing_rounds)
    run.write_json("summary.json", summary)
    experiment.print_table(rows)
    print(f"run folder: {run.path}")
    return experiment.to_json(summary)


if __name__ == "__main__":
    raise SystemExit(experiment.run_main(main, Config, __doc__))
