"""Several processes, one run: joining the job, and checking that every process holds the same run.

`join` starts `jax.distributed` after checking, in process 0 (which hosts the
coordinator), that the coordinator's port is free: otherwise every process
would wait out the connection timeout and die in gRPC's log lines.

`check_agree` is called by `train` before the first epoch: one all-gather of a
SHA-1 per entry of the run's fingerprint (`AGREEMENT`), so that processes given
different data, keys, starting parameters or optimizers refuse together, naming
the first entry on which they differ, instead of training silently apart.
"""

from __future__ import annotations

import hashlib
import json
import socket

import jax
import numpy as np
from jax.experimental import multihost_utils


class CoordinatorPortInUseError(OSError):
    """The coordinator's address cannot be bound: another program holds the port."""


class ProcessesDisagreeError(ValueError):
    """The processes of one job were given different runs."""


def check_port_free(coordinator_address: str) -> None:
    """Raise `CoordinatorPortInUseError` when ``host:port`` cannot be bound here."""
    host, _, port = coordinator_address.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise ValueError(
            f"coordinator_address: expected host:port, got {coordinator_address!r}"
        ) from None
    with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as probe:
        try:
            probe.bind((host.strip("[]") or "0.0.0.0", number))
        except OSError as e:
            raise CoordinatorPortInUseError(
                f"coordinator {coordinator_address}: the port cannot be bound ({e.strerror}); "
                "another program holds it: choose another port for the job"
            ) from e


def join(coordinator_address: str, num_processes: int, process_id: int, timeout_s: int = 60):
    """`jax.distributed.initialize`, after process 0 checks the coordinator's port is free."""
    if process_id == 0:
        check_port_free(coordinator_address)
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=timeout_s,
    )


AGREEMENT = (
    ("data", "X"),
    ("data", "Y"),
    ("data",),
    ("run", "key"),
    ("run",),
    ("caller", "params"),
    ("caller", "optimizer"),
    ("net",),
    ("code",),
    ("params",),
    ("opt_state",),
)
"""The fingerprint's entries compared across processes, the most telling first."""


def _entry(printed: dict, path: tuple[str, ...]):
    for name in path:
        printed = printed.get(name) if isinstance(printed, dict) else None
    return printed


def digests(printed: dict) -> np.ndarray:
    """One SHA-1 per `AGREEMENT` entry of a fingerprint: uint8 of shape (entries, 20)."""
    rows = [
        hashlib.sha1(
            json.dumps(_entry(printed, path), sort_keys=True).encode(), usedforsecurity=False
        ).digest()
        for path in AGREEMENT
    ]
    return np.frombuffer(b"".join(rows), np.uint8).reshape(len(AGREEMENT), 20)


def check_agree(printed: dict) -> None:
    """With several processes, one all-gather of `digests`; raise on the first difference.

    Every process receives every digest, so all raise together.
    """
    if jax.process_count() == 1:
        return
    gathered = np.asarray(multihost_utils.process_allgather(digests(printed)))
    for i, path in enumerate(AGREEMENT):
        holders = [bytes(row[i]).hex()[:12] for row in gathered]
        if len(set(holders)) > 1:
            by_process = ", ".join(f"process {k}: {h}" for k, h in enumerate(holders))
            raise ProcessesDisagreeError(
                f"the processes hold different runs: {'.'.join(path)} differs (SHA-1 "
                f"{by_process}); every process must call train with the same data, key, "
                "starting params, optimizer and settings"
            )
