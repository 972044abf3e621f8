"""Training with the hand-derived gradients: optax updates, one jitted epoch, checkpoints.

`train` is orchestration. The gradients come from `backprop.fast_backprop`
(equations (1)–(4), ``grad="manual"``) or from `autodiff.value_and_grad`
(``grad="autodiff"``); the update from any optax `GradientTransformation`.

One epoch is one compiled program (`programs.epoch`): shuffle with the epoch's
key (`shuffle.permutation`), then `jax.lax.scan` over the mini-batches, so no
Python runs between steps. The program is cached on the static settings (net,
optimizer object, gradient path, batch size, compute dtype, mesh) and the
shapes, so calling `train` again with the same ones compiles nothing; pass the
same optimizer object to reuse it (optax builds new functions on every
``optax.adam(...)`` call).

Remainder rule: an epoch runs ⌊n / batch_size⌋ steps of exactly ``batch_size``
examples each. The n mod batch_size examples that the epoch's permutation puts
last are left out of that epoch only; the next epoch's permutation leaves out
others, so every example is used and every step has the same shape.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from manualbp import tolerance, validation
from manualbp.network import MLP, Params, as_targets
from manualbp.parameters import param_dtype
from manualbp.training import checkpoint, programs
from manualbp.training import privacy as dp
from manualbp.training.checkpoint import to_host

Array = jax.Array

GRAD_PATHS = ("manual", "autodiff")


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


class DivergenceError(FloatingPointError):
    """Training produced a non-finite loss (or parameters); ``epoch`` names the epoch.

    Attributes:
        epoch: the 1-based epoch in which it happened; nothing of it was kept.
        history: the history of the epochs before it.
    """

    def __init__(self, message: str, epoch: int, history: list[dict]):
        super().__init__(message)
        self.epoch = epoch
        self.history = history


# --- the orchestration ---------------------------------------------------------------


def data_parallel_mesh(devices=None) -> Mesh:
    """A one-axis mesh ``("batch",)`` over ``devices`` (default: all), with Auto axis types."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh(
        (len(devices),), ("batch",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


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
    privacy: dp.DPSGD | None = None,
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
            training examples, with `manualbp.tolerance`'s rule, and record
            the outcome in the history. The check never stops training.
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
            DP-SGD: each step's gradient is the clipped mean (1/B) Σ_b
            min(1, C / ‖g_b‖) g_b plus Gaussian noise of standard deviation
            σ C / B, drawn from the run's key (`manualbp.training.privacy`,
            equation (9)). Needs ``grad="manual"``, ``shuffle=True`` and the
            dp-accounting package; the accountant assumes Poisson sampling
            of the fixed-size shuffled batches (see that module).

    Returns:
        `TrainResult` (params, opt_state, history, key). ``history`` is a list
        with one dict per epoch: ``epoch`` (1-based); ``loss``, the mean over
        the epoch's steps of each mini-batch's loss before its update; with
        ``eval_data``, ``test_loss`` and, when ``net.classifier``,
        ``test_accuracy``; on checked epochs ``grad_check`` =
        {``max_rel_error``, ``rtol``, ``passed``}; with ``privacy``,
        ``epsilon`` at ``delta``, for every step so far. Every value is a plain
        Python number, so the history is JSON-able.

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
    settings = _Settings(
        epochs, batch_size, grad, check_every, mesh, compute_dtype, shuffle, eval_data, privacy
    )
    run, state = _setup(net, params, optimizer, X, Y, key, settings)
    with _holding(checkpoint_dir):
        _resume(run, state, checkpoint_dir, epochs)
        if progress and state.start:
            print(_resume_line(state.start, epochs, checkpoint_dir), file=sys.stderr, flush=True)
        for epoch in range(state.start + 1, epochs + 1):
            started = time.perf_counter()
            record = _run_epoch(run, state, epoch, checkpoint_dir)
            _after_epoch(run, state, record, checkpoint_dir)
            if progress:
                seconds = time.perf_counter() - started
                print(
                    _progress_line(record, epochs, run.statics["grad"], seconds),
                    file=sys.stderr,
                    flush=True,
                )
            if callback is not None:
                callback(record)
    return TrainResult(state.params, state.opt_state, state.history, state.key)


class _Run(NamedTuple):
    """What stays fixed over a training run: the net, the placed data, the statics."""

    net: MLP
    optimizer: optax.GradientTransformation
    X: Array
    Y: Array
    test: tuple | None
    batch_size: int
    check_every: int | None
    replicated: NamedSharding | None
    statics: dict
    fingerprint_run: dict


