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

One writer: `lock` checks that the directory can be written (before any
epoch's work) and holds an OS advisory lock (``flock``) on
``<checkpoint_dir>/.checkpoint.lock`` for the whole run, so a second run on
the same directory fails at once with `CheckpointLockedError` and writes
nothing. The lock goes with the process, even one killed by SIGKILL; it is
not taken where ``fcntl`` is missing (Windows), and it is only as reliable as
``flock`` on the file system (on NFS it depends on the server).

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
from manualbp.training.identity import (
    PARTS,
    differences,
    dtype_of,
    key_arrays,
)
from manualbp.training.identity import fingerprint as fingerprint  # re-exported for callers
from manualbp.training.identity import key_description as key_description
from manualbp.training.identity import to_host as to_host

try:
    import fcntl
except ImportError:  # Windows: no advisory lock (module docstring)
    fcntl = None

FILENAME = "checkpoint.npz"
LOCKNAME = ".checkpoint.lock"
TEMPORARY = (f".{FILENAME}.", ".tmp")  # prefix and suffix of a save's temporary file
FORMAT = checkpoint_meta.FORMAT


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (corrupted, truncated, or not manualbp's)."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint of a different run: another net, code, data, optimizer or run settings."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint directory that cannot be written: a file, below a file, read-only, full."""


class CheckpointLockedError(CheckpointWriteError):
    """A checkpoint directory in use by another training run."""


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
    _fsync_directory(directory)
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


def writable_directory(checkpoint_dir: str | os.PathLike) -> Path:
    """``checkpoint_dir``, created if missing, after checking a file can be created in it.

    Raises:
        CheckpointWriteError: it is a file, lies below a file, or cannot be written.
    """
    if not str(checkpoint_dir):
        raise CheckpointWriteError(
            "checkpoint_dir: expected a directory path, got '' (for the current directory, "
            "pass '.')"
        )
    directory = Path(checkpoint_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=TEMPORARY[0], suffix=TEMPORARY[1])
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        file = next((p for p in (directory, *directory.parents) if p.is_file()), None)
        if file == directory:
            reason = "is a file, not a directory"
        elif file is not None:
            reason = f"lies below the file {file}"
        else:
            reason = f"cannot be written ({e.strerror or e})"
        raise CheckpointWriteError(
            f"checkpoint_dir: {directory} {reason}; nothing was written there"
        ) from e
    return directory


@contextlib.contextmanager
def lock(checkpoint_dir: str | os.PathLike):
    """Hold ``checkpoint_dir`` for one run: check it is writable, then lock it.

    The lock is an advisory ``flock`` on ``.checkpoint.lock`` in the directory,
    released when the block ends (or the process does). Temporary files that
    a killed run left behind are removed once the lock is held.

    Raises:
        CheckpointWriteError: the directory cannot be written.
        CheckpointLockedError: another run holds it.
    """
    directory = writable_directory(checkpoint_dir)
    try:
        checkpoint_file.check_kind(path_in(directory))
    except checkpoint_file.FileFormatError as e:
        raise CheckpointWriteError(f"checkpoint_dir: {e}; nothing was written there") from e
    if fcntl is None:
        yield directory
        return
    try:
        fd = os.open(directory / LOCKNAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise CheckpointWriteError(
            f"checkpoint_dir: cannot open the lock file {directory / LOCKNAME} ({e.strerror})"
        ) from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise CheckpointLockedError(
                f"checkpoint_dir: {directory} is in use by another training run (it holds "
                f"{LOCKNAME}); nothing was written. Wait for it to end, or use another "
                "checkpoint_dir"
            ) from e
        for stale in directory.glob(f"{TEMPORARY[0]}*{TEMPORARY[1]}"):
            with contextlib.suppress(OSError):
                stale.unlink()
        yield directory
    finally:
        os.close(fd)  # releases the lock


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
    before = stored.get("caller") or {}
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
