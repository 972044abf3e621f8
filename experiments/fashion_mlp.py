"""Does manualbp reproduce the Fashion-MNIST paper's MLP table beside scikit-learn, and how fast?

Xiao, Rasul and Vollgraf (2017) benchmark scikit-learn's MLPClassifier on
Fashion-MNIST; with relu and 100 hidden units it reaches 0.871 test accuracy
(the one entry of their table quoted here). This trains each of their MLP
architectures, σ ∈ {relu, tanh} × hidden widths (100,), (100, 10), (10,),
(10, 10), twice on the same data: with manualbp's hand-derived gradients
(equations (1)-(4), ``grad="manual"``) and with scikit-learn's MLPClassifier,
which implements the same equations in NumPy. The recipes in --autodiff are
also trained with jax.grad from manualbp's start.

Same recipe on both sides, as scikit-learn defines it: Adam (lr 1e-3, β₁ 0.9,
β₂ 0.999, ε 1e-8), mini-batches of 200 reshuffled every epoch, the same number
of epochs, float32, and its L2 term: its loss adds α/(2B)·Σ‖W‖² per batch of B
(weights, not biases), so its gradient adds (α/B)·W; manualbp gets the same as
``optax.add_decayed_weights(α/B)`` on the weights before Adam. Initial
weights and biases follow scikit-learn's rule, U(±√(6/(n_in+n_out))), each
library drawing its own. What differs: the shuffles, the draws, and where Adam
adds ε (scikit-learn's ε is optax's ε/√(1−β₂ᵗ)).

scikit-learn is trained one epoch per `partial_fit` call, so the test
accuracy can be taken after each epoch. Given a `RandomState` object (an int
seed would be reseeded by every call, repeating epoch 1's shuffle) the calls
draw the same initial weights and run the same first epoch, to the bit, as
``fit(max_iter=epochs)``, and keep Adam's state; each later epoch shuffles
afresh where ``fit`` reshuffles the previous order: another uniformly random
order, not the same bits (tested).

Speed: each library's median epoch after the first (the first compiles),
manualbp's with its test evaluation inside, scikit-learn's without its scoring.

    python experiments/fashion_mlp.py                       # the table: runs/fashion_mlp/<run>/
    python experiments/fashion_mlp.py --activations relu --hidden 100 --epochs 5
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import manualbp as mbp
from manualbp import data
from manualbp.tools import experiment

PAPER = {"relu-100": 0.871}
"""Test accuracies quoted from the paper's MLPClassifier table, by recipe name."""


@dataclasses.dataclass(frozen=True)
class Config(experiment.RunConfig):
    activations: tuple[str, ...] = ("relu", "tanh")  # the paper's hidden σ
    hidden: tuple[str, ...] = ("100", "100-10", "10", "10-10")  # hidden widths, '-' between
    epochs: int = 20  # passes over the training set, both libraries
    batch_size: int = 200  # scikit-learn's default ("auto": min(200, n))
    lr: float = 0.001  # Adam's step size, scikit-learn's default
    alpha: float = 0.0001  # scikit-learn's L2 strength; 0 turns it off on both sides
    autodiff: tuple[str, ...] = ("relu-100",)  # recipes also trained with jax.grad
    sklearn: bool = True  # train scikit-learn's MLPClassifier beside manualbp
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


def sklearn_init(net: mbp.MLP, rng: np.random.RandomState) -> mbp.Params:
    """scikit-learn's initial weights for relu and tanh: W and b ~ U(±√(6 / (n_in + n_out)))."""
    layers = []
    for n_in, n_out in zip(net.sizes[:-1], net.sizes[1:], strict=True):
        bound = np.sqrt(6.0 / (n_in + n_out))
        W = rng.uniform(-bound, bound, (n_in, n_out)).T  # drawn in its (in, out) order
        b = rng.uniform(-bound, bound, n_out)
        layers.append(mbp.Layer(jnp.asarray(W, jnp.float32), jnp.asarray(b, jnp.float32)))
    return tuple(layers)


def sklearn_optimizer(lr: float, alpha: float, batch_size: int):
    """Adam on the gradient plus scikit-learn's (α/B)·W on the weights (not the biases)."""
    weights_only = lambda params: tuple(mbp.Layer(W=True, b=False) for _ in params)  # noqa: E731
    return optax.chain(
        optax.add_decayed_weights(alpha / batch_size, mask=weights_only), optax.adam(lr)
    )


