"""Do training curves from hand-derived gradients coincide with autodiff's on XOR?

A 2-2-1 sigmoid net learns XOR's truth table with full-batch gradient descent,
once with equations (1)-(4) and once with jax.grad, from the same parameters.
Both curves go on one axis; the answer is the largest gap between them and
both nets' final accuracy.

    python experiments/xor.py            # writes runs/xor/<timestamp>/
    python experiments/xor.py -h         # every flag
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
    hidden_width: int = 2  # N_2: the classic 2-2-1 net
    loss: str = "binary_cross_entropy"  # E; mse also works, but reports no accuracy
    lr: float = 2.0  # gradient-descent step size
    epochs: int = 1000  # full-batch steps (the four examples are one batch)
    init: str = "glorot"  # weight initialization of MLP.init


def main(config: Config) -> dict:
    run = experiment.start_run("xor", config)
    key_init, key_train = jax.random.split(jax.random.key(config.seed))
    X, Y = data.xor(key_init)
    net = mbp.MLP((2, config.hidden_width, 1), hidden="sigmoid", output="sigmoid", loss=config.loss)
    params = net.init(key_init, scheme=config.init)
    results = experiment.train_side_by_side(
        run,
        net,
        params,
        optax.sgd(config.lr),
        (X, Y),
        epochs=config.epochs,
        batch_size=4,
        key=key_train,
        eval_data=(X, Y),
    )
    grads = ("manual", "autodiff")
    summary = {
        "max_loss_gap": experiment.curve_gap({g: results[g].history for g in grads}),
        "final": experiment.summary_rows(results, grads),
        "y_hat": {g: mbp.forward(net, results[g].params, X)[:, 0] for g in grads},
    }
    run.write_json("summary.json", summary)
    experiment.print_table(summary["final"])
    print(
        f"max |manual - autodiff| loss over {config.epochs} epochs: {summary['max_loss_gap']:.3g}"
    )
    print(f"run folder: {run.path}")
    return experiment.to_json(summary)


if __name__ == "__main__":
    raise SystemExit(experiment.run_main(main, Config, __doc__))
