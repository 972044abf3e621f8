"""``manualbp train``: train an MLP on a built-in data set from the command line.

The flags are `TrainConfig`'s fields, checked by `check_config` (train_config.py); the run folder,
the side-by-side training and the curves come from `manualbp.tools.runs` and
`manualbp.tools.side_by_side`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np

from manualbp.tools import plugins
from manualbp.tools.configs import parse_config
from manualbp.tools.console import UserError
from manualbp.tools.plots import print_table
from manualbp.tools.runs import run_folder
from manualbp.tools.side_by_side import (
    completed_epochs,
    curve_gap,
    summary_rows,
    train_side_by_side,
)
from manualbp.tools.train_config import TrainConfig, check_config, make_optimizer
from manualbp.tools.train_privacy import check_privacy_flags, privacy_settings


def load_dataset(config: TrainConfig, key: jax.Array):
    """((X_train, Y_train), (X_test, Y_test), classes) for ``config.dataset``.

    ``classes`` is None for regression (sine). Synthetic sets are drawn from
    ``key``, then split with it; digits and MNIST are read from disk.
    """
    from manualbp import data

    key_data, key_split = jax.random.split(key)
    synthetic = {
        "xor": lambda: data.xor(key_data, config.n, config.noise),
        "moons": lambda: data.two_moons(key_data, config.n, config.noise),
        "spirals": lambda: data.spirals(key_data, config.n, noise=config.noise),
        "sine": lambda: data.sine(key_data, config.n, config.noise),
        "blobs": lambda: data.blobs(key_data, config.n),
        "digits": data.digits,
    }
    if config.dataset == "mnist":
        train, test = data.mnist(config.mnist_dir)
    elif config.dataset == "fashion-mnist":
        train, test = data.fashion_mnist(config.fashion_mnist_dir)
    else:
        X, Y = synthetic[config.dataset]()
        train, test = data.train_test_split(key_split, X, Y, config.test_fraction)
    if config.standardize and config.dp_clip is None:
        X_train, X_test = data.standardize(train[0], test[0])
        train, test = (X_train, train[1]), (X_test, test[1])
    classes = None if config.dataset == "sine" else int(np.max(np.asarray(train[1]))) + 1
    return train, test, classes


def main(argv: list[str] | None = None) -> int:
    """``manualbp train``: parse ``argv``, train, write the run folder, print a summary.

    Returns:
        0 on success, and when the checkpoints already hold every epoch (then no
        run folder is made). Bad flags, unavailable data (MNIST files missing,
        scikit-learn absent), a net that does not fit the data or an unusable
        run folder raise `UserError`, ValueError or TypeError (status 2 under
        `console.guarded`); a diverged run raises `DivergenceError` (status 1)
        and its run folder says it failed.
    """
    config = parse_config(TrainConfig, argv, TrainConfig.__doc__, prog="manualbp train")
    check_config(config)
    check_privacy_flags(config)
    net_spec = _net_spec(config)
    key_data, key_init, key_train = jax.random.split(jax.random.key(config.seed), 3)
    grads = ("manual", "autodiff") if config.grad == "both" else (config.grad,)
    if _already_trained(config, grads):
        return _confirm_nothing_to_train(config, grads, (key_data, key_init, key_train), net_spec)
    # The run folder first: a --runs-dir or --run-name problem shows before any work, and
    # `run_folder` removes the folder again if the data or the net turn out not to fit.
    with run_folder("train", config) as run:
        train, test, net, params = _train_setup(config, key_data, key_init, net_spec)
        privacy = privacy_settings(config, len(train[0]))
        print(
            f"{net}, {config.dataset}: {len(train[0])} train / {len(test[0])} test examples, "
            f"{config.epochs} epoch{'s' * (config.epochs != 1)}, {' then '.join(grads)} "
            f"gradients; run folder {run.path}",
            flush=True,
        )
        results = train_side_by_side(
            run, net, params, make_optimizer(config.optimizer, config.lr), train,
            privacy=privacy, **_train_options(config, key_train, grads, test),
        )  # fmt: skip
        rows = summary_rows(results, grads)
        summary = {"status": "completed", "net": repr(net), "final": rows, "run": str(run.path)}
        if config.grad == "both":
            summary["max_loss_gap"] = curve_gap({g: results[g].history for g in grads})
        summary.update(gradient_checks({g: results[g].history for g in grads}))
        run.write_json("summary.json", summary)
    print_table(rows)
    for line in explain(summary, config, len(train[0]) // config.batch_size):
        print(line)
    print(f"run folder: {run.path}")
    return 0


def _train_options(config: TrainConfig, key_train, grads, test) -> dict:
    return {
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "key": key_train,
        "grads": grads,
        "eval_data": test,
        "progress": config.progress,
        "checkpoint_dir": config.checkpoint_dir,
        "check_every": config.check_every or None,
        "resume": config.resume,
    }


def _already_trained(config: TrainConfig, grads) -> bool:
    """Every path's checkpoint claims all the epochs asked for (confirmed by `mbp.train`)."""
    if config.checkpoint_dir is None:
        return False
    directories = [Path(config.checkpoint_dir) / grad for grad in grads]
    return all(completed_epochs(d) >= config.epochs for d in directories)


