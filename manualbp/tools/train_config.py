"""``manualbp train``'s flags: `TrainConfig`, and `check_config`, which checks all before any work.

The flags are `TrainConfig`'s fields (`manualbp.tools.configs.parse_config`). Each
check names the flag, what it expected and what came, so that no number from the
command line reaches the data loaders, JAX or XLA unchecked.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from typing import Literal

from manualbp.tools import limits
from manualbp.tools.configs import RunConfig
from manualbp.tools.console import UserError

Dataset = Literal["xor", "moons", "spirals", "sine", "blobs", "digits", "mnist", "fashion-mnist"]
DATASETS = typing.get_args(Dataset)
OPTIMIZERS = ("sgd", "momentum", "adam")


@dataclasses.dataclass(frozen=True)
class TrainConfig(RunConfig):
    """Train an MLP on a data set with manual or autodiff gradients, or both side by side.

    Writes runs/train/<run>/: config.json, metrics.jsonl, curves.png, summary.json.
    Example: manualbp train --dataset digits --sizes 64 64 10 --epochs 30
    --hidden, --output and --loss take what manualbp verify takes: a built-in name
    or module:attribute naming your own mbp.Activation or mbp.Loss.
    """

    dataset: Dataset = "moons"  # digits needs scikit-learn, (fashion-)mnist the IDX files
    n: int = 1000  # examples drawn for a synthetic set
    noise: float = 0.1  # noise of a synthetic set
    test_fraction: float = 0.2  # share held out for testing (MNIST has its own test set)
    standardize: bool = True  # scale inputs to zero mean and unit variance (training statistics)
    sizes: tuple[int, ...] | None = None  # widths N_1 ... N_L (default: N_1 32 N_L from the data)
    hidden: tuple[str, ...] = ("tanh",)  # σ of the hidden layers: one for all, or one each
    output: str | None = None  # σ^L (default: softmax for classes, identity for sine)
    loss: str | None = None  # E (default: cross_entropy for classes, mse for sine)
    init: str = "lecun"  # weight initialization: lecun, glorot, he, nielsen, nielsen_scaled
    optimizer: Literal["sgd", "momentum", "adam"] = "adam"  # momentum is SGD with momentum 0.9
    lr: float = 0.01  # learning rate
    epochs: int = 20  # passes over the training set
    batch_size: int = 32  # examples per step
    grad: Literal["manual", "autodiff", "both"] = "both"  # which gradients train the net
    check_every: int = 0  # every this many epochs, check manual against autodiff gradients
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


def check_config(config: TrainConfig) -> None:
    """Every flag of ``manualbp train``, before any work: numbers, names, paths, memory."""
    limits.check_seed(config.seed)
    limits.check_at_least(config.epochs, 1, "--epochs")
    limits.check_at_least(config.batch_size, 1, "--batch-size")
    limits.check_at_least(config.check_every, 0, "--check-every", "an epoch count (0: never)")
    if config.dataset in SYNTHETIC:
        limits.check_at_least(config.n, 2, "--n", "an example count")
        limits.check_at_least(config.noise, 0.0, "--noise", "a noise level")
    if not 0.0 < config.test_fraction < 1.0:
        raise UserError(f"--test-fraction: expected a share in (0, 1), got {config.test_fraction}")
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise UserError(
            f"--lr: expected a positive, finite learning rate, got {config.lr} "
            "(a negative one would climb the loss)"
        )
    if config.sizes is not None:
        limits.check_sizes(config.sizes)
    _check_target(config)
    if config.run_name is not None:
        limits.check_folder_name(config.run_name, "--run-name")
    limits.check_path_names(config.runs_dir, "--runs-dir", len("/train/") + 64)
    if config.checkpoint_dir is not None:
        limits.check_path_names(config.checkpoint_dir, "--checkpoint-dir", 64)
    _check_memory(config)


SYNTHETIC = ("xor", "moons", "spirals", "sine", "blobs")
"""The data sets drawn at random (--n, --noise apply); the others are read from files."""

CLASS_LOSSES = ("cross_entropy", "binary_cross_entropy")


def _check_target(config: TrainConfig) -> None:
    """sine's target is one real number: it cannot be a class label for softmax or cross-entropy."""
    if config.dataset != "sine":
        return
    label = [f"--{k} {v}" for k, v in (("output", config.output), ("loss", config.loss))]
    label = [flag for flag in label if flag.endswith((" softmax", *CLASS_LOSSES))]
    if label:
        raise UserError(
            f"{' '.join(label)}: --dataset sine is regression, a one-column real target, "
            "not a class label; use --output identity --loss mse (the defaults for sine)"
        )


def _check_memory(config: TrainConfig) -> None:
    """The run must fit in memory (`training.memory`'s estimate) before any data are drawn."""
    import jax
    import numpy as np

    from manualbp.training import memory

    sizes = tuple(config.sizes or (1 if config.dataset == "sine" else 2, 32, 10))
    n = config.n if config.dataset in SYNTHETIC else 0  # file sets have their own fixed size
    n_test = int(n * config.test_fraction)
    params_like = [
        (
            jax.ShapeDtypeStruct((n_out, n_in), np.float32),
            jax.ShapeDtypeStruct((n_out,), np.float32),
        )
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
    ]
    shape = memory.RunShape(sizes, n - n_test, config.batch_size, n_test)
    needed = memory.estimate(shape, make_optimizer(config.optimizer, config.lr), params_like)
    # Drawing, splitting and standardizing a synthetic set hold three more copies of it.
    drawing = 3 * n * (sizes[0] + 1) * np.dtype(np.float32).itemsize
    limits.check_fits(
        needed.total + drawing,
        f"{config.dataset} with --n {config.n}, sizes {sizes} and batches of {config.batch_size}",
        "--n/--sizes/--batch-size",
    )


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
