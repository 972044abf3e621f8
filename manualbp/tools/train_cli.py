"""``manualbp train``: train an MLP on a built-in data set from the command line.

The flags are `TrainConfig`'s fields (`experiment.parse_config`); the run folder,
the side-by-side training and the curves come from `manualbp.tools.runs` and
`manualbp.tools.side_by_side`.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Literal

import jax
import numpy as np

from manualbp.tools.configs import RunConfig, parse_config
from manualbp.tools.console import UserError
from manualbp.tools.plots import print_table
from manualbp.tools.runs import run_folder
from manualbp.tools.side_by_side import curve_gap, summary_rows, train_side_by_side

Dataset = Literal["xor", "moons", "spirals", "sine", "blobs", "digits", "mnist", "fashion-mnist"]
DATASETS = typing.get_args(Dataset)
OPTIMIZERS = ("sgd", "momentum", "adam")


@dataclasses.dataclass(frozen=True)
class TrainConfig(RunConfig):
    """Train an MLP on a data set with manual or autodiff gradients, or both side by side.

    Writes runs/train/<run>/: config.json, metrics.jsonl, curves.png, summary.json.
    Example: manualbp train --dataset digits --sizes 64 64 10 --epochs 30
    """

    dataset: Dataset = "moons"  # digits needs scikit-learn, (fashion-)mnist the IDX files
    n: int = 1000  # examples drawn for a synthetic set
    noise: float = 0.1  # noise of a synthetic set
    test_fraction: float = 0.2  # share held out for testing (MNIST has its own test set)
    standardize: bool = True  # scale inputs to zero mean and unit variance (training statistics)
    sizes: tuple[int, ...] | None = None  # widths N_1 ... N_L (default: N_1 32 N_L from the data)
    hidden: str = "tanh"  # σ of the hidden layers
    output: str | None = None  # σ^L (default: softmax for classes, identity for sine)
    loss: str | None = None  # E (default: cross_entropy for classes, mse for sine)
    init: str = "lecun"  # weight initialization: lecun, glorot, he, nielsen, nielsen_scaled
    optimizer: Literal["sgd", "momentum", "adam"] = "adam"  # momentum is SGD with momentum 0.9
    lr: float = 0.01  # learning rate
    epochs: int = 20  # passes over the training set
    batch_size: int = 32  # examples per step
    grad: Literal["manual", "autodiff", "both"] = "both"  # which gradients train the net
    mnist_dir: str | None = None  # folder of the MNIST IDX files (default: $MANUALBP_MNIST_DIR)
    fashion_mnist_dir: str | None = None  # default: $MANUALBP_FASHION_MNIST_DIR, then Debian's
    checkpoint_dir: str | None = None  # save every epoch to <dir>/<grad>/, resume from it
    resume: Literal["same", "continue"] = "same"  # continue: resume with new --lr, --init, ...
    progress: bool = True  # print one line per epoch, saying manual or autodiff
    # --- privacy: DP-SGD (train(privacy=...)); --batch-size is then the expected batch ---
    dp_clip: float | None = None  # C: train with DP-SGD, each example's gradient clipped to C
    dp_noise: float | None = None  # σ, the noise multiplier (or give --dp-epsilon)
    dp_epsilon: float | None = None  # target ε at --dp-delta: σ calibrated to reach it
    dp_delta: float = 1e-5  # δ of the reported (and targeted) ε
    dp_accountant: Literal["pld", "rdp"] = "pld"  # dp-accounting's PLD (tight) or RDP
    dp_physical_size: int | None = None  # examples per compiled chunk (default B + 2√B, ×8)


@functools.cache
def make_optimizer(name: str, lr: float):
    """The optax optimizer for a name of `OPTIMIZERS`.

    One object per (name, lr) in a process: `mbp.train` caches its compiled epoch on
    the optimizer object, so a second run with the same settings compiles nothing.
    """
    import optax

    if name == "sgd":
        return optax.sgd(lr)
    if name == "momentum":
        return optax.sgd(lr, momentum=0.9)
    if name == "adam":
        return optax.adam(lr)
    raise ValueError(f"optimizer: expected one of {', '.join(OPTIMIZERS)}, got {name!r}")


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
        0 on success. Bad flags, unavailable data (MNIST files missing,
        scikit-learn absent), a net that does not fit the data or an unusable
        run folder raise `UserError`, ValueError or TypeError (status 2 under
        `console.guarded`); a diverged run raises `DivergenceError` (status 1)
        and its run folder says it failed.
    """
    config = parse_config(TrainConfig, argv, TrainConfig.__doc__, prog="manualbp train")
    if config.epochs < 1:
        raise UserError(f"--epochs: expected at least 1, got {config.epochs}")
    key_data, key_init, key_train = jax.random.split(jax.random.key(config.seed), 3)
    grads = ("manual", "autodiff") if config.grad == "both" else (config.grad,)
    check_privacy_flags(config)
    # The run folder first: a --runs-dir or --run-name problem shows before any work, and
    # `run_folder` removes the folder again if the data or the net turn out not to fit.
    with run_folder("train", config) as run:
        train, test, net, params = _train_setup(config, key_data, key_init)
        privacy = privacy_settings(config, len(train[0]))
        print(
            f"{net}, {config.dataset}: {len(train[0])} train / {len(test[0])} test examples, "
            f"{config.epochs} epoch{'s' * (config.epochs != 1)}, {' then '.join(grads)} "
            f"gradients; run folder {run.path}",
            flush=True,
        )
        results = train_side_by_side(
            run,
            net,
            params,
            make_optimizer(config.optimizer, config.lr),
            train,
            epochs=config.epochs,
            batch_size=config.batch_size,
            key=key_train,
            grads=grads,
            eval_data=test,
            progress=config.progress,
            checkpoint_dir=config.checkpoint_dir,
            privacy=privacy,
            resume=config.resume,
        )
        rows = summary_rows(results, grads)
        summary = {"status": "completed", "net": repr(net), "final": rows, "run": str(run.path)}
        if config.grad == "both":
            summary["max_loss_gap"] = curve_gap({g: results[g].history for g in grads})
        run.write_json("summary.json", summary)
    print_table(rows)
    if "max_loss_gap" in summary:
        print(f"max |manual - autodiff| training loss over epochs: {summary['max_loss_gap']:.3g}")
    print(f"run folder: {run.path}")
    return 0


