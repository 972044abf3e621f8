"""Training with the hand-derived gradients: optax updates, one jitted epoch, checkpoints.

`train` is orchestration. The gradients come from `backprop.backprop_batch`
(equations (1)–(4), ``grad="manual"``) or from `autodiff.value_and_grad`
(``grad="autodiff"``); the update from any optax `GradientTransformation`.

One epoch is one compiled program: shuffle with the epoch's key
(`permutation`), then `jax.lax.scan` over the mini-batches, so no
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

import functools
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

from manualbp import activations, autodiff, backprop, checkpoint, tolerance, validation
from manualbp.checkpoint import to_host
from manualbp.network import MLP, Params, as_targets, batch_loss, forward_pass_batch

Array = jax.Array

GRADS = ("manual", "autodiff")


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


# --- the compiled programs -------------------------------------------------------


# Fewer random bits per sort round than this and `permutation` hands over to jax's.
_MIN_RANDOM_BITS = 8


def permutation(key: Array, n: int) -> Array:
    """A uniformly random permutation of ``range(n)`` (int32), from ``key``.

    The method of `jax.random.permutation`: sort by i.i.d. random keys, in
    rounds, each round breaking its ties by the order the rounds before left.
    Here each round sorts a single uint32 array, random bits above and the
    position in the low k = bit_length(n − 1) bits, which XLA sorts several
    times faster than the key-value sort jax uses (10 000 elements on a 2-core
    CPU: about 2 ms against 6.4 ms). R rounds sort by one random key of
    R (32 − k) bits, so the result is exactly uniform unless two elements tie
    in every round, with probability at most n² 2^(−R (32 − k)) / 2. R is the
    least with 2^(R (32 − k)) ≥ n³, which bounds that by 1 / (2n), as
    `jax.random.permutation` bounds its own. Above 2^24 elements there are
    too few random bits per round; it hands over to `jax.random.permutation`.
    """
    rounds = _sort_rounds(n)
    if rounds is None:
        return jax.random.permutation(key, n)
    k = _position_bits(n)
    position = jnp.arange(n, dtype=jnp.uint32)
    order = position
    for round_key in jax.random.split(key, rounds):
        random_high = jax.random.bits(round_key, (n,), jnp.uint32) >> k << k
        ranked = jax.lax.sort(random_high | position) & ((1 << k) - 1)
        order = order[ranked]
    return order.astype(jnp.int32)


def _position_bits(n: int) -> int:
    return max(1, (n - 1).bit_length())


def _sort_rounds(n: int) -> int | None:
    """Rounds R with 2^(R m) ≥ 2^(3k) ≥ n³, m = 32 − k random bits each; None above 2^24."""
    k = _position_bits(n)
    if 32 - k < _MIN_RANDOM_BITS:
        return None
    return -(-3 * k // (32 - k))  # ⌈3k / m⌉, at least 1 since k ≥ 1


def _value_and_grad(net: MLP, grad: str, params: Params, X: Array, Y: Array):
    if grad == "manual":
        return backprop.backprop_batch(net, params, X, Y)  # equations (1)-(4)
    return autodiff.value_and_grad(net, params, X, Y)


def _cast(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype), tree)


@functools.partial(
    jax.jit,
    static_argnames=("net", "optimizer", "grad", "batch_size", "compute_dtype", "batch_sharding"),
    donate_argnames=("params", "opt_state"),
)
def _epoch(
    params, opt_state, key, X, Y, *, net, optimizer, grad, batch_size, compute_dtype, batch_sharding
):
    """One epoch: shuffle, then one optimizer step per mini-batch, under `lax.scan`.

    Returns the new params, opt_state and key, each step's loss (before its
    update), and whether every loss and parameter is finite.
    """
    key, key_shuffle = jax.random.split(key)
    steps = X.shape[0] // batch_size
    order = permutation(key_shuffle, X.shape[0])[: steps * batch_size]

    def step(carry, rows):
        params, opt_state = carry
        X_b, Y_b = X[rows], Y[rows]
        if batch_sharding is not None:  # data parallel: each device gets B / devices rows
            X_b = jax.lax.with_sharding_constraint(X_b, batch_sharding)
            Y_b = jax.lax.with_sharding_constraint(Y_b, batch_sharding)
        E, grads = _value_and_grad(
            net,
            grad,
            _cast(params, compute_dtype),
            X_b.astype(compute_dtype),
            Y_b.astype(compute_dtype),
        )
        # Gradients go back to each parameter's dtype (float32 under bfloat16
        # compute), so the update accumulates in the parameters' precision.
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), E.astype(X.dtype)

    (params, opt_state), losses = jax.lax.scan(
        step, (params, opt_state), order.reshape(steps, batch_size)
    )
    finite = jnp.all(jnp.isfinite(losses))
    for p in jax.tree.leaves(params):
        finite = finite & jnp.all(jnp.isfinite(p))
    return params, opt_state, key, losses, finite


@functools.partial(jax.jit, static_argnames="net")
def _evaluate(params, X, Y, *, net):
    """The mean loss on (X, Y) and, for a classifier, the accuracy (else NaN)."""
    E = batch_loss(net, params, X, Y)
    if not net.classifier:
        return E, jnp.nan
    _, as_ = forward_pass_batch(net, params, X)
    y_hat = as_[-1]
    if net.output is activations.softmax:
        correct = jnp.argmax(y_hat, axis=1) == jnp.argmax(Y, axis=1)
    else:  # sigmoid outputs, one yes/no decision per output
        correct = (y_hat > 0.5) == (Y > 0.5)
    return E, jnp.mean(correct)


@functools.partial(jax.jit, static_argnames="net")
def _both_grads(params, X, Y, *, net):
    """Manual and autodiff gradients of the same batch loss, and the size of the terms
    they sum (`tolerance.tree_errors`), for ``check_every``."""
    return (
        backprop.backprop_batch(net, params, X, Y)[1],
        autodiff.value_and_grad(net, params, X, Y)[1],
        autodiff.gradient_magnitudes(net, params, X, Y),
    )


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
    callback: Callable[[dict], None] | None = None,
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
            (`manualbp.checkpoint`). If it already holds a checkpoint of the
            same run, training resumes after its last completed epoch and
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
        callback: called with each epoch's history entry, after its
            checkpoint is written.

    Returns:
        `TrainResult` (params, opt_state, history, key). ``history`` is a list
        with one dict per epoch: ``epoch`` (1-based); ``loss``, the mean over
        the epoch's steps of each mini-batch's loss before its update; with
        ``eval_data``, ``test_loss`` and, when ``net.classifier``,
        ``test_accuracy``; on checked epochs ``grad_check`` =
        {``max_rel_error``, ``rtol``, ``passed``}. Every value is a plain
        Python number, so the history is JSON-able.

    Raises:
        DivergenceError: a loss or parameter became inf or NaN; the error names
            the epoch, and the checkpoint of the epoch before stays.
        ValueError, TypeError: bad arguments, or non-finite X or Y.

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
    validation.check_batch(net, params, X, Y)
    validation.check_finite(X, Y)
    validation.check_key(key)
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            "optimizer: expected an optax GradientTransformation such as optax.sgd(0.1), got "
            f"{type(optimizer).__name__}"
        )
    n = X.shape[0]
    grad, epochs, batch_size, check_every = _check_settings(
        grad, epochs, batch_size, check_every, n, mesh
    )
    param_dtype = jnp.result_type(*jax.tree.leaves(params))
    compute_dtype = _check_compute_dtype(compute_dtype, param_dtype)
    replicated = None if mesh is None else NamedSharding(mesh, PartitionSpec())
    batch_sharding = (
        None if mesh is None else NamedSharding(mesh, PartitionSpec(mesh.axis_names, None))
    )

    # Copies: the epoch donates its params and opt_state, never the caller's arrays.
    params = _place(params, replicated, copy=True)
    opt_state = _place(optimizer.init(params), replicated, copy=True)
    X_train = _place(X, replicated, dtype=param_dtype)
    Y_train = _place(as_targets(net, jnp.asarray(Y), param_dtype), replicated)
    test = None
    if eval_data is not None:
        test = _prepare_eval(net, params, eval_data, param_dtype, replicated)

    history: list[dict] = []
    start = 0
    if checkpoint_dir is not None:
        run = {
            "grad": grad,
            "batch_size": batch_size,
            "compute_dtype": jnp.dtype(compute_dtype).name,
            "X": [list(X_train.shape), X_train.dtype.name],
            "Y": [list(Y_train.shape), Y_train.dtype.name],
            "key": checkpoint.key_description(key),
        }
        fingerprint = checkpoint.fingerprint(net, params, opt_state, run)
        saved = checkpoint.load(checkpoint_dir, fingerprint, params, opt_state)
        if saved is not None:
            if saved.epoch > epochs:
                raise ValueError(
                    f"epochs: the checkpoint in {checkpoint_dir} has already completed "
                    f"{saved.epoch} epochs, more than epochs={epochs}"
                )
            start, history = saved.epoch, saved.history
            params = _place(saved.params, replicated)
            opt_state = _place(saved.opt_state, replicated)
            key = saved.key
        _check_same_start(start, checkpoint_dir)
    # With the arrays: an input placed unlike the epoch's own outputs would compile a
    # second epoch program.
    key = _place_key(key, replicated)

    statics = dict(
        net=net,
        optimizer=optimizer,
        grad=grad,
        batch_size=batch_size,
        compute_dtype=compute_dtype,
        batch_sharding=batch_sharding,
    )
    for epoch in range(start + 1, epochs + 1):
        started = time.perf_counter()
        params_next, opt_state, key, losses, finite = _epoch(
            params, opt_state, key, X_train, Y_train, **statics
        )
        losses = to_host(losses)
        if not to_host(finite):
            raise DivergenceError(
                _divergence_message(epoch, losses, checkpoint_dir), epoch, history
            )
        params = params_next
        record = {"epoch": epoch, "loss": float(np.mean(losses, dtype=np.float64))}
        if test is not None:
            test_loss, accuracy = map(to_host, _evaluate(params, *test, net=net))
            record["test_loss"] = float(test_loss)
            if net.classifier:
                record["test_accuracy"] = float(accuracy)
        if check_every is not None and epoch % check_every == 0:
            record["grad_check"] = _grad_check(net, params, X_train, Y_train, batch_size)
        history.append(record)
        if checkpoint_dir is not None:
            state = checkpoint.Checkpoint(epoch, params, opt_state, key, history)
            _save(checkpoint_dir, state, fingerprint)
        if progress:
            print(
                _progress_line(record, epochs, time.perf_counter() - started),
                file=sys.stderr,
                flush=True,
            )
        if callback is not None:
            callback(record)
    return TrainResult(params=params, opt_state=opt_state, history=history, key=key)


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
    if grad not in GRADS:
        raise ValueError(f"grad: expected one of {', '.join(GRADS)}, got {grad!r}")
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
        validation.check_batch(net, params, X_test, Y_test)
        validation.check_finite(X_test, Y_test)
    except (ValueError, TypeError) as e:
        raise type(e)(f"eval_data: {e}") from e
    return (
        _place(X_test, sharding, dtype=dtype),
        _place(as_targets(net, jnp.asarray(Y_test), dtype), sharding),
    )


def _grad_check(net, params, X, Y, batch_size) -> dict:
    manual, auto, magnitude = jax.tree.map(
        to_host, _both_grads(params, X[:batch_size], Y[:batch_size], net=net)
    )
    errors = tolerance.tree_errors(manual, auto, magnitude)
    dtype = jnp.result_type(*jax.tree.leaves(params))
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


def _progress_line(record: dict, epochs: int, seconds: float) -> str:
    width = len(str(epochs))
    parts = [f"epoch {record['epoch']:>{width}}/{epochs}", f"loss {record['loss']:.6g}"]
    for name in ("test_loss", "test_accuracy"):
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
