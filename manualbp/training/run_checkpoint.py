"""A run's checkpoint directory: held for the run, fingerprinted, saved after every epoch.

`train` calls these around its epochs: `holding` checks the directory writable
and locks it before the first epoch, `fingerprint` describes the run a
checkpoint must belong to (and, with several processes, checks that every
process describes the same one), `check_same_start` makes every process
resume after the same epoch (the one `checkpoint.load` found), and `save`
writes each epoch. Only process 0 writes; the others wait for it.
`manualbp.training.checkpoint` is the file itself.
"""

from __future__ import annotations

import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from manualbp.training import checkpoint, processes
from manualbp.training.epoch import Run, State


def holding(checkpoint_dir):
    """The checkpoint directory, checked writable and locked for this run (by its writer,
    process 0), before any epoch runs."""
    if checkpoint_dir is None or jax.process_index() != 0:
        return contextlib.nullcontext()
    return checkpoint.lock(checkpoint_dir)


def fingerprint(run: Run, state: State) -> dict:
    """The run's fingerprint (`checkpoint.fingerprint`), the same in every process."""
    data = {"X": run.X, "Y": run.Y}
    if run.test is not None:
        data.update(X_test=run.test[0], Y_test=run.test[1])
    found = checkpoint.fingerprint(
        run.net, state.params, state.opt_state, _described(run, state.key), data,
        optimizer=run.optimizer,
    )  # fmt: skip
    processes.check_agree(found)  # reliability hook: one all-gather
    return found


def _described(run: Run, key) -> dict:
    """The settings a checkpoint must share to be resumed by this run."""
    settings = run.settings
    described = {
        "grad": settings.grad,
        "batch_size": settings.batch_size,
        "compute_dtype": jnp.dtype(settings.compute_dtype).name,
        "shuffle": bool(settings.shuffle),
        "X": [list(run.X.shape), run.X.dtype.name],
        "Y": [list(run.Y.shape), run.Y.dtype.name],
        "key": checkpoint.key_description(key),
    }
    if settings.privacy is not None:  # only then: checkpoints of runs without it still match
        described["privacy"] = dataclasses.asdict(settings.privacy)
    return described


def check_same_start(start: int, checkpoint_dir) -> None:
    """Every process resumes after the same epoch, or all raise (a checkpoint_dir not shared)."""
    if jax.process_count() == 1:
        return
    starts = multihost_utils.process_allgather(np.int32(start))
    if np.any(starts != start):
        raise checkpoint.CheckpointError(
            f"checkpoint_dir: the processes found checkpoints of different epochs in "
            f"{checkpoint_dir} ({starts.tolist()} completed, by process); give every process "
            "the same checkpoint_dir on a shared file system"
        )


def save(checkpoint_dir, state: State, epoch: int) -> None:
    """Process 0 writes the checkpoint after ``epoch``; with several processes, all wait
    until it has.

    The wait keeps a process that goes on to resume from reading the epoch before.
    """
    saved = checkpoint.Checkpoint(epoch, state.params, state.opt_state, state.key, state.history)
    if jax.process_index() == 0:
        checkpoint.save(checkpoint_dir, saved, state.fingerprint)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"manualbp checkpoint epoch {saved.epoch}")
