"""Reading a checkpoint file as untrusted input: every size, name and header checked first.

A checkpoint is a zip archive of ``.npy`` members written by `np.savez` (stored,
not compressed). A file from elsewhere may be hostile, so the functions below read
only what the run expects, in this order, and allocates nothing a number from
the file asked for:

1. the path is a regular file (not a FIFO, which would block, nor a symlink,
   which a save would silently replace), opened without following links;
2. the file is no larger than the expected members plus the metadata's bound;
3. the zip directory lists exactly the expected members, each stored
   uncompressed (so no deflate bomb), unencrypted, of a zip version we write;
4. each member's ``.npy`` header (at most `HEADER_BYTES`) gives exactly the
   expected shape and dtype, and the member's size is the header plus that
   many bytes;
5. only then its data are read, and the zip format's CRC-32 is checked.

The metadata is read first (`read_meta`), so that a checkpoint of another run
is named as such before its arrays are compared with this run's.

A check that fails raises `FileFormatError` (a ValueError) saying what was
expected and what came; the parsers' own errors on damaged bytes are listed in
`READ_ERRORS`, which `checkpoint.load` turns into a `CheckpointError`.
"""

from __future__ import annotations

import ast
import io
import math
import os
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

HEADER_BYTES = 4096
"""The largest ``.npy`` header we read (ours are 128 bytes)."""

META_BYTES = 1 << 26
"""The largest metadata member (64 MiB: hundreds of thousands of epochs of history)."""

MEMBER_OVERHEAD = 512
"""Zip bytes per member besides its data and name: local header, directory entry, zip64."""

ZIP_VERSIONS = (20, 45)
"""The zip versions (needed to extract) `np.savez` writes: 2.0, and 4.5 for zip64."""

ALLOWED_FLAGS = 0x0800
"""General-purpose flag bits we accept: only "names are UTF-8" (no encryption, no patches)."""

READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    NotImplementedError,
    RuntimeError,
    OverflowError,
    RecursionError,
    SyntaxError,
    MemoryError,
    struct.error,
    zlib.error,
    zipfile.BadZipFile,
)
"""What the zip and ``.npy`` parsers raise on damaged bytes (RuntimeError: "encrypted")."""


class FileFormatError(ValueError):
    """A checkpoint file that is not what the run expects."""


def open_regular(path: Path):
    """``path`` opened for binary reading if it is a regular file; None if it does not exist.

    Raises:
        FileFormatError: it is a symlink (even a dangling one), a FIFO, a directory, ...
    """
    try:
        fd = os.open(
            path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        )
    except FileNotFoundError:
        if os.path.lexists(path):
            raise FileFormatError(_not_regular(path, os.lstat(path).st_mode)) from None
        return None
    except OSError as e:  # O_NOFOLLOW on a symlink: ELOOP
        if os.path.islink(path):
            raise FileFormatError(_not_regular(path, os.lstat(path).st_mode)) from e
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise FileFormatError(_not_regular(path, mode))
    return os.fdopen(fd, "rb")


def check_kind(path: Path) -> None:
    """Raise `FileFormatError` unless ``path`` is absent or a regular file (not a link)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise FileFormatError(_not_regular(path, mode))


def _not_regular(path: Path, mode: int) -> str:
    kinds = (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    kind = next((name for test, name in kinds if test(mode)), "a special file")
    return f"{path} is {kind}, not a regular file (a checkpoint is a regular file or absent)"


def npy_bytes(shape: tuple, dtype: np.dtype) -> int:
    """The data bytes of an array of ``shape`` and ``dtype``."""
    return math.prod(shape) * np.dtype(dtype).itemsize


def check_size(f, expected: dict[str, tuple[tuple, np.dtype]]) -> None:
    """The open file ``f`` is no larger than the ``expected`` members (name: (shape, dtype)),
    the metadata and the zip's own bytes can make it."""
    per_member = HEADER_BYTES + MEMBER_OVERHEAD + 2 * max(map(len, [*expected, "meta"]))
    limit = sum(npy_bytes(*spec) for spec in expected.values()) + META_BYTES
    limit += 64 + (len(expected) + 1) * per_member
    size = os.fstat(f.fileno()).st_size
    if size > limit:
        raise FileFormatError(
            f"the file holds {size} bytes, more than this run's checkpoint can ({limit}): "
            "another run's, or not a checkpoint"
        )


