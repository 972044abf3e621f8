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
`CheckpointMismatchError` naming what differs, unless only the caller's
settings do and ``resume="continue"`` asks to go on with them.

Read as untrusted input: `checkpoint_file` checks the file's kind and size,
the zip entries and every ``.npy`` header against the run before it reads any
data, `checkpoint_meta` every metadata field; then the parameters must be
finite and the optimizer state free of NaN. Anything else raises
`CheckpointError`, and the file is left as it is.

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
import jax.numpy as jnp
import numpy as np

from manualbp.records import to_json
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
from manualbp.training.identity import (
    PARTS,
    differences,
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


def nan_leaves(tree) -> list[str]:
    """The paths of the leaves of ``tree`` that hold a NaN (one reduction per leaf, compiled)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    floating = [(p, x) for p, x in flat if jnp.issubdtype(x.dtype, jnp.inexact)]
    found = to_host(_any_nan([x for _, x in floating])) if floating else []
    return [jax.tree_util.keystr(p) for (p, _), nan in zip(floating, found, strict=True) if nan]


@jax.jit
def _any_nan(leaves: list) -> jax.Array:
    return jnp.stack([jnp.any(jnp.isnan(x)) for x in leaves])


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
    key_like = jax.random.key(0) if key_like is None else key_like
    key_data_like, key_impl = key_arrays(key_like)
    trees = {
        prefix: jax.tree.flatten(like)
        for prefix, like in (("params", params_like), ("opt_state", opt_state_like))
    }
    expected = {"key": (key_data_like.shape, key_data_like.dtype)}
    for prefix, (leaves, _) in trees.items():
        expected.update({f"{prefix}/{i}": (np.shape(x), dtype_of(x)) for i, x in enumerate(leaves)})
    try:
        f = checkpoint_file.open_regular(path)
        if f is None:
            return None
        with f:
            checkpoint_file.check_size(f, expected)
            with zipfile.ZipFile(f) as archive:
                meta = json.loads(checkpoint_file.read_meta(archive).decode())
                epoch, history, stored_print = checkpoint_meta.check_meta(meta, key_impl)
                _check_fingerprint(path, stored_print, run_print, resume)
                arrays = checkpoint_file.read_arrays(archive, expected)
    except checkpoint_file.READ_ERRORS + (UnicodeDecodeError,) as e:
        if isinstance(e, CheckpointError) and not isinstance(e, checkpoint_file.FileFormatError):
            raise
        raise _corrupted(path, e) from e
    _check_values(path, arrays)
    params, opt_state = (
        jax.tree.unflatten(treedef, [arrays[f"{prefix}/{i}"] for i in range(len(leaves))])
        for prefix, (leaves, treedef) in trees.items()
    )
    key = arrays["key"]
    if key_impl is not None:
        try:
            key = jax.random.wrap_key_data(key, impl=key_impl)
        except (ValueError, TypeError) as e:
            raise _corrupted(path, e) from e
    return Checkpoint(epoch=epoch, params=params, opt_state=opt_state, key=key, history=history)


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


def _check_values(path: Path, arrays: dict) -> None:
    """Parameters finite and no NaN in the optimizer state (its inf may be a start value)."""
    for name, values in arrays.items():
        if name == "key" or values.dtype.kind not in "fcV":
            continue
        floats = values.astype(np.float32) if values.dtype.kind == "V" else values  # bfloat16
        params = name.startswith("params/")
        bad = ~np.isfinite(floats) if params else np.isnan(floats)
        if bad.any():
            raise CheckpointError(
                f"checkpoint_dir: {path} holds {'non-finite' if params else 'NaN'} values in "
                f"{name} ({int(bad.sum())} of {values.size}); a run never saves those, so the "
                "file is damaged or hand-made. It is left untouched: move it away to start the "
                "run afresh"
            )


RESUME = ("same", "continue")
"""How `load` treats a checkpoint whose caller part differs: refuse, or go on with it."""


def _check_fingerprint(path: Path, stored: dict, current: dict, resume: str) -> None:
    """Raise `CheckpointMismatchError` naming each part, and the first entries, that differ;
    then, unless ``resume == "continue"``, the caller's settings."""
    differ = [part for part in PARTS if stored.get(part) != current[part]]
    if differ:
        found = [d for part in differ for d in differences(stored.get(part), current[part], part)]
        details = "; ".join(
            f"{where}: checkpoint has {old!r:.120}, this run has {new!r:.120}"
            for where, old, new in found[:4]
        )
        raise CheckpointMismatchError(
            f"checkpoint_dir: {path} belongs to a different run ({', '.join(differ)} differ"
            f"); it is left untouched. Use another checkpoint_dir, or the same net, code, data, "
            f"optimizer and settings to resume. {details}"
        )
    if "caller" not in current or resume == "continue" or stored.get("caller") == current["caller"]:
        return
    before = stored.get("caller")
    if not isinstance(before, dict):
        raise CheckpointMismatchError(
            f"checkpoint_dir: {path} records no starting params or optimizer to compare with "
            "this call's (an older manualbp wrote it); it is left untouched. Pass "
            "resume='continue' to go on from it with this call's settings"
        )
    changed = []
    if before.get("optimizer") != current["caller"]["optimizer"]:
        changed.append(
            "the optimizer (its updates on a fixed probe gradient differ: another learning "
            "rate or hyperparameter)"
        )
    leaves = [
        k for k, v in current["caller"]["params"].items() if before.get("params", {}).get(k) != v
    ]
    if leaves:
        changed.append(
            f"the starting params ({', '.join(f'params{k}' for k in leaves[:4])} differ: another "
            "init, seed or params=)"
        )
    raise CheckpointMismatchError(
        f"checkpoint_dir: {path} was trained with other settings than this call passes: "
        f"{'; and '.join(changed)}. It is left untouched. To go on from the checkpoint with "
        "this call's settings, pass resume='continue'; to start afresh, use another "
        "checkpoint_dir"
    )
