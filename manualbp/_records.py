"""What a result is recorded with: the environment it ran in, and strict JSON.

One environment record serves verification reports, run folders and the
benchmark: versions, backend, devices, precision settings and the machine.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

THREAD_VARIABLES = (
    "XLA_FLAGS",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "JAX_PLATFORMS",
    "JAX_DEFAULT_MATMUL_PRECISION",
    "JAX_ENABLE_X64",
    "GLIBC_TUNABLES",
)
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
PACKAGES = ("manualbp", "jax", "jaxlib", "numpy", "optax")


def versions() -> dict[str, str | None]:
    """The installed versions of manualbp, its dependencies and Python."""
    found = {name: _version(name) for name in PACKAGES}
    found["python"] = platform.python_version()
    return found


def environment(*, machine: bool = False) -> dict[str, Any]:
    """Backend, devices, x64 flag and versions; with ``machine``, the CPU, threads and load too."""
    device = jax.devices()[0]
    record = {
        "backend": jax.default_backend(),
        "device": f"{device.platform}: {device.device_kind}",
        "devices": [str(d) for d in jax.devices()],
        "x64": bool(jax.config.jax_enable_x64),
        "versions": versions(),
    }
    if machine:
        record.update(
            platform=platform.platform(),
            cpu=platform.processor() or platform.machine(),
            cpu_count=os.cpu_count(),
            affinity=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            matmul_precision=str(jax.config.jax_default_matmul_precision),
            env={name: os.environ.get(name) for name in THREAD_VARIABLES},
            transparent_hugepages=_read_setting(THP_SETTING),
            loadavg=os.getloadavg(),
            git_commit=_git_commit(),
            argv=sys.argv,
        )
    return record


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _read_setting(path: str) -> str | None:
    """A one-line kernel setting such as "always [madvise] never", or None off Linux."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def to_json(value: Any, *, non_finite: str = "null") -> Any:
    """``value`` as strict JSON: tuples and arrays become lists, inf and NaN null.

    Args:
        value: dataclasses, mappings, sequences, arrays, numbers, strings.
        non_finite: ``"null"`` (default) writes inf and NaN as null;
            ``"string"`` as "inf", "-inf" and "nan", which ``float()`` reads back.
    """
    if non_finite not in ("null", "string"):
        raise ValueError(f"non_finite: expected 'null' or 'string', got {non_finite!r}")
    return _to_json(value, non_finite)


def _to_json(value: Any, non_finite: str) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _to_json(v, non_finite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v, non_finite) for v in value]
    if isinstance(value, (np.ndarray, jax.Array)):
        return _to_json(np.asarray(value).tolist(), non_finite)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if math.isfinite(value):
            return float(value)
        return str(float(value)) if non_finite == "string" else None
    if value is None or isinstance(value, str):
        return value
    return str(value)
