"""One epoch of `train`: the run's two records, the compiled epoch, and its history entry.

`Run` holds what stays fixed over a run (the net, the checked settings, the
placed data), `State` what changes epoch by epoch. `run_epoch` calls the
compiled program (`programs.epoch`, or `programs.private_epoch` for DP-SGD),
refuses a diverged epoch before anything of it is kept, and returns the
epoch's history entry.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding

from manualbp.network import MLP, Params
from manualbp.training import accounting, arguments, checkpoint, history, programs
from manualbp.training.checkpoint import to_host

Array = jax.Array


class Run(NamedTuple):
    """What stays fixed over a training run: the net, the checked settings, the placed data."""

    net: MLP
    optimizer: optax.GradientTransformation
    settings: arguments.Settings
    X: Array
    Y: Array
    test: tuple | None
    replicated: NamedSharding | None
    statics: dict


@dataclasses.dataclass
class State:
    """What changes epoch by epoch."""

    params: Params
    opt_state: Any
    key: Array
    history: list[dict]
    start: int = 0
    fingerprint: dict | None = None


def run_epoch(run: Run, state: State, epoch: int, checkpoint_dir) -> dict:
    """One compiled epoch, then its history entry; nothing of a diverged epoch is kept."""
    if run.settings.privacy is None:
        params, opt_state, key, losses, finite = programs.epoch(
            state.params, state.opt_state, state.key, run.X, run.Y, **run.statics
        )
        losses = to_host(losses)
    else:  # no loss: that of the private training data is not released
        params, opt_state, key, finite, _ = programs.private_epoch(
            state.params, state.opt_state, state.key, run.X, run.Y, **run.statics
        )
        losses = None
    if not to_host(finite):
        message = history.divergence_message(epoch, losses, checkpoint_dir)
        raise history.DivergenceError(message, epoch, state.history)
    _refuse_a_nan_optimizer_state(opt_state, epoch, state, checkpoint_dir)  # reliability hook
    state.params, state.opt_state, state.key = params, opt_state, key
    record = {"epoch": epoch}
    if losses is not None:
        record["loss"] = float(np.mean(losses, dtype=np.float64))
    n, settings = run.X.shape[0], run.settings
    record.update(
        accounting.entries(settings.privacy, epoch=epoch, n=n, batch_size=settings.batch_size)
    )
    record.update(_held_out_entries(run, state.params, epoch))
    return record


def _held_out_entries(run: Run, params, epoch: int) -> dict:
    """Test loss and accuracy, and on checked epochs the gradient check: on the held-out
    data, or for a run without privacy the check on the first B training examples."""
    entries = {}
    if run.test is not None:
        test_loss, accuracy = map(to_host, programs.evaluate(params, *run.test, net=run.net))
        entries["test_loss"] = float(test_loss)
        if run.net.classifier:
            entries["test_accuracy"] = float(accuracy)
    settings = run.settings
    if settings.check_every is not None and epoch % settings.check_every == 0:
        X, Y = (run.X, run.Y) if settings.privacy is None else run.test
        rows = slice(0, settings.batch_size)
        entries["grad_check"] = history.grad_check(run.net, params, X[rows], Y[rows])
    return entries


def _refuse_a_nan_optimizer_state(opt_state, epoch: int, state: State, checkpoint_dir) -> None:
    """A NaN in the optimizer state (finite parameters) is divergence too: never saved."""
    where = checkpoint.nan_leaves(opt_state)
    if where:
        kept = (
            f"; the checkpoint of epoch {epoch - 1} in {checkpoint_dir} is kept"
            if checkpoint_dir is not None and epoch > 1
            else ""
        )
        message = (
            f"training diverged in epoch {epoch}: the optimizer state holds NaN in "
            f"opt_state{', opt_state'.join(where[:3])} while the parameters are finite; nothing "
            f"of epoch {epoch} is kept{kept}. Check the optimizer's settings"
        )
        raise history.DivergenceError(message, epoch, state.history)