@dataclasses.dataclass
class _State:
    """What changes epoch by epoch."""

    params: Params
    opt_state: Any
    key: Array
    history: list[dict]
    start: int = 0
    fingerprint: dict | None = None


class _Settings(NamedTuple):
    """`train`'s keyword settings that shape the run, as passed."""

    epochs: int
    batch_size: int
    grad: str
    check_every: int | None
    mesh: Mesh | None
    compute_dtype: Any
    shuffle: bool
    eval_data: tuple | None
    privacy: Any


def _setup(net, params, optimizer, X, Y, key, settings: _Settings) -> tuple[_Run, _State]:
    """Check every argument and place the data; returns the run and its first state."""
    X, Y, settings = _check_arguments(net, params, optimizer, X, Y, key, settings)
    grad, batch_size, check_every, mesh, compute_dtype, shuffle, eval_data, privacy = (
        settings.grad,
        settings.batch_size,
        settings.check_every,
        settings.mesh,
        settings.compute_dtype,
        settings.shuffle,
        settings.eval_data,
        settings.privacy,
    )
    dtype = param_dtype(params)
    replicated = None if mesh is None else NamedSharding(mesh, PartitionSpec())
    batch_sharding = (
        None if mesh is None else NamedSharding(mesh, PartitionSpec(mesh.axis_names, None))
    )
    # Copies: the epoch donates its params and opt_state, never the caller's arrays.
    params = _place(params, replicated, copy=True)
    opt_state = _place(optimizer.init(params), replicated, copy=True)
    X_train = _place(X, replicated, dtype=dtype)
    Y_train = _place(as_targets(net, jnp.asarray(Y), dtype), replicated)
    test = None if eval_data is None else _prepare_eval(net, params, eval_data, dtype, replicated)
    statics = dict(
        net=net,
        optimizer=optimizer,
        grad=grad,
        batch_size=batch_size,
        compute_dtype=compute_dtype,
        batch_sharding=batch_sharding,
        shuffle=bool(shuffle),
        privacy=privacy,
    )
    fingerprint_run = {
        "grad": grad,
        "batch_size": batch_size,
        "compute_dtype": jnp.dtype(compute_dtype).name,
        "shuffle": bool(shuffle),
        "X": [list(X_train.shape), X_train.dtype.name],
        "Y": [list(Y_train.shape), Y_train.dtype.name],
        "key": checkpoint.key_description(key),
    }
    if privacy is not None:  # only then: checkpoints of runs without it still match
        fingerprint_run["privacy"] = dataclasses.asdict(privacy)
    run = _Run(
        net,
        optimizer,
        X_train,
        Y_train,
        test,
        batch_size,
        check_every,
        replicated,
        statics,
        fingerprint_run,
    )
    return run, _State(params, opt_state, key, [])


def _check_arguments(net, params, optimizer, X, Y, key, settings: _Settings):
    """(X, Y) as the math will see them, and the settings checked and normalized."""
    X, Y = validation.check_batch(net, params, X, Y)
    validation.check_key(key)
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            "optimizer: expected an optax GradientTransformation such as optax.sgd(0.1), got "
            f"{type(optimizer).__name__}"
        )
    grad, epochs, batch_size, check_every = _check_settings(
        settings.grad,
        settings.epochs,
        settings.batch_size,
        settings.check_every,
        X.shape[0],
        settings.mesh,
    )
    dp.check(settings.privacy, grad, settings.shuffle)
    dtype = param_dtype(params)
    compute_dtype = _check_compute_dtype(settings.compute_dtype, dtype)
    validation.check_blocks(net, compute_dtype)
    validation.check_finite(X, Y, dtypes=(dtype, compute_dtype))
    settings = settings._replace(
        epochs=epochs,
        batch_size=batch_size,
        grad=grad,
        check_every=check_every,
        compute_dtype=compute_dtype,
    )
    return X, Y, settings


def _holding(checkpoint_dir):
    """The checkpoint directory, checked writable and locked for this run (by its writer,
    process 0), before any epoch runs."""
    if checkpoint_dir is None or jax.process_index() != 0:
        return contextlib.nullcontext()
    return checkpoint.lock(checkpoint_dir)


