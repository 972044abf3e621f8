"""The checkpoint directory: its files, its one writer, and what can go wrong with a checkpoint.

One writer: `lock` checks that the directory can be written (before any
epoch's work) and holds an OS advisory lock (``flock``) on
``<checkpoint_dir>/.checkpoint.lock`` for the whole run, so a second run on
the same directory fails at once with `CheckpointLockedError` and writes
nothing. The lock goes with the process, even one killed by SIGKILL; it is
not taken where ``fcntl`` is missing (Windows), and it is only as reliable as
``flock`` on the file system (on NFS it depends on the server).

The checkpoint itself is ``<checkpoint_dir>/checkpoint.npz``; a save writes a
temporary file beside it (`TEMPORARY`) and moves it into place.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from manualbp.training import checkpoint_file

try:
    import fcntl
except ImportError:  # Windows: no advisory lock (module docstring)
    fcntl = None

FILENAME = "checkpoint.npz"
LOCKNAME = ".checkpoint.lock"
TEMPORARY = (f".{FILENAME}.", ".tmp")  # prefix and suffix of a save's temporary file


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (corrupted, truncated, or not manualbp's)."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint of a different run: another net, code, data, optimizer or run settings."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint directory that cannot be written: a file, below a file, read-only, full."""


class CheckpointLockedError(CheckpointWriteError):
    """A checkpoint directory in use by another training run."""


def path_in(checkpoint_dir: str | os.PathLike) -> Path:
    """The checkpoint file inside ``checkpoint_dir``."""
    return Path(checkpoint_dir) / FILENAME


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


def fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not every platform lets a directory be opened.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
