"""Data-parallel training on four (simulated) CPU devices equals single-device training.

XLA fixes the number of host devices when JAX starts, so the check runs in a
subprocess started with ``--xla_force_host_platform_device_count=4``; it
prints its findings as JSON, and the assertions are made here.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from manualbp import tolerance

DEVICES = 4


def child_main() -> None:
    """Train the shared case of test_train on one device and on a 4-device mesh."""
    import numpy as np
    from helpers import trees_equal
    from test_train import BATCH, NET, X_TEST, Y_TEST, results_equal, run

    from manualbp.training import data_parallel_mesh

    jax.config.update("jax_numpy_rank_promotion", "raise")
    mesh = data_parallel_mesh()
    options = dict(epochs=3, eval_data=(X_TEST, Y_TEST), check_every=3)
    single = run(**options)
    sharded = run(mesh=mesh, **options)
    errors = tolerance.tree_errors(sharded.params, single.params)

    with tempfile.TemporaryDirectory() as directory:
        run(mesh=mesh, checkpoint_dir=directory, **dict(options, epochs=2))
        resumed = run(mesh=mesh, checkpoint_dir=directory, **options)

    from test_train import PARAMS, X, Y

    import manualbp as mbp

    with jax.disable_jit():
        report = mbp.verify(NET, PARAMS, X[:BATCH], Y[:BATCH], devices="all")
    first_device = report.meta["devices"][0]
    cross_device = [r for r in report.rows if r.check.endswith(f" vs {first_device}")]

    # Arrays committed to different devices are all brought to the default one.
    scattered = run(
        params=jax.device_put(PARAMS, jax.devices()[1]),
        X=jax.device_put(X, jax.devices()[2]),
        key=jax.device_put(jax.random.key(1), jax.devices()[3]),
        **options,
    )

    try:
        run(mesh=mesh, batch_size=BATCH + 2, epochs=1)
        indivisible = None
    except ValueError as e:
        indivisible = str(e)

    print(
        json.dumps(
            {
                "devices": jax.device_count(),
                "max_rel_error": max(rel for _, _, rel in errors),
                "rtol": tolerance.net_rtol(jnp.float32, NET.sizes, BATCH),
                "bitwise_equal": trees_equal(single.params, sharded.params),
                "losses": [[h["loss"] for h in r.history] for r in (single, sharded)],
                "grad_check": sharded.history[-1]["grad_check"],
                "replicated_on": sorted(
                    {len(leaf.sharding.device_set) for leaf in jax.tree.leaves(sharded.params)}
                ),
                "fully_replicated": all(
                    leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(sharded.params)
                ),
                "batch_sharding_in_program": _batch_sharding_in_program(mesh),
                "batch_sharding_without_constraint": _batch_sharding_in_program(mesh, False),
                "resume_bit_identical": results_equal(resumed, sharded),
                "scattered_inputs_equal": results_equal(scattered, single),
                "scattered_on": sorted(
                    {
                        f"{d.platform}:{d.id}"
                        for leaf in jax.tree.leaves(scattered.params)
                        for d in leaf.devices()
                    }
                ),
                "indivisible_batch_error": indivisible,
                "verify_passed": report.passed,
                "verify_devices": len(report.meta["devices"]),
                "verify_cross_device_rows": len(cross_device),
                "parameter_layers": len(NET.sizes) - 1,
                "verify_row_devices": len({r.device for r in report.rows}),
                "accuracy_equal": bool(
                    np.isclose(
                        single.history[-1]["test_accuracy"], sharded.history[-1]["test_accuracy"]
                    )
                ),
            }
        )
    )


def _batch_sharding_in_program(mesh, shard_batches=True) -> bool:
    """Whether the compiled epoch runs each step on B / 4 rows per device."""
    from test_train import BATCH, NET, OPTIMIZER, PARAMS, X, Y

    from manualbp.network import as_targets
    from manualbp.training.placement import place as _place
    from manualbp.training.programs import epoch as _epoch

    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names, None))
    params = _place(jax.tree.map(jnp.asarray, PARAMS), replicated)
    hlo = (
        _epoch.lower(
            params,
            OPTIMIZER.init(params),
            jax.device_put(jax.random.key(1), replicated),
            _place(X, replicated),
            _place(as_targets(NET, jnp.asarray(Y), jnp.float32), replicated),
            net=NET,
            optimizer=OPTIMIZER,
            grad="manual",
            batch_size=BATCH,
            compute_dtype=jnp.dtype(jnp.float32),
            batch_sharding=batch if shard_batches else None,
            shuffle=True,
        )
        .compile()
        .as_text()
    )
    per_device_rows = BATCH // DEVICES
    return f"f32[{per_device_rows},{NET.sizes[-1]}]" in hlo  # a shard of the targets Y_b


@pytest.mark.slow  # a second JAX process with four devices: half a minute on two cores
def test_data_parallel_equals_single_device():
    tests = Path(__file__).parent
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([str(tests.parent), str(tests)]),
    )
    done = subprocess.run(
        [sys.executable, "-c", "import test_multidevice; test_multidevice.child_main()"],
        cwd=tests,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["devices"] == DEVICES
    assert found["max_rel_error"] <= found["rtol"], found
    # The sharded sums run in another order, so the two differ in the last bits; a measured
    # error of 0 with unequal bits would mean the comparison above measured nothing.
    assert found["bitwise_equal"] == (found["max_rel_error"] == 0), found
    single, sharded = found["losses"]
    assert all(abs(s - m) <= found["rtol"] * abs(s) for s, m in zip(single, sharded, strict=True))
    assert found["grad_check"]["passed"]
    assert found["replicated_on"] == [DEVICES] and found["fully_replicated"]
    assert found["batch_sharding_in_program"]
    assert not found["batch_sharding_without_constraint"]  # the program check can fail
    assert found["resume_bit_identical"]
    assert found["scattered_inputs_equal"] and found["scattered_on"] == ["cpu:0"]
    assert "multiple of the mesh's 4 devices" in found["indivisible_batch_error"]
    assert found["accuracy_equal"]
    # verify(devices="all") checks on every device and compares them with the first.
    assert found["verify_passed"] and found["verify_devices"] == DEVICES
    assert found["verify_row_devices"] == DEVICES
    assert found["verify_cross_device_rows"] == 2 * (DEVICES - 1) * found["parameter_layers"]