def _resume(run: _Run, state: _State, checkpoint_dir, epochs: int) -> None:
    """Start from the checkpoint's state where one of the same run exists."""
    if checkpoint_dir is not None:
        data = {"X": run.X, "Y": run.Y}
        if run.test is not None:
            data.update(X_test=run.test[0], Y_test=run.test[1])
        state.fingerprint = checkpoint.fingerprint(
            run.net, state.params, state.opt_state, run.fingerprint_run, data
        )
        saved = checkpoint.load(checkpoint_dir, state.fingerprint, state.params, state.opt_state)
        if saved is not None:
            if saved.epoch > epochs:
                raise ValueError(
                    f"epochs: the checkpoint in {checkpoint_dir} has already completed "
                    f"{saved.epoch} epochs, more than epochs={epochs}"
                )
            state.start, state.history = saved.epoch, saved.history
            state.params = _place(saved.params, run.replicated)
            state.opt_state = _place(saved.opt_state, run.replicated)
            state.key = saved.key
        _check_same_start(state.start, checkpoint_dir)
    # With the arrays: an input placed unlike the epoch's own outputs would compile a
    # second epoch program.
    state.key = _place_key(state.key, run.replicated)


def _run_epoch(run: _Run, state: _State, epoch: int, checkpoint_dir) -> dict:
    """One compiled epoch, then its history entry; nothing of a diverged epoch is kept."""
    params, opt_state, key, losses, finite = programs.epoch(
        state.params, state.opt_state, state.key, run.X, run.Y, **run.statics
    )
    losses = to_host(losses)
    if not to_host(finite):
        raise DivergenceError(
            _divergence_message(epoch, losses, checkpoint_dir), epoch, state.history
        )
    state.params, state.opt_state, state.key = params, opt_state, key
    record = {"epoch": epoch, "loss": float(np.mean(losses, dtype=np.float64))}
    record.update(
        dp.accounting(
            run.statics["privacy"], epoch=epoch, n=run.X.shape[0], batch_size=run.batch_size
        )
    )
    if run.test is not None:
        test_loss, accuracy = map(to_host, programs.evaluate(state.params, *run.test, net=run.net))
        record["test_loss"] = float(test_loss)
        if run.net.classifier:
            record["test_accuracy"] = float(accuracy)
    if run.check_every is not None and epoch % run.check_every == 0:
        record["grad_check"] = _grad_check(run.net, state.params, run.X, run.Y, run.batch_size)
    return record


def _after_epoch(run: _Run, state: _State, record: dict, checkpoint_dir) -> None:
    """Append the record and write the checkpoint (process 0; the others wait for it)."""
    state.history.append(record)
    if checkpoint_dir is not None:
        saved = checkpoint.Checkpoint(
            record["epoch"], state.params, state.opt_state, state.key, state.history
        )
        _save(checkpoint_dir, saved, state.fingerprint)


def _save(checkpoint_dir, state: checkpoint.Checkpoint, fingerprint: dict) -> None:
    """Process 0 writes the checkpoint; with several processes, all wait until it has.

    The wait keeps a process that goes on to resume from reading the epoch before.
    """
    if jax.process_index() == 0:
        checkpoint.save(checkpoint_dir, state, fingerprint)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"manualbp checkpoint epoch {state.epoch}")


def _check_same_start(start: int, checkpoint_dir) -> None:
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


def _check_settings(grad, epochs, batch_size, check_every, n, mesh):
    if grad not in GRAD_PATHS:
        raise ValueError(f"grad: expected one of {', '.join(GRAD_PATHS)}, got {grad!r}")
    for name, value, low in (("epochs", epochs, 0), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name}: expected an integer ≥ {low}, got {value!r}")
    if batch_size > n:
        raise ValueError(
            f"batch_size: expected at most the {n} training examples, got {batch_size}"
        )
    if check_every is not None and (
        isinstance(check_every, bool)
        or not isinstance(check_every, (int, np.integer))
        or check_every < 1
    ):
        raise ValueError(f"check_every: expected a positive integer or None, got {check_every!r}")
    if mesh is not None:
        if not isinstance(mesh, Mesh):
            raise TypeError(f"mesh: expected a jax.sharding.Mesh, got {type(mesh).__name__}")
        if any(t != jax.sharding.AxisType.Auto for t in mesh.axis_types):
            raise ValueError(
                f"mesh: expected Auto axis types, got {mesh.axis_types}; build it with "
                "mbp.data_parallel_mesh() or jax.make_mesh(..., "
                "axis_types=(jax.sharding.AxisType.Auto,))"
            )
        if batch_size % mesh.size:
            raise ValueError(
                f"batch_size: expected a multiple of the mesh's {mesh.size} devices, "
                f"got {batch_size}"
            )
    return grad, int(epochs), int(batch_size), None if check_every is None else int(check_every)


