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

Safe to resume: the fingerprint records the net (widths, σ names, loss,
fusion) and its plug-ins' code (`identity.code_identity` of every σ, σ', E
and ∂E/∂ŷ), every parameter's path, shape and dtype, the optimizer state's
tree structure with its leaves' shapes and dtypes, the run's settings (batch
size, gradient path, compute dtype, the starting key) and the data's shapes,
dtypes and content hashes (`identity.data_identity`). A checkpoint whose
fingerprint differs raises `CheckpointMismatchError` naming what differs; an
unreadable one (truncated, bit-flipped: the zip format's CRC-32 catches both;
metadata out of range, such as a negative epoch) raises `CheckpointError`.
Either way the file is left as it is. Two optimizers with the same state
structure (``optax.sgd(0.1)`` and ``optax.sgd(0.2)``) cannot be told apart
from their states.

The metadata is strict JSON: a non-finite number in the history (an
overflowing test loss) is written as the string "inf", "-inf" or "nan" and
read back as that float.
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
from jax.experimental import multihost_utils

from manualbp.records import to_json
from manualbp.training import checkpoint_file, checkpoint_meta
from manualbp.training.identity import code_identity, data_identity

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


def _dtype(x) -> np.dtype:
    return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


def _describe_leaves(tree) -> list[list]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [[jax.tree_util.keystr(path), list(np.shape(x)), str(_dtype(x))] for path, x in flat]


PARTS = ("net", "code", "params", "opt_state", "run", "data")


def fingerprint(net, params, opt_state, run: dict, data: dict | None = None) -> dict:
    """A JSON-able description of what a checkpoint must match to be resumed.

    Args:
        net: the `MLP`.
        params, opt_state: the run's parameters and optimizer state (any values;
            only their structure, shapes and dtypes are recorded).
        run: JSON-able settings that must also match (batch size, the key, ...).
        data: named arrays whose content must match (X, Y, the test set).
    """
    return {
        "net": {
            "sizes": list(net.sizes),
            "activations": [sigma.name for sigma in net.activations],
            "loss": net.loss.name,
            "fused": net.fused,
        },
        "code": _code_of(net),
        "params": _describe_leaves(params),
        "opt_state": {
            "structure": str(jax.tree.structure(opt_state)),
            "leaves": _describe_leaves(opt_state),
        },
        "run": run,
        "data": {name: data_identity(to_host(x)) for name, x in (data or {}).items()},
    }


def _code_of(net) -> dict:
    """The code identity of every σ^l, σ^l' (l = 2..L) and of E and ∂E/∂ŷ."""
    fields = ("fn", "deriv", "deriv_from_output", "jac_t_dot")
    return {
        "activations": {
            f"layer l={k + 2} ({sigma.name})": {f: code_identity(getattr(sigma, f)) for f in fields}
            for k, sigma in enumerate(net.activations)
        },
        "loss": {f: code_identity(getattr(net.loss, f)) for f in ("fn", "grad")},
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
    """Write ``state`` atomically (temporary file, fsync, `os.replace`); return the path.

    Raises:
        CheckpointWriteError: the file could not be written; the partial file
            is removed and the previous checkpoint, if any, is kept.
    """
    directory = Path(checkpoint_dir)
    final = path_in(directory)
    arrays = _arrays(state, fingerprint)
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


def _arrays(state: Checkpoint, fingerprint: dict) -> dict[str, np.ndarray]:
    """What the file holds: the key, the metadata as strict JSON bytes, every leaf."""
    key_data, key_impl = _key_arrays(state.key)
    meta = {
        "format": FORMAT,
        "epoch": state.epoch,
        "key_impl": key_impl,
        "history": state.history,
        "fingerprint": fingerprint,
    }
    text = json.dumps(to_json(meta, non_finite="string"), allow_nan=False)
    arrays = {"key": key_data, "meta": np.frombuffer(text.encode(), np.uint8)}
    for prefix, tree in (("params", state.params), ("opt_state", state.opt_state)):
        for i, leaf in enumerate(jax.tree.leaves(tree)):
            arrays[f"{prefix}/{i}"] = to_host(leaf)
    return arrays


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
    fingerprint: dict,
    params_like,
    opt_state_like,
    key_like=None,
) -> Checkpoint | None:
    """The checkpoint in ``checkpoint_dir``, or None if there is none yet.

    The file is read as untrusted input (`checkpoint_file`): only the members
    this run expects, each checked against ``params_like``, ``opt_state_like``
    and ``key_like`` before it is read; then the metadata (`checkpoint_meta`),
    the fingerprint, and the values: parameters finite, no NaN in the
    optimizer state.

    Args:
        checkpoint_dir: the directory `save` wrote to.
        fingerprint: what the checkpoint must match (see `fingerprint`).
        params_like, opt_state_like: trees with the structure to rebuild.
        key_like: a key of the run's implementation and shape (default:
            ``jax.random.key(0)``'s).

    Raises:
        CheckpointError: the file cannot be read or is inconsistent.
        CheckpointMismatchError: it belongs to a different run.
    """
    path = path_in(checkpoint_dir)
    key_like = jax.random.key(0) if key_like is None else key_like
    key_data_like, key_impl = _key_arrays(key_like)
    trees = {
        prefix: jax.tree.flatten(like)
        for prefix, like in (("params", params_like), ("opt_state", opt_state_like))
    }
    expected = {"key": (key_data_like.shape, key_data_like.dtype)}
    for prefix, (leaves, _) in trees.items():
        expected.update({f"{prefix}/{i}": (np.shape(x), _dtype(x)) for i, x in enumerate(leaves)})
    try:
        f = checkpoint_file.open_regular(path)
        if f is None:
            return None
        with f:
            checkpoint_file.check_size(f, expected)
            with zipfile.ZipFile(f) as archive:
                meta = json.loads(checkpoint_file.read_meta(archive).decode())
                epoch, history, stored_print = checkpoint_meta.check_meta(meta, key_impl)
                _check_fingerprint(path, stored_print, fingerprint)
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


def _check_fingerprint(path: Path, stored: dict, current: dict) -> None:
    """Raise `CheckpointMismatchError` naming each part, and the first entries, that differ."""
    differ = [part for part in PARTS if stored.get(part) != current[part]]
    if not differ:
        return
    found = [d for part in differ for d in _differences(stored.get(part), current[part], part)]
    details = "; ".join(
        f"{where}: checkpoint has {old!r:.120}, this run has {new!r:.120}"
        for where, old, new in found[:4]
    )
    raise CheckpointMismatchError(
        f"checkpoint_dir: {path} belongs to a different run ({', '.join(differ)} differ"
        f"); it is left untouched. Use another checkpoint_dir, or the same net, code, data, "
        f"optimizer and settings to resume. {details}"
    )


def _differences(stored, current, where: str) -> list[tuple[str, Any, Any]]:
    """(path, stored, current) of every leaf that differs, e.g. ``data.X.sha1``."""
    if isinstance(stored, dict) and isinstance(current, dict):
        keys = list(current) + [k for k in stored if k not in current]
        return [
            d for k in keys for d in _differences(stored.get(k), current.get(k), f"{where}.{k}")
        ]
    if isinstance(stored, list) and isinstance(current, list) and len(stored) == len(current):
        return [
            d
            for i, (a, b) in enumerate(zip(stored, current, strict=True))
            for d in _differences(a, b, f"{where}[{i}]")
        ]
    return [] if stored == current else [(where, stored, current)]
