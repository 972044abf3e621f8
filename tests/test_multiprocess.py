"""Data-parallel training across two processes, for real: `jax.distributed` on loopback.

Two Python processes on this machine, each with two CPU devices, join one JAX
job through a coordinator on 127.0.0.1 (a free port) and train the shared case
of test_train with `mbp.train` over the four-device global mesh; XLA sums the
gradients across the processes with gloo, JAX's CPU collectives. The test
checks that they agree with each other, equal the single-process run within
the tolerance rule, that only process 0 wrote the checkpoint, and that both
resume from it to the uninterrupted run's bits. Each process is killed after
`TIMEOUT_S`; no traffic leaves the loopback address.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manualbp import tolerance
from manualbp.training import checkpoint, processes

PROCESSES, DEVICES_EACH = 2, 2
TIMEOUT_S = 150


def child_main(process_id: int, port: int, checkpoint_dir: str) -> None:
    """One process of the job: train, checkpoint, resume; print what it saw as JSON."""
    processes.join(f"127.0.0.1:{port}", PROCESSES, process_id)
    jax.config.update("jax_numpy_rank_promotion", "raise")
    from test_train import X_TEST, Y_TEST, run

    import manualbp as mbp
    from manualbp.training import checkpoint

    saves = []
    save = checkpoint.save
    checkpoint.save = lambda directory, state, fingerprint: (
        saves.append(state.epoch),
        save(directory, state, fingerprint),
    )[1]

    mesh = mbp.data_parallel_mesh(jax.devices())
    options = dict(mesh=mesh, eval_data=(X_TEST, Y_TEST), check_every=3)
    uninterrupted = run(epochs=3, **options)
    run(epochs=2, checkpoint_dir=checkpoint_dir, **options)
    resumed = run(epochs=3, checkpoint_dir=checkpoint_dir, **options)

    def host(result):
        trees = (result.params, result.opt_state, jax.random.key_data(result.key))
        return jax.tree.map(checkpoint.to_host, trees)

    print(
        json.dumps(
            {
                "process_index": jax.process_index(),
                "process_count": jax.process_count(),
                "devices": jax.device_count(),
                "local_devices": jax.local_device_count(),
                "params": [[np.asarray(x).tolist() for x in layer] for layer in host(resumed)[0]],
                "history": uninterrupted.history,
                "resumed_history": resumed.history,
                "resume_bit_identical": all(
                    np.array_equal(a, b)
                    for a, b in zip(
                        jax.tree.leaves(host(resumed)),
                        jax.tree.leaves(host(uninterrupted)),
                        strict=True,
                    )
                ),
                "saved_epochs": saves,
            }
        )
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DISAGREEMENTS = ("key", "X", "params", "optimizer")
"""What process 1 is given differently from process 0, one train call each."""


def child_disagree(process_id: int, port: int) -> None:
    """One process of a job whose processes are given different runs; print the errors."""
    processes.join(f"127.0.0.1:{port}", PROCESSES, process_id)
    import optax
    from test_train import OPTIMIZER, PARAMS, X, make_params, run

    import manualbp as mbp

    # Process 0 passes the shared case's own value, process 1 another one.
    given = {
        "key": [jax.random.key(1), jax.random.key(2)],
        "X": [X, X + np.float32(1)],
        "params": [PARAMS, make_params(seed=1)],
        "optimizer": [OPTIMIZER, optax.adam(0.1)],
    }
    mesh = mbp.data_parallel_mesh(jax.devices())
    errors = {}
    for what in DISAGREEMENTS:
        try:
            run(epochs=1, mesh=mesh, **{what: given[what][process_id]})
            errors[what] = None
        except processes.ProcessesDisagreeError as e:
            errors[what] = str(e)
    print(json.dumps({"process_index": jax.process_index(), "errors": errors}))


def launch(checkpoint_dir: str | None, child: str = "child_main") -> list[dict]:
    """Start the processes, wait for them (at most TIMEOUT_S), return each one's JSON."""
    tests = Path(__file__).parent
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES_EACH}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([str(tests.parent), str(tests)]),
    )
    port = free_port()
    arguments = f"{port}" if checkpoint_dir is None else f"{port}, {checkpoint_dir!r}"
    code = f"import sys, test_multiprocess as t; t.{child}(int(sys.argv[1]), {arguments})"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(i)],
            cwd=tests,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(PROCESSES)
    ]
    outputs = []
    try:
        for child in children:
            out, err = child.communicate(timeout=TIMEOUT_S)
            assert child.returncode == 0, f"process exited {child.returncode}: {err[-3000:]}"
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    return outputs


def test_two_processes_train_as_one():
    from test_train import BATCH, NET, X_TEST, Y_TEST, run

    with tempfile.TemporaryDirectory() as checkpoint_dir:
        found = launch(checkpoint_dir)
        written = sorted(p.name for p in Path(checkpoint_dir).iterdir())
    assert [f["process_index"] for f in found] == [0, 1]
    assert all(f["process_count"] == PROCESSES for f in found)
    assert all(f["devices"] == PROCESSES * DEVICES_EACH for f in found)
    assert all(f["local_devices"] == DEVICES_EACH for f in found)

    # Only process 0 wrote, once per epoch of each call; nothing else is left behind.
    assert [f["saved_epochs"] for f in found] == [[1, 2, 3], []]
    assert written == sorted(["checkpoint.npz", checkpoint.LOCKNAME])  # the lock file stays
    # Both resumed from it (the history's first two epochs came from the file) to the bits
    # of the uninterrupted run, and both processes hold the same parameters.
    assert all(f["resume_bit_identical"] for f in found)
    assert found[0]["resumed_history"] == found[0]["history"]
    assert found[0]["params"] == found[1]["params"]

    # The single-process run, up to the order in which the gradients are summed.
    single = run(epochs=3, eval_data=(X_TEST, Y_TEST))
    rtol = tolerance.net_rtol(jnp.float32, NET.sizes, BATCH)
    two = [[jnp.asarray(x) for x in layer] for layer in found[0]["params"]]
    one = [list(layer) for layer in single.params]
    worst = max(rel for _, _, rel in tolerance.tree_errors(two, one))
    assert worst <= rtol, (worst, rtol)
    for a, b in zip(single.history, found[0]["history"], strict=True):
        assert abs(a["loss"] - b["loss"]) <= rtol * abs(a["loss"])
    assert found[0]["history"][-1]["grad_check"]["passed"]


def test_processes_given_different_runs_refuse_together_naming_the_difference():
    found = launch(None, child="child_disagree")
    assert [f["process_index"] for f in found] == [0, 1]
    expected = {
        "key": "run.key differs",
        "X": "data.X differs",
        "params": "caller.params differs",
        "optimizer": "caller.optimizer differs",
    }
    for f in found:  # both processes raise, each with the same first difference
        for what, fragment in expected.items():
            assert f["errors"][what] is not None, what
            assert f"the processes hold different runs: {fragment}" in f["errors"][what]


def test_a_coordinator_port_in_use_is_named_before_joining():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(
            processes.CoordinatorPortInUseError,
            match=f"coordinator 127.0.0.1:{port}: the port cannot be bound .*another program",
        ):
            processes.join(f"127.0.0.1:{port}", PROCESSES, 0)
    processes.check_port_free(f"127.0.0.1:{port}")  # free again once the holder closed it