def _confirm_nothing_to_train(config: TrainConfig, grads, keys, net_spec) -> int:
    """`mbp.train` accepts each complete checkpoint (or refuses it); one line, no run folder."""
    import manualbp as mbp

    key_data, key_init, key_train = keys
    train, test, net, params = _train_setup(config, key_data, key_init, net_spec)
    privacy = privacy_settings(config, len(train[0]))
    for grad in grads:
        mbp.train(
            net, params, make_optimizer(config.optimizer, config.lr), *train,
            epochs=config.epochs, batch_size=config.batch_size, key=key_train, grad=grad,
            eval_data=test, check_every=config.check_every or None, progress=False,
            checkpoint_dir=str(Path(config.checkpoint_dir) / grad), resume=config.resume,
            privacy=privacy,
        )  # fmt: skip
    print(
        f"nothing to train: the checkpoints in {config.checkpoint_dir} ({', '.join(grads)}) "
        f"hold all {config.epochs} epochs; no run folder made (raise --epochs to train more)",
        file=sys.stderr,
    )
    return 0


def gradient_checks(histories: dict) -> dict:
    """The ``--check-every`` outcomes: how many checks, how many passed, the worst error/rtol."""
    checks = [
        h["grad_check"] for history in histories.values() for h in history if "grad_check" in h
    ]
    if not checks:
        return {}
    worst = max(c["max_rel_error"] / c["rtol"] for c in checks)
    return {
        "gradient_checks": {
            "checked": len(checks),
            "passed": sum(c["passed"] for c in checks),
            "worst_error_over_rtol": worst,
        }
    }


def explain(summary: dict, config: TrainConfig, steps_per_epoch: int) -> list[str]:
    """What the printed comparison means: the loss gap is rounding, the gradient checks decide."""
    lines = []
    if "max_loss_gap" in summary:
        lines.append(
            f"max |manual - autodiff| training loss over epochs: {summary['max_loss_gap']:.3g}"
        )
        steps = config.epochs * steps_per_epoch
        carried = (
            "Adam divides every step by √v, so such differences are not damped but carried and "
            f"grown through the {steps} steps (sgd keeps them far smaller)"
            if config.optimizer == "adam"
            else f"the {steps} steps carry such differences along"
        )
        if summary["max_loss_gap"] > 0:
            lines.append(
                "  The two paths sum the same products in another order, so their float32 "
                f"gradients differ by rounding (about 1e-7 relative); {carried}. It is not "
                "a wrong gradient: --check-every 1 compares the gradients themselves each epoch, "
                "and manualbp verify --sizes ... --dtype float64 checks the derivation in float64."
            )
    if "gradient_checks" in summary:
        c = summary["gradient_checks"]
        lines.append(
            f"gradient checks: {c['passed']} of {c['checked']} passed, worst error "
            f"{c['worst_error_over_rtol']:.3g} × rtol (manualbp.tolerance's rule)"
        )
    return lines


def _net_spec(config: TrainConfig) -> dict:
    """--hidden, --output and --loss resolved as verify resolves them (plug-ins imported now)."""
    hidden = plugins.hidden_activations(config.hidden)
    return {
        "hidden": hidden[0] if len(hidden) == 1 else hidden,
        "output": None if config.output is None else plugins.output_activation(config.output),
        "loss": None if config.loss is None else plugins.loss_function(config.loss),
    }


def _train_setup(config: TrainConfig, key_data: jax.Array, key_init: jax.Array, net_spec: dict):
    """(train, test, net, params): the data and the net the flags describe, checked to fit."""
    import manualbp as mbp

    try:
        train, test, classes = load_dataset(config, key_data)
    except (FileNotFoundError, ImportError) as error:
        raise UserError(str(error)) from None
    if config.batch_size > len(train[0]):
        raise UserError(
            f"--batch-size: {config.dataset} has {len(train[0])} training examples, "
            f"got {config.batch_size}"
        )

    N_1, N_L = train[0].shape[1], classes or 1
    sizes = config.sizes or (N_1, 32, N_L)
    if sizes[0] != N_1:
        raise UserError(f"--sizes: {config.dataset} has N_1 = {N_1} inputs, got {sizes[0]}")
    net = mbp.MLP(
        sizes,
        hidden=net_spec["hidden"],
        output=net_spec["output"] or ("identity" if classes is None else "softmax"),
        loss=net_spec["loss"] or ("mse" if classes is None else "cross_entropy"),
    )
    params = net.init(key_init, scheme=config.init)
    mbp.loss(net, params, test[0], test[1])  # shapes and labels fit the net
    return train, test, net, params
