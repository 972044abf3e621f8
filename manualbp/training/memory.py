"""How much memory a training run needs, estimated before anything is allocated.

`estimate` counts, from the shapes alone (`jax.eval_shape`, no allocation):

- parameters: the caller's, the run's copy and the gradients, P bytes each
  (P = Σ_l (N_l N_{l-1} + N_l) · itemsize), plus a copy in the compute dtype
  when it differs;
- optimizer state: ``optimizer.init`` on the parameters' shapes, twice (the
  state and its placed copy);
- a batch's activations: z^l, a^l and δ^l for every layer, B Σ_l N_l values
  each in the compute dtype, and the batch itself;
- the data on the device: X and Y, twice (the epoch's shuffled copy), and the
  test set with its forward pass.

It is an estimate of the arrays manualbp asks for on one device, not of XLA's
workspace or JAX's own footprint (nor of the replicas that a mesh of several
CPU devices keeps in the same host memory), so `check_fits` refuses only a run
whose estimate exceeds what is available: on an accelerator its free memory
(``memory_stats``); on the CPU the smallest of the memory the kernel calls
available (``/proc/meminfo``, else ``os.sysconf``), the address-space and data
limits (``ulimit -v``, ``ulimit -d``) less what the process already uses, and
a cgroup's memory limit less its usage.
"""

from __future__ import annotations

import math
import os
import resource
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np


class RunTooLargeError(ValueError):
    """A run whose estimated memory exceeds what is available."""


class RunShape(NamedTuple):
    """The sizes that decide a run's memory (`estimate`)."""

    sizes: tuple[int, ...]  # N_1 ... N_L
    n: int  # training examples
    batch_size: int
    n_test: int = 0
    dtype: np.dtype = np.dtype(np.float32)  # the parameters' and data's dtype
    compute_dtype: np.dtype | None = None  # default: dtype


class Estimate(NamedTuple):
    """Bytes a run needs, by what holds them."""

    parameters: int
    optimizer_state: int
    activations: int
    data: int

    @property
    def total(self) -> int:
        return sum(self)


def params_bytes(sizes: tuple[int, ...], itemsize: int) -> int:
    """P = Σ_{l=2..L} (N_l N_{l-1} + N_l) · itemsize: every W^l and b^l."""
    return sum(
        (n_out * n_in + n_out) * itemsize for n_in, n_out in zip(sizes, sizes[1:], strict=False)
    )


def estimate(shape: RunShape, optimizer, params_like) -> Estimate:
    """The memory a run of ``shape`` needs (module docstring); allocates nothing.

    Args:
        shape: the run's sizes.
        optimizer: the optax optimizer, whose state's shapes are counted.
        params_like: the parameters, or their `jax.ShapeDtypeStruct`s.
    """
    item = np.dtype(shape.dtype).itemsize
    compute = np.dtype(shape.compute_dtype or shape.dtype).itemsize
    P = params_bytes(shape.sizes, item)
    parameters = 3 * P + (params_bytes(shape.sizes, compute) if compute != item else 0)
    state = jax.eval_shape(optimizer.init, params_like)
    optimizer_state = 2 * sum(
        math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state)
    )
    widths = sum(shape.sizes[1:])
    activations = shape.batch_size * (3 * widths + shape.sizes[0]) * compute
    row = (shape.sizes[0] + shape.sizes[-1]) * item
    data = 2 * shape.n * row + shape.n_test * (row + 2 * widths * item)
    return Estimate(parameters, optimizer_state, activations, data)


def available() -> tuple[int, str]:
    """Bytes this process can still allocate for arrays, and what sets that bound."""
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
        return free, f"free on {device.device_kind}"
    bounds = [_memory_available()]
    bounds += [_limit_left(resource.RLIMIT_AS, "ulimit -v", _used_virtual())]
    bounds += [_limit_left(resource.RLIMIT_DATA, "ulimit -d", _used_virtual())]
    bounds += [_cgroup_left()]
    return min((b for b in bounds if b is not None), key=lambda b: b[0])


def _memory_available() -> tuple[int, str]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free physical memory"


def _used_virtual() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _limit_left(which: int, name: str, used: int) -> tuple[int, str] | None:
    soft, _ = resource.getrlimit(which)
    if soft == resource.RLIM_INFINITY:
        return None
    return max(soft - used, 0), f"the limit {name} = {soft // 1024} KiB, less what is in use"


def _cgroup_left() -> tuple[int, str] | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None
    if limit == "max":
        return None
    return max(int(limit) - used, 0), "the container's memory limit, less what is in use"


def check_fits(needed: Estimate) -> None:
    """Raise `RunTooLargeError` when ``needed`` exceeds what is `available`."""
    free, why = available()
    if needed.total <= free:
        return
    parts = ", ".join(
        f"{name.replace('_', ' ')} {_size(value)}" for name, value in needed._asdict().items()
    )
    raise RunTooLargeError(
        f"memory: this run needs about {_size(needed.total)} ({parts}), but {_size(free)} is "
        f"available ({why}); use fewer or narrower layers, a smaller batch_size or fewer examples"
    )


def _size(count: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"
