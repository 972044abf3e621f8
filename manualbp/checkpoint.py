"""Checkpoints of a training run: written atomically, read back only into the same run.

One file, ``<checkpoint_dir>/checkpoint.npz``, holds everything `train` needs to
go on exactly where it stopped: the parameters, the optimizer state, the number
of completed epochs, the PRNG key that shuffles the next epoch, and the history
so far. Arrays are stored as NumPy arrays (no pickle); a JSON entry ``meta``
carries the epoch, the history and a fingerprint of the run.

Atomic: the file is written under a temporary name in the same directory,
flushed and fsynced, then moved over the old one with `os.replace` (atomic on
POSIX), and the directory is fsynced. A process killed at any instant leaves
either the previous checkpoint or the new one, never a torn file.

Safe to resume: the fingerprint records the net (widths, σ names, loss,
fusion), every parameter's path, shape and dtype, the optimizer state's tree
structure with its leaves' shapes and dtypes, and the run's settings (batch
size, gradient path, compute dtype, data shapes, the starting key). A
checkpoint whose fingerprint differs raises `CheckpointMismatchError` naming
what differs; an unreadable one (truncated, bit-flipped: the zip format's
CRC-32 catches both) raises `CheckpointError`. Either way the file is left as
it is. Two optimizers with the same state structure (``optax.sgd(0.1)`` and
``optax.sgd(0.2)``) cannot be told apart from their states.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.experimental import multihost_utils

FILENAME = "checkpoint.npz"
FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (corrupted, truncated, or not manualbp's)."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint of a different run: another net, optimizer or run settings."""


class Checkpoint(NamedTuple):
    """The state of a run after ``epoch`` completed epochs."""

    epoch: int
    params: Any
    opt_state: Any
    key: jax.Array
    history: list[dict]


def path_in(checkpoint_dir: str | os.PathLike) -> Path:
    """The checkpoint file inside ``checkpoint_dir``."""
    return Path(checkpoint_dir) / FILENAME


def _dtype(x) -> np.dtype:
    return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


def _describe_leaves(tree) -> list[list]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [[jax.tree_util.keystr(path), list(np.shape(x)), str(_dtype(x))] for path, x in flat]


def fingerprint(net, params, opt_state, run: dict) -> dict:
    """A JSON-able description of what a checkpoint must match to be resumed.

    Args:
        net: the `MLP`.
        params, opt_state: the run's parameters and optimizer state (any values;
            only their structure, shapes and dtypes are recorded).
        run: JSON-able settings that must also match (batch size, data shapes, ...).
    """
    return {
        "net": {
            "sizes": list(net.sizes),
            "activations": [sigma.name for sigma in net.activations],
            "loss": net.loss.name,
            "fused": net.fused,
        },
        "params": _describe_leaves(params),
        "opt_state": {
            "structure": str(jax.tree.structure(opt_state)),
            "leaves": _describe_leaves(opt_state),
        },
        "run": run,
    }


def _key_arrays(key) -> tuple[np.ndarray, str | None]:
    """The raw data of a PRNG key and its implementation name (None for a raw uint32 key)."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return to_host(jax.random.key_data(key)), str(jax.random.key_impl(key))
    return to_host(key), None


def key_description(key) -> dict:
    """The key's data and implementation, as JSON (for a run's fingerprint)."""
    data, impl = _key_arrays(key)
    return {"data": data.tolist(), "impl": impl}


def to_host(x) -> np.ndarray:
    """A NumPy copy of ``x``, also of an array that spans several processes.

    Replicated (parameters, losses): the local copy, which holds every value.
    Sharded across processes: gathered, a collective every process must join.
    """
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.sharding.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def save(
    checkpoint_dir: str | os.PathLike,
    state: Checkpoint,
    fingerprint: dict,
) -> Path:
    """Write ``state`` atomically (temporary file, fsync, `os.replace`); return the path."""
    directory = Path(checkpoint_dir)
    directory.mkdir(parents=True, exist_ok=True)
    key_data, key_impl = _key_arrays(state.key)
    meta = {
        "format": FORMAT,
        "epoch": state.epoch,
        "key_impl": key_impl,
        "history": state.history,
        "fingerprint": fingerprint,
    }
    arrays = {"key": key_data, "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    for prefix, tree in (("params", state.params), ("opt_state", state.opt_state)):
        for i, leaf in enumerate(jax.tree.leaves(tree)):
            arrays[f"{prefix}/{i}"] = to_host(leaf)
    final = path_in(directory)
    temporary = directory / f".{FILENAME}.tmp"
    with open(temporary, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, final)
    _fsync_directory(directory)
    return final


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not every platform lets a directory be opened.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(
    checkpoint_dir: str | os.PathLike,
    fingerprint: dict,
    params_like,
    opt_state_like,
) -> Checkpoint | None:
    """The checkpoint in ``checkpoint_dir``, or None if there is none yet.

    Args:
        checkpoint_dir: the directory `save` wrote to.
        fingerprint: what the checkpoint must match (see `fingerprint`).
        params_like, opt_state_like: trees with the structure to rebuild.

    Raises:
        CheckpointError: the file cannot be read or is inconsistent.
        CheckpointMismatchError: it belongs to a different run.
    """
    path = path_in(checkpoint_dir)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
        if meta.get("format") != FORMAT:
            raise ValueError(f"unknown format {meta.get('format')!r}, expected {FORMAT}")
        epoch, history, stored_print = meta["epoch"], meta["history"], meta["fingerprint"]
        if not isinstance(stored_print, dict):
            raise ValueError("the fingerprint is not a mapping")
        key_data, key_impl = arrays.pop("key"), meta["key_impl"]
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        EOFError,
        zipfile.BadZipFile,
        UnicodeDecodeError,
    ) as e:
        raise CheckpointError(
            f"checkpoint_dir: {path} is corrupted or not a manualbp checkpoint ({e}); "
            "it is left untouched: move it away to start the run afresh"
        ) from e
    differ = [
        part
        for part in ("net", "params", "opt_state", "run")
        if stored_print.get(part) != fingerprint[part]
    ]
    if differ:
        details = "; ".join(
            f"{part}: checkpoint has {stored_print.get(part)!r:.300}, this run has "
            f"{fingerprint[part]!r:.300}"
            for part in differ
        )
        raise CheckpointMismatchError(
            f"checkpoint_dir: {path} belongs to a different run ({', '.join(differ)} differ"
            f"); it is left untouched. Use another checkpoint_dir, or the same net, optimizer "
            f"and settings to resume. {details}"
        )
    trees = []
    for prefix, like in (("params", params_like), ("opt_state", opt_state_like)):
        leaves_like, treedef = jax.tree.flatten(like)
        names = [f"{prefix}/{i}" for i in range(len(leaves_like))]
        for name, leaf in zip(names, leaves_like, strict=True):
            if name not in arrays or (arrays[name].shape, arrays[name].dtype) != (
                np.shape(leaf),
                _dtype(leaf),
            ):
                raise CheckpointError(
                    f"checkpoint_dir: {path} is corrupted: {name} is missing or does not match "
                    "its recorded shape and dtype; it is left untouched"
                )
        trees.append(jax.tree.unflatten(treedef, [arrays[name] for name in names]))
    key = jax.random.wrap_key_data(key_data, impl=key_impl) if key_impl else key_data
    return Checkpoint(epoch=epoch, params=trees[0], opt_state=trees[1], key=key, history=history)