# --- privacy: the DP-SGD flags (the privacy area's block) --------------------------------


def check_privacy_flags(config: TrainConfig) -> None:
    """The --dp-* flags fit together, before any run folder is made (one line each)."""
    if config.dp_clip is None:
        given = [f for f in ("dp_noise", "dp_epsilon", "dp_physical_size") if getattr(config, f)]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise UserError(f"{flag}: needs --dp-clip C to train with DP-SGD")
        return
    if config.grad != "manual":
        raise UserError(
            f"--dp-clip: DP-SGD clips with the manual gradients only; got --grad {config.grad}, "
            "add --grad manual"
        )
    if (config.dp_noise is None) == (config.dp_epsilon is None):
        raise UserError("--dp-clip: give exactly one of --dp-noise σ or --dp-epsilon ε")


def privacy_settings(config: TrainConfig, n_train: int):
    """mbp.DPSGD from the flags, σ calibrated for --dp-epsilon; a line says what ε means.

    With privacy the inputs are not standardized: the training set's mean and standard
    deviation would leave the run unaccounted.
    """
    import manualbp as mbp

    if config.dp_clip is None:
        return None
    sigma = config.dp_noise
    if config.dp_epsilon is not None:
        sigma = mbp.privacy.calibrate(
            config.dp_epsilon,
            delta=config.dp_delta,
            n=n_train,
            batch_size=config.batch_size,
            epochs=config.epochs,
            accountant=config.dp_accountant,
        )
    privacy = mbp.DPSGD(
        config.dp_clip, sigma, config.dp_delta, config.dp_physical_size, config.dp_accountant
    )
    print(
        f"DP-SGD: C = {config.dp_clip:g}, σ = {sigma:.4g}, Poisson sampling at q = "
        f"{config.batch_size}/{n_train}, ε by {config.dp_accountant.upper()} at δ = "
        f"{config.dp_delta:g}, {mbp.privacy.ADJACENCY} adjacency; inputs not standardized, "
        "no training loss reported",
        flush=True,
    )
    return privacy


def _train_setup(config: TrainConfig, key_data: jax.Array, key_init: jax.Array):
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
        hidden=config.hidden,
        output=config.output or ("identity" if classes is None else "softmax"),
        loss=config.loss or ("mse" if classes is None else "cross_entropy"),
    )
    params = net.init(key_init, scheme=config.init)
    mbp.loss(net, params, test[0], test[1])  # shapes and labels fit the net
    return train, test, net, params