def train_manualbp(net, params, optimizer, train, test, config, grad) -> dict:
    """mbp.train, with each epoch's wall time (evaluation included) from the callback."""
    stamps = [time.perf_counter()]
    result = mbp.train(
        net,
        params,
        optimizer,
        *train,
        epochs=config.epochs,
        batch_size=config.batch_size,
        key=jax.random.key(config.seed + 1),
        grad=grad,
        eval_data=test,
        progress=False,
        callback=lambda record: stamps.append(time.perf_counter()),
    )
    return {
        "accuracy": [h["test_accuracy"] for h in result.history],
        "loss": [h["loss"] for h in result.history],
        "epoch_s": np.diff(stamps).tolist(),
    }


def train_sklearn(activation, hidden, train, test, config) -> dict:
    """MLPClassifier, one `partial_fit` per epoch, timed; its accuracy after each."""
    from sklearn.neural_network import MLPClassifier

    X, Y = (np.asarray(a) for a in train)
    X_test, Y_test = (np.asarray(a) for a in test)
    classifier = MLPClassifier(
        hidden_layer_sizes=hidden,
        activation=activation,
        solver="adam",
        alpha=config.alpha,
        batch_size=config.batch_size,
        learning_rate_init=config.lr,
        shuffle=True,
        random_state=np.random.RandomState(config.seed),  # an object, not an int: see above
    )
    accuracy, loss, seconds = [], [], []
    for _ in range(config.epochs):
        started = time.perf_counter()
        classifier.partial_fit(X, Y, classes=np.arange(10))
        seconds.append(time.perf_counter() - started)
        accuracy.append(float(classifier.score(X_test, Y_test)))
        loss.append(float(classifier.loss_))
    return {"accuracy": accuracy, "loss": loss, "epoch_s": seconds}


def median_epoch(epoch_s: list[float]) -> float:
    """The median epoch after the first (which compiles), or the only one."""
    return float(np.median(epoch_s[1:] if len(epoch_s) > 1 else epoch_s))


def main(config: Config) -> dict:
    recipes = [(a, parse_hidden(h)) for a in config.activations for h in config.hidden]
    try:
        (X_train, Y_train), test = data.fashion_mnist(config.fashion_mnist_dir)
    except FileNotFoundError as error:
        print(error)
        return {"skipped": str(error)}
    if config.sklearn and importlib.util.find_spec("sklearn") is None:
        message = "scikit-learn is absent: pip install manualbp[experiments], or pass --no-sklearn"
        print(message)
        return {"skipped": message}
    train = (X_train[: config.n_train], Y_train[: config.n_train])
    run = experiment.start_run("fashion_mlp", config)
    optimizer = sklearn_optimizer(config.lr, config.alpha, config.batch_size)
    rows, curves = [], {}
    for activation, hidden in recipes:
        name = recipe_name(activation, hidden)
        net = mbp.MLP((784, *hidden, 10), hidden=activation, output="softmax", loss="cross_entropy")
        params = sklearn_init(net, np.random.RandomState(config.seed))
        sides = {"manualbp": train_manualbp(net, params, optimizer, train, test, config, "manual")}
        if name in config.autodiff:
            sides["autodiff"] = train_manualbp(
                net, params, optimizer, train, test, config, "autodiff"
            )
        if config.sklearn:
            sides["sklearn"] = train_sklearn(activation, hidden, train, test, config)
        for side, result in sides.items():
            for epoch, (acc, loss, seconds) in enumerate(
                zip(result["accuracy"], result["loss"], result["epoch_s"], strict=True), 1
            ):
                run.log(
                    recipe=name, side=side, epoch=epoch, test_accuracy=acc, loss=loss, s=seconds
                )
        row = {"recipe": name, "paper": PAPER.get(name)}
        for side, result in sides.items():
            row[f"{side}_acc"] = result["accuracy"][-1]
            row[f"{side}_epoch_s"] = median_epoch(result["epoch_s"])
        if config.sklearn:
            row["speedup"] = row["sklearn_epoch_s"] / row["manualbp_epoch_s"]
        rows.append(row)
        curves[name] = {side: result["accuracy"] for side, result in sides.items()}
        experiment.print_table([row])
    for activation in config.activations:
        panels = {name: c for name, c in curves.items() if name.split("-")[0] == activation}
        run.plot(f"accuracy_{activation}.png", panels, title="test accuracy per epoch")
    summary = {"rows": rows, "n_train": len(train[0]), "epochs": config.epochs}
    run.write_json("summary.json", summary)
    experiment.print_table(rows)
    print(f"run folder: {run.path}")
    return experiment.to_json(summary)


if __name__ == "__main__":
    raise SystemExit(experiment.run_main(main, Config, __doc__))
