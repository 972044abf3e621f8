"""Does a 64-64-10 softmax net trained by hand-derived gradients reach 95% accuracy on digits?

scikit-learn's bundled 8×8 digits (1,797 images, no download), inputs
standardized with the training statistics, softmax output with cross-entropy,
Adam, mini-batches; trained once with equations (1)-(4) and once with jax.grad
from the same start. The answer: each net's test accuracy (target: at least
0.95) and the largest gap between the two loss curves.

    pip install -e ".[experiments]"   # scikit-learn and matplotlib
    python experiments/digits.py       # writes runs/digits/<timestamp>/
    python experiments/digits.py -h    # every flag
"""

from __future__ import annotations

import dataclasses

import jax
import optax

import manualbp as mbp
from manualbp import data
from manualbp.tools import experiment


@dataclasses.dataclass(frozen=True)
class Config(experiment.RunConfig):
    test_fraction: float = 0.2  # share of the 1,797 images held out for testing
    hidden_width: int = 64  # N_2
    hidden: str = "tanh"  # σ of the hidden layer
    lr: float = 0.001  # Adam's step size
    epochs: int = 30  # passes over the training set
    batch_size: int = 32  # examples per step
    target_accuracy: float = 0.95  # the accuracy the question asks for


def main(config: Config) -> dict:
    run = experiment.start_run("digits", config)
    key_split, key_init, key_train = jax.random.split(jax.random.key(config.seed), 3)
    X, Y = data.digits()
    (X_train, Y_train), (X_test, Y_test) = data.train_test_split(
        key_split, X, Y, config.test_fraction
    )
    X_train, X_test = data.standardize(X_train, X_test)
    net = mbp.MLP(
        (64, config.hidden_width, 10),
        hidden=config.hidden,
        output="softmax",
        loss="cross_entropy",
    )
    params = net.init(key_init)
    results = experiment.train_side_by_side(
        run,
        net,
        params,
        optax.adam(config.lr),
        (X_train, Y_train),
        epochs=config.epochs,
        batch_size=config.batch_size,
        key=key_train,
        eval_data=(X_test, Y_test),
    )
    grads = ("manual", "autodiff")
    accuracy = {g: results[g].history[-1]["test_accuracy"] for g in grads}
    summary = {
        "test_accuracy": accuracy,
        "reached_target": all(a >= config.target_accuracy for a in accuracy.values()),
        "max_loss_gap": experiment.curve_gap({g: results[g].history for g in grads}),
        "final": experiment.summary_rows(results, grads),
    }
    run.write_json("summary.json", summary)
    experiment.print_table(summary["final"])
    print(
        f"test accuracy: manual {accuracy['manual']:.4f}, autodiff {accuracy['autodiff']:.4f} "
        f"(target {config.target_accuracy}); max |manual - autodiff| loss: "
        f"{summary['max_loss_gap']:.3g}"
    )
    print(f"run folder: {run.path}")
    return experiment.to_json(summary)


if __name__ == "__main__":
    raise SystemExit(experiment.run_main(main, Config, __doc__))
