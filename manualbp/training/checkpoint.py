"""Checkpoints of a training run: written atomically, read back only into the same run.

One file, ``<checkpoint_dir>/checkpoint.npz``, holds everything `train` needs to
go on exactly where it stopped: the parameters, the optimizer state, the number
of completed epochs, the PRNG key that shuffles the next epoch, and the history
so far. Arrays are stored as NumPy arrays (no pickle); a JSON entry ``meta``
carries the epoch, the history and a fingerprint of the run.

Atomic: the file is written under a unique temporary name in the same
directory, flushed and fsynced, then moved over the old one with `os.replace`
(atomic on POSIX), and the directory is fsynced. A process killed at any
instant leaves either the previous checkpoint or the new one, never a torn
file. A save that fails (a full disk, a directory made read-only) removes its
partial file, keeps the previous checkpoint and raises `CheckpointWriteError`.

One writer: `checkpoint_directory.lock` holds the directory for the run.

Safe to resume: the checkpoint stores the run's fingerprint
(`identity.fingerprint`: net, plug-in code, shapes, settings, data content, and
what the caller passed: the starting params and the optimizer's updates on a
fixed probe). A checkpoint whose fingerprint differs raises
`CheckpointMismatchError` naming what differs (`checkpoint_match`), unless only
the caller's settings do and ``resume="continue"`` asks to go on with them.

Read as untrusted input: `checkpoint_file` checks the file's kind and size,
the zip entries and every ``.npy`` header against the run before it reads any
data, `checkpoint_meta` every metadata field; then the parameters must be
finite and the optimizer state free of NaN (`checkpoint_values`). Anything else
raises `CheckpointError`, and the file is left as it is.

The metadata is strict JSON: a non-finite number in the history (an
overflowing test loss) is written as the string "inf", "-inf" or "nan" and
read back as that float (`checkpoint_meta`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from manualbp._records import to_json
from manualbp.training import checkpoint_file, checkpoint_meta
from manualbp.training.checkpoint_directory import (
    FILENAME,
    LOCKNAME,
    TEMPORARY,
    CheckpointError,
    CheckpointLockedError,
    CheckpointMismatchError,
    CheckpointWriteError,
    fsync_directory,
    lock,
    path_in,
    writable_directory,
)
from manualbp.training.checkpoint_match import RESUME, check_fingerprint
from manualbp.training.checkpoint_values import check_values, nan_leaves
from manualbp.training.identity import (
    dtype_of,
    fingerprint,
    key_arrays,
    key_description,
    to_host,
)

__all__ = [  # the checkpoint's surface, whichever module of it a name lives in
    "FILENAME",
    "LOCKNAME",
    "RESUME",
    "Checkpoint",
    "completed_epochs",
    "CheckpointError",
    "CheckpointLockedError",
    "CheckpointMismatchError",
    "CheckpointWriteError",
    "fingerprint",
    "key_description",
    "load",
    "lock",
    "nan_leaves",
    "path_in",
    "save",
    "to_host",
    "writable_directory",
]

FORMAT = checkpoint_meta.FORMAT


class Checkpoint(NamedTuple):
    """The state of a run after ``epoch`` completed epochs."""

    epoch: int
    params: Any
    opt_state: Any
    key: jax.Array
    history: list[dict]


def save(
    checkpoint_dir: str | os.PathLike,
    state: Checkpoint,
    run_print: dict,
) -> Path:
    """Write ``state`` atomically (temporary file, fsync, `os.replace`); return the path.

    Raises:
        CheckpointWriteError: the file could not be written; the partial file
            is removed and the previous checkpoint, if any, is kept.
    """
    directory = Path(checkpoint_dir)
    final = path_in(directory)
    arrays = _arrays(state, run_print)
    temporary = None
    try:
        if not str(checkpoint_dir):
            raise checkpoint_file.FileFormatError("expected a directory path, got ''")
        directory.mkdir(parents=True, exist_ok=True)
        checkpoint_file.check_kind(final)
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=TEMPORARY[0], suffix=TEMPORARY[1])
        with open(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, final)
    except BaseException as e:  # an interrupt too: no partial file stays behind
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        if not isinstance(e, OSError | checkpoint_file.FileFormatError):
            raise
        raise CheckpointWriteError(
            f"checkpoint_dir: could not write the checkpoint of epoch {state.epoch} to {final} "
            f"({getattr(e, 'strerror', None) or e}); {_kept(final, state.epoch)}"
        ) from e
    fsync_directory(directory)
    return final


def _kept(final: Path, epoch: int) -> str:
    """What a failed save leaves: the checkpoint of the epoch before, or none."""
    try:
        held = checkpoint_file.open_regular(final)
    except (OSError, checkpoint_file.FileFormatError):
        held = None
    if held is None:
        return "the partial file is removed and no checkpoint was saved"
    held.close()
    return (
        f"the partial file is removed and {final} still holds the previous checkpoint "
        f"(epoch {epoch - 1}): the last checkpoint is kept"
    )


def _arrays(state: Checkpoint, run_print: dict) -> dict[str, np.ndarray]:
    """What the file holds: the key, the metadata as strict JSON bytes, every leaf."""
    key_data, key_impl = key_arrays(state.key)
    meta = {
        "format": FORMAT,
        "epoch": state.epoch,
        "key_impl": key_impl,
        "history": state.history,
        "fingerprint": run_print,
    }
    text = json.dumps(to_json(meta, non_finite="string"), allow_nan=False)
    arrays = {"key": key_data, "meta": np.frombuffer(text.encode(), np.uint8)}
    for prefix, tree in (("params", state.params), ("opt_state", state.opt_state)):
        for i, leaf in enumerate(jax.tree.leaves(tree)):
            arrays[f"{prefix}/{i}"] = to_host(leaf)
    return arrays


def load(
    checkpoint_dir: str | os.PathLike,
    run_print: dict,
    params_like,
    opt_state_like,
    key_like=None,
    *,
    resume: str = "same",
) -> Checkpoint | None:
    """The checkpoint in ``checkpoint_dir``, or None if there is none yet.

    The file is read as untrusted input (`checkpoint_file`): only the members
    this run expects, each checked against ``params_like``, ``opt_state_like``
    and ``key_like`` before it is read; then the metadata (`checkpoint_meta`),
    the fingerprint, and the values: parameters finite, no NaN in the
    optimizer state.

    Args:
        checkpoint_dir: the directory `save` wrote to.
        run_print: what the checkpoint must match (`identity.fingerprint`).
        params_like, opt_state_like: trees with the structure to rebuild.
        key_like: a key of the run's implementation and shape (default:
            ``jax.random.key(0)``'s).
        resume: ``"same"`` refuses a checkpoint whose caller part (the
            starting params, the optimizer's updates) differs from
            ``run_print``'s; ``"continue"`` goes on from it with the caller's
            new settings (the other parts must still match).

    Raises:
        CheckpointError: the file cannot be read or is inconsistent.
        CheckpointMismatchError: it belongs to a different run.
    """
    path = path_in(checkpoint_dir)
    expected = _expected(params_like, opt_state_like, key_like)
    read = _read(path, expected, run_print, resume)
    if read is None:
        return None
    epoch, history, arrays = read
    check_values(path, arrays)
    params, opt_state = (
        jax.tree.unflatten(treedef, [arrays[f"{prefix}/{i}"] for i in range(len(leaves))])
        for prefix, (leaves, treedef) in expected.trees.items()
    )
    key = _wrap_key(path, arrays["key"], expected.key_impl)
    return Checkpoint(epoch=epoch, params=params, opt_state=opt_state, key=key, history=history)


class _Expected(NamedTuple):
    """What this run's checkpoint must hold: each member's (shape, dtype), the trees to
    rebuild, as (leaves, treedef) by prefix, and the key's implementation."""

    members: dict
    trees: dict
    key_impl: str | None


def _expected(params_like, opt_state_like, key_like) -> _Expected:
    """The members the file must hold, read off the trees and the key this run passes."""
    key_like = jax.random.key(0) if key_like is None else key_like
    key_data_like, key_impl = key_arrays(key_like)
    trees = {
        prefix: jax.tree.flatten(like)
        for prefix, like in (("params", params_like), ("opt_state", opt_state_like))
    }
    members = {"key": (key_data_like.shape, key_data_like.dtype)}
    for prefix, (leaves, _) in trees.items():
        members.update({f"{prefix}/{i}": (np.shape(x), dtype_of(x)) for i, x in enumerate(leaves)})
    return _Expected(members, trees, key_impl)


def _read(path: Path, expected: _Expected, run_print: dict, resume: str):
    """(epoch, history, arrays) from the file, each part checked before the next is read;
    None when there is no file."""
    try:
        f = checkpoint_file.open_regular(path)
        if f is None:
            return None
        with f:
            checkpoint_file.check_size(f, expected.members)
            with zipfile.ZipFile(f) as archive:
                meta = json.loads(checkpoint_file.read_meta(archive).decode())
                epoch, history, stored_print = checkpoint_meta.check_meta(meta, expected.key_impl)
                check_fingerprint(path, stored_print, run_print, resume)
                arrays = checkpoint_file.read_arrays(archive, expected.members)
    except checkpoint_file.READ_ERRORS + (UnicodeDecodeError,) as e:
        if isinstance(e, CheckpointError) and not isinstance(e, checkpoint_file.FileFormatError):
            raise
        raise _corrupted(path, e) from e
    return epoch, history, arrays


def _wrap_key(path: Path, key_data: np.ndarray, key_impl: str | None):
    """The stored key data as a typed key of the run's implementation (raw data without one)."""
    if key_impl is None:
        return key_data
    try:
        return jax.random.wrap_key_data(key_data, impl=key_impl)
    except (ValueError, TypeError) as e:
        raise _corrupted(path, e) from e


def completed_epochs(checkpoint_dir: str | os.PathLike) -> int:
    """The epochs the checkpoint in ``checkpoint_dir`` records, read as `load` reads it (a
    regular file, its metadata only); 0 if there is none or it cannot be read (`load` says why).
    """
    try:
        f = checkpoint_file.open_regular(path_in(checkpoint_dir))
        if f is None:
            return 0
        with f, zipfile.ZipFile(f) as archive:
            meta = json.loads(checkpoint_file.read_meta(archive).decode())
    except checkpoint_file.READ_ERRORS + (UnicodeDecodeError,):
        return 0
    epoch = meta.get("epoch") if isinstance(meta, dict) else None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch > 0 else 0


def _corrupted(path: Path, e: BaseException) -> CheckpointError:
    return CheckpointError(
        f"checkpoint_dir: {path} is corrupted or not a manualbp checkpoint "
        f"({type(e).__name__}: {str(e)[:300]}); it is left untouched: move it away to start "
        "the run afresh"
    )
