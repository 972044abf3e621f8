"""What every command checks before any work: seeds, widths, counts, names and memory.

Each check raises `UserError` naming the flag, what it expected and what came, so
that no number from the command line reaches JAX or XLA unchecked (an
OverflowError from a seed, an XLA abort from a width of 2³¹).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from manualbp.tools.console import UserError
from manualbp.training import memory

SEED_RANGE = (-(2**63), 2**63 - 1)
"""A `jax.random.key` seed is a signed 64-bit integer."""

BYTES_PER_VALUE = 8
"""Every estimate counts 8 bytes per number: float64 runs, or float32 with a copy."""

WORKING_COPIES = 8
"""Live copies of each activation and parameter during a step (forward, backward, the
witness or the optimizer state), a generous round count, so the estimate errs high."""


def check_seed(seed: int, flag: str = "--seed") -> int:
    low, high = SEED_RANGE
    if not low <= seed <= high:
        raise UserError(f"{flag}: expected an integer from -2**63 to 2**63-1, got {seed}")
    return seed


def check_at_least(value, low, flag: str, what: str = "a number"):
    if not value >= low:
        raise UserError(f"{flag}: expected {what} of at least {low}, got {value}")
    return value


def check_sizes(sizes: Sequence[int], flag: str = "--sizes") -> tuple[int, ...]:
    """Layer widths N_1 ... N_L: at least an input and an output layer, every width ≥ 1."""
    if len(sizes) < 2:
        raise UserError(f"{flag}: expected at least two layers (N_1 and N_L), got {list(sizes)}")
    for width in sizes:
        check_at_least(width, 1, flag, "every width")
    return tuple(sizes)


def net_bytes(sizes: Sequence[int], batch: int) -> int:
    """Bytes a step of a net of ``sizes`` on ``batch`` examples may hold, estimated high.

    Parameters Σ_l N_l (N_{l-1} + 1) and activations B Σ_l N_l, each in
    `WORKING_COPIES` copies of `BYTES_PER_VALUE` bytes.
    """
    weights = sum(n * (n_prev + 1) for n_prev, n in zip(sizes[:-1], sizes[1:], strict=True))
    activations = batch * sum(sizes)
    return (weights + activations) * WORKING_COPIES * BYTES_PER_VALUE


def available() -> tuple[int, str]:
    """Bytes this process can still allocate, and what sets that bound (`training.memory`)."""
    return memory.available()


def check_fits(needed: int, what: str, flags: str) -> None:
    """Refuse ``needed`` bytes when they exceed what is `available`, naming the flags to lower."""
    free, why = available()
    if needed > free:
        raise UserError(
            f"{flags}: {what} needs about {_gib(needed)} of memory, {_gib(free)} is available "
            f"({why}); choose smaller values"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB"


def name_max(folder: Path) -> int:
    """The longest file name the file system under ``folder`` allows (255 where unknown)."""
    while not os.path.exists(folder) and folder != folder.parent:  # False for a name too long
        folder = folder.parent
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_path_names(path: str, flag: str, longest_child: int = 0) -> None:
    """Every name in ``path`` fits the file system's name limit, and so does the whole path.

    ``longest_child``: the characters the command appends below ``path``
    (``/autodiff/checkpoint.npz``), counted against the path limit.
    """
    limit = name_max(Path(path).absolute())
    for name in Path(path).parts:
        if len(name) > limit:
            raise UserError(
                f"{flag}: a folder name in it is {len(name)} characters long "
                f"({name[:20]}...); the file system allows {limit}"
            )
    total = len(str(Path(path).absolute())) + longest_child
    if total >= 4096:
        raise UserError(f"{flag}: the path is {total} characters long; the limit is 4095")


def check_folder_name(name: str, flag: str) -> None:
    """A single folder name: no separator, not '.' or '..', within the name limit."""
    if not name or os.sep in name or (os.altsep and os.altsep in name) or name in (".", ".."):
        raise UserError(f"{flag}: expected one folder name, without '/', got {name!r}")
    if len(name) > 255:
        raise UserError(f"{flag}: the name is {len(name)} characters long; the limit is 255")
