"""Do Nielsen's MNIST recipes reach his accuracies with hand-derived gradients, as with autodiff?

Nielsen, "Neural Networks and Deep Learning":
  chapter 1: 784-30-10 sigmoid, quadratic cost, SGD η = 3.0, mini-batch 10,
             30 epochs, W, b ~ N(0, 1); he reports about 95% test accuracy.
  chapter 3: 784-100-10 sigmoid, cross-entropy with sigmoid outputs, η = 0.5,
             L2 λ = 5.0 (weight decay w ← (1 − ηλ/n) w on weights only),
             W ~ N(0, 1/n_in), b ~ N(0, 1); about 98%.
Each recipe is trained with equations (1)-(4) and with jax.grad from the same
start, on Nielsen's 50,000 training images, tested on the 10,000 test images.

MNIST is read from the four standard IDX files (gzipped or not) in --mnist-dir
or $MANUALBP_MNIST_DIR; nothing is downloaded. Without them the script says
which files to get and where, and exits cleanly.

--dataset fashion-mnist runs the same recipes, unchanged, on Fashion-MNIST
(the same format and sizes; Nielsen's accuracies are MNIST's, not targets
here), read from Debian's dataset-fashion-mnist (--fashion-mnist-dir,
$MANUALBP_FASHION_MNIST_DIR, or /usr/share/datasets/fashion-mnist).

    python experiments/mnist_nielsen.py --mnist-dir ~/data/mnist   # runs/mnist_nielsen/<run>/
    python experiments/mnist_nielsen.py --recipe ch1 --epochs 5     # a shorter run
    python experiments/mnist_nielsen.py --dataset fashion-mnist     # full size, no download
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import optax

import manualbp as mbp
from manualbp import data
from manualbp.tools import experiment

# name: (sizes, output, loss, init, η, λ); the batch size and epochs are flags.
RECIPES = {
    "ch1": ((784, 30, 10), "sigmoid", "mse", "nielsen", 3.0, 0.0),
    "ch3": ((784, 100, 10), "sigmoid", "binary_cross_entropy", "nielsen_scaled", 0.5, 5.0),
}


@dataclasses.dataclass(frozen=True)
class Config(experiment.RunConfig):
    recipe: Literal["ch1", "ch3", "both"] = "both"  # which of Nielsen's recipes to run
    dataset: Literal["mnist", "fashion-mnist"] = "mnist"  # the images to train on
    epochs: int = 30  # Nielsen's 30 epochs
    batch_size: int = 10  # Nielsen's mini-batch of 10
    n_train: int = 50_000  # training images (Nielsen keeps the other 10,000 for validation)
    mnist_dir: str | None = None  # folder of the IDX files (default: $MANUALBP_MNIST_DIR)
    fashion_mnist_dir: str | None = None  # default: $MANUALBP_FASHION_MNIST_DIR, then Debian's
    progress: bool = True  # print one line per epoch (an epoch takes seconds)


def nielsen_optimizer(eta: float, lam: float, n: int) -> optax.GradientTransformation:
    """SGD with Nielsen's L2 weight decay: w ← (1 − ηλ/n) w − η ∂E/∂w; biases undecayed."""
    sgd = optax.sgd(eta)
    if lam == 0.0:
        return sgd
    weights_only = lambda params: tuple(mbp.Layer(W=True, b=False) for _ in params)  # noqa: E731
    return optax.chain(optax.add_decayed_weights(lam / n, mask=weights_only), sgd)


COLUMNS = ("grad", "epoch", "loss", "test_loss", "test_accuracy", "seconds")
"""The summary table's columns, one order for both recipes (ch1's history has no accuracy)."""


def in_column_order(row: dict) -> dict:
    """``row`` with `COLUMNS` first, in that order, then any other keys."""
    return {c: row[c] for c in COLUMNS if c in row} | row


def accuracy(net: mbp.MLP, params, X, labels) -> float:
    """Nielsen's measure: the share of images whose largest output is the right digit."""
    return float(jnp.mean(jnp.argmax(mbp.forward(net, params, X), axis=1) == labels))


def main(config: Config) -> dict:
    try:
        if config.dataset == "fashion-mnist":
            (X_train, Y_train), test = data.fashion_mnist(config.fashion_mnist_dir)
        else:
            (X_train, Y_train), test = data.mnist(config.mnist_dir)
    except FileNotFoundError as error:
        print(error)
        return {"skipped": str(error)}
    X_train, Y_train = X_train[: config.n_train], Y_train[: config.n_train]
    run = experiment.start_run("mnist_nielsen", config)
    names = ("ch1", "ch3") if config.recipe == "both" else (config.recipe,)
    grads = ("manual", "autodiff")
    summary = {}
    for name in names:
        sizes, output, loss, init, eta, lam = RECIPES[name]
        key_init, key_train = jax.random.split(jax.random.key(config.seed))
        net = mbp.MLP(sizes, hidden="sigmoid", output=output, loss=loss)
        params = net.init(key_init, scheme=init)
        sub = experiment.Run(run.path / name)
        sub.path.mkdir()
        results = experiment.train_side_by_side(
            sub,
            net,
            params,
            nielsen_optimizer(eta, lam, X_train.shape[0]),
            (X_train, data.one_hot(Y_train, 10)),
            epochs=config.epochs,
            batch_size=config.batch_size,
            key=key_train,
            eval_data=(test[0], data.one_hot(test[1], 10)),
            progress=config.progress,
            metrics=("loss", "test_loss"),
        )
        accuracies = {g: accuracy(net, results[g].params, *test) for g in grads}
        # The history's test_accuracy (ch3) counts each sigmoid output's yes/no decision;
        # Nielsen's measure is the argmax, so the table shows that instead.
        rows = [
            in_column_order({**row, "test_accuracy": accuracies[row["grad"]]})
            for row in experiment.summary_rows(results, grads)
        ]
        summary[name] = {
            "net": repr(net),
            "test_accuracy": accuracies,
            "max_loss_gap": experiment.curve_gap({g: results[g].history for g in grads}),
            "final": rows,
        }
        print(f"{name} on {config.dataset}: {net}, η={eta}, λ={lam}")
        experiment.print_table(summary[name]["final"])
    run.write_json("summary.json", summary)
    print(f"run folder: {run.path}")
    return experiment.to_json(summary)


if __name__ == "__main__":
    raise SystemExit(experiment.run_main(main, Config, __doc__))