def _check_compute_dtype(compute_dtype, param_dtype):
    if compute_dtype is None:
        return jnp.dtype(param_dtype)
    try:
        compute_dtype = jnp.dtype(compute_dtype)
    except TypeError as e:
        raise TypeError(f"compute_dtype: expected a floating dtype, got {compute_dtype!r}") from e
    if not jnp.issubdtype(compute_dtype, jnp.floating):
        raise TypeError(f"compute_dtype: expected a floating dtype, got {compute_dtype}")
    return compute_dtype


def _place(tree, sharding, *, dtype=None, copy=False):
    """Every leaf on the default device, or laid out by ``sharding``; cast to ``dtype`` if given.

    On one device a leaf already there, in its dtype, is used as it is unless
    ``copy`` (no trip through host memory); from a mesh's process-local data
    every leaf is a new array.
    """
    if dtype is not None:
        tree = jax.tree.map(lambda x: x.astype(dtype, copy=False), tree)
    if sharding is None:
        device = _default_device()
        return jax.tree.map(lambda x: jax.device_put(x, device, may_alias=not copy), tree)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x)),
        tree,
    )


def _place_key(key, sharding):
    """The key on the default device, or replicated over the mesh (of one or more processes)."""
    if sharding is None:
        return jax.device_put(key, _default_device())
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):  # a raw uint32 key
        return _place(key, sharding)
    # device_put refuses a sharding over other processes' devices: place the key's data
    # the way the arrays are placed, then view it as a key again.
    data = _place(jax.random.key_data(key), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(key))


def _default_device():
    """Where JAX puts new arrays: ``jax_default_device`` if set, else the first device."""
    default = jax.config.jax_default_device
    if isinstance(default, str):  # a platform name
        return jax.devices(default)[0]
    return default if default is not None else jax.devices()[0]


def _prepare_eval(net, params, eval_data, dtype, sharding):
    if not (isinstance(eval_data, (tuple, list)) and len(eval_data) == 2):
        raise TypeError("eval_data: expected a pair (X_test, Y_test)")
    X_test, Y_test = eval_data
    try:
        X_test, Y_test = validation.check_batch(net, params, X_test, Y_test)
        validation.check_finite(X_test, Y_test, dtypes=(dtype,))
    except (ValueError, TypeError) as e:
        raise type(e)(f"eval_data: {e}") from e
    return (
        _place(X_test, sharding, dtype=dtype),
        _place(as_targets(net, jnp.asarray(Y_test), dtype), sharding),
    )


def _grad_check(net, params, X, Y, batch_size) -> dict:
    manual, auto, magnitude = jax.tree.map(
        to_host, programs.both_grads(params, X[:batch_size], Y[:batch_size], net=net)
    )
    errors = tolerance.tree_errors(manual, auto, magnitude)
    dtype = param_dtype(params)
    rtol = tolerance.net_rtol(dtype, net.sizes, batch_size)
    worst = max(rel for _, _, rel in errors)
    return {"max_rel_error": worst, "rtol": rtol, "passed": bool(worst <= rtol)}


def _divergence_message(epoch, losses, checkpoint_dir) -> str:
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        where = f"loss {losses[bad[0]]} at step {bad[0] + 1} of {losses.size}"
    else:
        where = f"non-finite parameters after step {losses.size} of {losses.size}"
    kept = (
        f"; the checkpoint of epoch {epoch - 1} in {checkpoint_dir} is kept"
        if checkpoint_dir is not None and epoch > 1
        else ""
    )
    return (
        f"training diverged in epoch {epoch}: {where}{kept}. Try a smaller learning rate "
        "or check the data's scale"
    )


def _resume_line(start: int, epochs: int, checkpoint_dir) -> str:
    if start == epochs:
        return f"checkpoint in {checkpoint_dir} already holds all {epochs} epochs: nothing to train"
    return f"resuming from the checkpoint in {checkpoint_dir} after epoch {start} of {epochs}"


def _progress_line(record: dict, epochs: int, grad: str, seconds: float) -> str:
    width = len(str(epochs))
    parts = [f"{grad:<8} epoch {record['epoch']:>{width}}/{epochs}", f"loss {record['loss']:.6g}"]
    for name in ("test_loss", "test_accuracy", "epsilon"):
        if name in record:
            parts.append(f"{name} {record[name]:.6g}")
    if "grad_check" in record:
        check = record["grad_check"]
        verdict = "ok" if check["passed"] else "FAILED"
        parts.append(
            f"grad_check {verdict} ({check['max_rel_error']:.2e} vs rtol {check['rtol']:.2e})"
        )
    parts.append(f"{seconds:.2f}s")
    return "  ".join(parts)