def read_meta(archive: zipfile.ZipFile) -> bytes:
    """The ``meta`` member's bytes (1-D uint8, at most `META_BYTES`)."""
    return _read_member(archive, archive.getinfo("meta.npy"), None).tobytes()


def read_arrays(
    archive: zipfile.ZipFile, expected: dict[str, tuple[tuple, np.dtype]]
) -> dict[str, np.ndarray]:
    """Exactly the ``expected`` members (name: (shape, dtype)) besides ``meta``, each checked
    before it is read; an archive with any other member is refused unread."""
    found = sorted(info.filename for info in archive.infolist())
    wanted = sorted(f"{name}.npy" for name in [*expected, "meta"])
    if found != wanted:
        extra = sorted(set(found) - set(wanted)) or "none"
        missing = sorted(set(wanted) - set(found)) or "none"
        raise FileFormatError(
            f"the archive's members are not this run's: unexpected {extra!s:.200}, "
            f"missing {missing!s:.200}"
        )
    return {
        name: _read_member(archive, archive.getinfo(f"{name}.npy"), spec)
        for name, spec in expected.items()
    }


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, spec) -> np.ndarray:
    """One member: zip entry checked, ``.npy`` header checked, then its data (CRC-checked)."""
    name = info.filename
    if info.flag_bits & ~ALLOWED_FLAGS:
        raise FileFormatError(f"{name}: zip flags {info.flag_bits:#06x} (encrypted or patched)")
    if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
        raise FileFormatError(f"{name}: compression method {info.compress_type}, expected stored")
    if info.extract_version not in ZIP_VERSIONS:
        raise FileFormatError(f"{name}: zip version {info.extract_version}, expected 20 or 45")
    with archive.open(info) as member:
        header = member.read(min(info.file_size, HEADER_BYTES))
        shape, descr, header_length = _npy_header(io.BytesIO(header), name)
        if spec is None:  # the metadata: 1-D bytes, bounded
            spec = ((info.file_size - header_length,), np.dtype(np.uint8))
            if spec[0][0] > META_BYTES:
                raise FileFormatError(f"{name}: {spec[0][0]} bytes, at most {META_BYTES}")
        dtype = np.dtype(spec[1])
        # As np.save writes it: bfloat16 (ml_dtypes) is written as "<V2".
        expected = np.lib.format.dtype_to_descr(dtype)
        if (shape, descr) != (tuple(spec[0]), expected):
            raise FileFormatError(
                f"{name}: shape {shape} {descr!r:.40}, expected {tuple(spec[0])} {expected!r}"
            )
        if info.file_size != header_length + npy_bytes(shape, dtype):
            raise FileFormatError(f"{name}: {info.file_size} bytes, not header plus data")
        data = header[header_length:] + member.read(info.file_size - len(header))
        member.read(1)  # at the end of the member: zipfile checks the CRC-32 here
    return np.frombuffer(data, dtype).reshape(shape).copy()


def _npy_header(head: io.BytesIO, name: str) -> tuple[tuple, str, int]:
    """(shape, dtype description, header bytes) of an ``.npy`` header, version 1 to 3, C order."""
    version = np.lib.format.read_magic(head)
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise FileFormatError(f"{name}: .npy version {version}")
    length_format = "<H" if version == (1, 0) else "<I"
    (length,) = struct.unpack(length_format, head.read(struct.calcsize(length_format)))
    if head.tell() + length > HEADER_BYTES:
        raise FileFormatError(f"{name}: a .npy header of {length} bytes")
    fields = ast.literal_eval(head.read(length).decode("latin1"))
    if not isinstance(fields, dict) or set(fields) != {"descr", "fortran_order", "shape"}:
        raise FileFormatError(f"{name}: not a .npy header")
    shape, descr = fields["shape"], fields["descr"]
    if (
        fields["fortran_order"] is not False
        or not isinstance(shape, tuple)
        or not all(isinstance(s, int) and 0 <= s < 2**48 for s in shape)
        or not isinstance(descr, str)
    ):
        raise FileFormatError(f"{name}: a .npy header with shape {shape!r:.80}")
    return shape, descr, head.tell()
