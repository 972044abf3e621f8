"""Data-parallel training on Fashion-MNIST across processes with `jax.distributed`.

Every process runs this same program: it joins the job through the coordinator,
loads the same data, builds the mesh over every device of every process, and
calls `mbp.train` with it; XLA sums the gradients across processes (gloo, JAX's
CPU collectives). Only process 0 writes the checkpoint and prints.

Launch a job of N processes on this machine (loopback only, CPU, D devices each),
then the single-process run from the same start, and compare them:

    python scripts/multiprocess_train.py --launch 2 --devices 2 --epochs 3

Or start each process by hand (one command per process, same coordinator):

    XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu \\
        python scripts/multiprocess_train.py --process-id 0 --processes 2 \\
        --coordinator 127.0.0.1:12345 --out runs/multiprocess/job
    (the same with --process-id 1, in another shell)

Needs the Fashion-MNIST files (apt-get install dataset-fashion-mnist).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def worker(args) -> None:
    """One process: join the job (if several), train over the global mesh, save the result."""
    import jax

    if args.processes > 1:
        from manualbp.training import processes

        try:
            processes.join(args.coordinator, args.processes, args.process_id)
        except processes.CoordinatorPortInUseError as e:
            print(f"process {args.process_id}: {e}", file=sys.stderr)
            sys.exit(2)
    import numpy as np
    import optax

    import manualbp as mbp
    from manualbp import data
    from manualbp.training.checkpoint import to_host

    (X, Y), test = data.fashion_mnist()
    net = mbp.MLP((784, 100, 10), hidden="relu", output="softmax", loss="cross_entropy")
    params = net.init(jax.random.key(0), scheme="glorot")
    mesh = mbp.data_parallel_mesh(jax.devices()) if args.processes > 1 else None
    seconds = []
    stamp = [time.perf_counter()]

    def timed(record):
        seconds.append(time.perf_counter() - stamp[0])
        stamp[0] = time.perf_counter()

    result = mbp.train(
        net,
        params,
        optax.adam(1e-3),
        X,
        Y,
        epochs=args.epochs,
        batch_size=200,
        key=jax.random.key(1),
        eval_data=test,
        mesh=mesh,
        checkpoint_dir=pathlib.Path(args.out) / "checkpoint",
        progress=jax.process_index() == 0,
        callback=timed,
    )
    if jax.process_index() == 0:
        arrays = {
            f"{k}/{name}": to_host(x)
            for k, layer in enumerate(result.params)
            for name, x in layer._asdict().items()
        }
        np.savez(pathlib.Path(args.out) / "params.npz", **arrays)
        summary = {
            "processes": jax.process_count(),
            "devices": [str(d) for d in jax.devices()],
            "epoch_s": seconds,
            "history": result.history,
        }
        (pathlib.Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=2))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_all(children, timeout: float) -> list[int | None]:
    """Every child's exit status; once one fails, the others are stopped rather than left to
    wait for it until the coordinator's timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        codes = [child.poll() for child in children]
        if all(code is not None for code in codes) or any(codes):
            return codes
        time.sleep(0.2)
    return [child.poll() for child in children]


def launch(args) -> int:
    """Run the N-process job, then the single-process one, and compare their parameters.

    The tolerance rule bounds one gradient's rounding; after hundreds of Adam steps
    the two runs' rounding differences have compounded, so the rule is reported
    beside the measured difference, not asserted (tests/test_multiprocess.py
    asserts it over a few steps).
    """
    import numpy as np

    from manualbp import tolerance

    out = pathlib.Path(args.out)
    jobs = {"job": (args.launch, args.devices), "single": (1, 1)}
    for name, (processes, devices) in jobs.items():
        shutil.rmtree(out / name, ignore_errors=True)  # a fresh run, not a resumed one
        (out / name).mkdir(parents=True)
        env = dict(
            os.environ,
            XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
            JAX_PLATFORMS="cpu",
        )
        coordinator = f"127.0.0.1:{free_port()}"
        children = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--process-id",
                    str(i),
                    "--processes",
                    str(processes),
                    "--coordinator",
                    coordinator,
                    "--epochs",
                    str(args.epochs),
                    "--out",
                    str(out / name),
                ],
                env=env,
            )
            for i in range(processes)
        ]
        try:
            codes = wait_all(children, args.timeout)
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
        if any(code != 0 for code in codes):
            print(f"{name}: a process exited with {codes}", file=sys.stderr)
            return 1
    found = {name: json.loads((out / name / "summary.json").read_text()) for name in jobs}
    params = {name: dict(np.load(out / name / "params.npz")) for name in jobs}
    errors = tolerance.tree_errors(params["job"], params["single"])
    rtol = tolerance.net_rtol(np.float32, (784, 100, 10), 200)
    report = {
        name: {
            "processes": found[name]["processes"],
            "devices": len(found[name]["devices"]),
            "median_epoch_s": float(
                np.median(found[name]["epoch_s"][1:] or found[name]["epoch_s"])
            ),
            "test_accuracy": found[name]["history"][-1]["test_accuracy"],
        }
        for name in jobs
    }
    report["max_rel_error"] = max(rel for _, _, rel in errors)
    report["one_gradient_rtol"] = rtol
    report["checkpoint_files"] = sorted(p.name for p in (out / "job" / "checkpoint").iterdir())
    print(json.dumps(report, indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launch", type=int, help="start a job of this many processes here")
    parser.add_argument("--devices", type=int, default=2, help="CPU devices per process")
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--coordinator", default="127.0.0.1:12345")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default="runs/multiprocess")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before a kill")
    args = parser.parse_args()
    if args.launch:
        return launch(args)
    worker(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
