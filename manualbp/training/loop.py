"""Training with the hand-derived gradients: optax updates, one jitted epoch, checkpoints.

`train` is orchestration. The gradients come from `backprop.fast_backprop`
(equations (1)–(4), ``grad="manual"``) or from `autodiff.value_and_grad`
(``grad="autodiff"``); the update from any optax `GradientTransformation`.

One epoch is one compiled program (`programs.epoch`, run by `epoch.run_epoch`):
shuffle with the epoch's key (`shuffle.permutation`), then `jax.lax.scan` over
the mini-batches, so no Python runs between steps. The program is cached on the
static settings (net, optimizer object, gradient path, batch size, compute
dtype, mesh) and the shapes, so calling `train` again with the same ones
compiles nothing; pass the same optimizer object to reuse it (optax builds new
functions on every ``optax.adam(...)`` call).

Remainder rule: an epoch runs ⌊n / batch_size⌋ steps of exactly ``batch_size``
examples each. The n mod batch_size examples that the epoch's permutation puts
last are left out of that epoch only; the next epoch's permutation leaves out
others, so every example is used and every step has the same shape.

Here: the run checked and placed (`_setup`), resumed (`_resume`, with
`run_checkpoint` for the checkpoint directory), and its epochs.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax
from jax.sharding import Mesh

from manualbp.network import MLP, Params
from manualbp.parameters import param_dtype
from manualbp.training import arguments, checkpoint, history, memory, run_checkpoint
from manualbp.training.dpsgd import DPSGD
from manualbp.training.epoch import Run, State, run_epoch
from manualbp.training.placement import place, place_data, place_key, shardings

Array = jax.Array


class TrainResult(NamedTuple):
    """What `train` returns.

    Attributes:
        params: the trained parameters, ``params[k]`` is layer l = k + 2.
        opt_state: the optimizer's state after the last step.
        history: one dict per completed epoch (see `train`).
        key: the PRNG key that would shuffle the next epoch.
    """

    params: Params
    opt_state: Any
    history: list[dict]
    key: Array


def train(
    net: MLP,
    params: Params,
    optimizer: optax.GradientTransformation,
    X,
    Y,
    *,
    epochs: int,
    batch_size: int,
    key: Array,
    grad: str = "manual",
    eval_data: tuple | None = None,
    check_every: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    progress: bool = True,
    mesh: Mesh | None = None,
    compute_dtype=None,
    shuffle: bool = True,
    callback: Callable[[dict], None] | None = None,
    privacy: DPSGD | None = None,
    resume: str = "same",
) -> TrainResult:
    """Train ``net`` from ``params`` with ``optimizer`` on (X, Y) for ``epochs`` epochs.

    Args:
        net: the network.
        params: the starting parameters (not modified; the result is new arrays).
        optimizer: any optax `GradientTransformation`. Reuse the same object
            across calls to reuse the compiled epoch.
        X: inputs (n, N_1); integer inputs are cast to the parameters' dtype.
        Y: targets in any form `gradients.loss` accepts.
        epochs: the total number of epochs; a resumed run counts the
            checkpoint's epochs too.
        batch_size: examples per step, 1 ≤ batch_size ≤ n. Each epoch leaves
            out the n mod batch_size examples its shuffle puts last (module
            docstring).
        key: a `jax.random` key; epoch e is shuffled with a key split off the
            previous epoch's. The same key gives the same bits on CPU.
        grad: ``"manual"`` (equations (1)–(4), never autodiff) or
            ``"autodiff"`` (`jax.value_and_grad` of the same loss); start both
            from the same params and key to compare them side by side.
        eval_data: optional (X_test, Y_test), evaluated after every epoch.
        check_every: every this many epochs, compare the manual and autodiff
            gradients at the current parameters on the first ``batch_size``
            training examples (with ``privacy``, of ``eval_data``), with
            `manualbp.tolerance`'s rule, and record the outcome in the
            history. The check never stops training.
        checkpoint_dir: after every epoch, save the run there atomically
            (`manualbp.training.checkpoint`). It is checked writable and locked for
            this run before the first epoch. If it already holds a checkpoint
            of the same run (net, plug-in code, data, optimizer state and
            settings), training resumes after its last completed epoch and
            ends bit-identical (on CPU) to an uninterrupted run; one of a
            different run raises `CheckpointMismatchError`, an unreadable one
            `CheckpointError`; neither is overwritten.
        progress: print one line per epoch with its metrics to stderr.
        mesh: data parallelism: a `jax.sharding.Mesh` with Auto axis types
            (`data_parallel_mesh` builds one). Each batch is sharded over all
            its axes, parameters and optimizer state are replicated; results
            equal the single-device ones within the tolerance rule (the sums
            over the batch are reduced in another order). batch_size must be
            a multiple of ``mesh.size``.
        compute_dtype: e.g. ``jnp.bfloat16``: the forward and backward passes
            run in this dtype on cast copies of the parameters and the batch;
            the gradients are cast back to the parameters' dtype before the
            optimizer, so parameters, optimizer state and updates stay in
            float32. Default: the parameters' dtype.
        shuffle: False keeps the examples in their given order every epoch,
            so that another implementation's trajectory can be reproduced step
            for step (the key is still split each epoch).
        callback: called with each epoch's history entry, after its
            checkpoint is written.
        privacy: ``mbp.DPSGD(l2_clip=C, noise_multiplier=σ)`` trains with
            DP-SGD (`manualbp.training.dpsgd`, docs/derivation.md equation
            (9′)): each step is a Poisson sample, every example included
            independently with rate q = batch_size / n, so ``batch_size`` is
            the expected batch size B̄; each example's gradient is clipped to
            C, noise N(0, σ²C²) is added to the clipped sum, and the sum is
            divided by B̄. The history's ε is dp-accounting's bound for exactly
            that sampling, under add-or-remove-one adjacency. Needs
            ``grad="manual"``, ``shuffle=True`` and the dp-accounting package;
            the history then holds no training loss, and ``check_every``
            checks on ``eval_data`` (required).
        resume: with a checkpoint of this run in ``checkpoint_dir``,
            ``"same"`` resumes only when the caller passes what the run
            started with: the same starting params and an optimizer whose
            updates on a fixed probe gradient are the same (another learning
            rate, init or seed raises `CheckpointMismatchError` naming it);
            ``"continue"`` goes on from the checkpoint with this call's
            optimizer and records the new settings.

    Returns:
        `TrainResult` (params, opt_state, history, key). ``history`` is a list
        with one dict per epoch: ``epoch`` (1-based); without ``privacy``,
        ``loss``, the mean over the epoch's steps of each mini-batch's loss
        before its update; with ``eval_data``, ``test_loss`` and, when
        ``net.classifier``, ``test_accuracy``; on checked epochs
        ``grad_check`` = {``max_rel_error``, ``rtol``, ``passed``}; with
        ``privacy``, ``epsilon`` at ``delta`` after ``steps`` steps, the
        ``accountant`` and the ``adjacency``. Every value is a plain Python
        value, so the history is JSON-able.

    Raises:
        DivergenceError: a loss or parameter became inf or NaN; the error names
            the epoch, and the checkpoint of the epoch before stays.
        ValueError, TypeError: bad arguments, X or Y non-finite in the
            parameters' or compute dtype, or targets outside the loss's domain.
        CheckpointWriteError: checkpoint_dir cannot be written (before any
            epoch), or a save failed (the previous checkpoint stays);
            `CheckpointLockedError` when another run holds it.

    Several hosts: JAX is the distributed engine, manualbp adds no
    communication. Start every host with the same program, call
    ``jax.distributed.initialize(coordinator_address, num_processes,
    process_id)`` first (on managed clusters it needs no arguments), build the
    mesh over all global devices with ``data_parallel_mesh()``, and pass it as
    ``mesh``. Every host must load the same X, Y and key; the data are placed
    replicated, each device computes its rows of each batch, and XLA sums the
    gradients across hosts. Only process 0 writes the checkpoint, and the
    others wait until it has; give every host the same ``checkpoint_dir`` on a
    shared file system (hosts that find different checkpoints raise
    `CheckpointError`). tests/test_multiprocess.py runs two processes.
    """
    settings = arguments.Settings(
        epochs, batch_size, grad, check_every, mesh, compute_dtype, shuffle, eval_data, privacy
    )
    run, state = _setup(net, params, optimizer, X, Y, key, settings)
    with run_checkpoint.holding(checkpoint_dir):
        _resume(run, state, checkpoint_dir, resume)
        if progress and state.start:
            line = history.resume_line(state.start, run.settings.epochs, checkpoint_dir)
            print(line, file=sys.stderr, flush=True)
        for epoch in range(state.start + 1, run.settings.epochs + 1):
            started = time.perf_counter()
            record = run_epoch(run, state, epoch, checkpoint_dir)
            _after_epoch(state, record, checkpoint_dir)
            if progress:
                seconds = time.perf_counter() - started
                line = history.progress_line(record, run.settings.epochs, grad, seconds)
                print(line, file=sys.stderr, flush=True)
            if callback is not None:
                callback(record)
    return TrainResult(state.params, state.opt_state, state.history, state.key)


def _setup(net, params, optimizer, X, Y, key, settings: arguments.Settings):
    """Check every argument and place the data; returns the run and its first state."""
    X, Y, settings = arguments.check_arguments(net, params, optimizer, X, Y, key, settings)
    test = None
    if settings.eval_data is not None:
        test = arguments.check_eval_data(net, params, settings.eval_data)
    dtype = param_dtype(params)
    n_test = 0 if test is None else len(test[0])
    shape = memory.RunShape(
        net.sizes, len(X), settings.batch_size, n_test, dtype, settings.compute_dtype
    )
    memory.check_fits(memory.estimate(shape, optimizer, params))  # reliability hook: before placing
    replicated, batch_sharding = shardings(settings.mesh)
    if test is not None:
        test = place_data(net, *test, dtype, replicated)
    X, Y = place_data(net, X, Y, dtype, replicated)
    statics = _statics(net, optimizer, settings, batch_sharding)
    run = Run(net, optimizer, settings, X=X, Y=Y, test=test, replicated=replicated, statics=statics)
    # Copies: the epoch donates its params and opt_state, never the caller's arrays.
    params = place(params, replicated, copy=True)
    opt_state = place(optimizer.init(params), replicated, copy=True)
    return run, State(params, opt_state, key, [])


def _statics(net, optimizer, settings: arguments.Settings, batch_sharding) -> dict:
    """The compiled epoch's static arguments: what its program is cached on."""
    statics = dict(
        net=net,
        optimizer=optimizer,
        batch_size=settings.batch_size,
        compute_dtype=settings.compute_dtype,
        batch_sharding=batch_sharding,
    )
    if settings.privacy is None:
        statics.update(grad=settings.grad, shuffle=bool(settings.shuffle))
    else:
        statics.update(privacy=settings.privacy)
    return statics


def _resume(run: Run, state: State, checkpoint_dir, resume: str) -> None:
    """Start from the checkpoint's state where one of the same run exists."""
    if resume not in checkpoint.RESUME:  # reliability hook: the caller's settings, too
        raise ValueError(f"resume: expected one of {', '.join(checkpoint.RESUME)}, got {resume!r}")
    if checkpoint_dir is not None or jax.process_count() > 1:
        state.fingerprint = run_checkpoint.fingerprint(run, state)
    if checkpoint_dir is not None:
        saved = checkpoint.load(
            checkpoint_dir, state.fingerprint, state.params, state.opt_state, state.key,
            resume=resume,
        )  # fmt: skip
        if saved is not None:
            _restore(run, state, saved, checkpoint_dir)
        run_checkpoint.check_same_start(state.start, checkpoint_dir)
    state.key = place_key(state.key, run.replicated)


def _restore(run: Run, state: State, saved: checkpoint.Checkpoint, checkpoint_dir) -> None:
    epochs = run.settings.epochs
    if saved.epoch > epochs:
        raise ValueError(
            f"epochs: the checkpoint in {checkpoint_dir} has already completed "
            f"{saved.epoch} epochs, more than epochs={epochs}"
        )
    state.start, state.history = saved.epoch, saved.history
    state.params = place(saved.params, run.replicated)
    state.opt_state = place(saved.opt_state, run.replicated)
    state.key = saved.key


def _after_epoch(state: State, record: dict, checkpoint_dir) -> None:
    """Append the record and write the checkpoint (process 0; the others wait for it)."""
    state.history.append(record)
    if checkpoint_dir is not None:
        run_checkpoint.save(checkpoint_dir, state, record["epoch"])
