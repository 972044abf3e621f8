"""The Fashion-MNIST row's thread settings: one CPU for a process, and the four settings paired.

`one_thread` confines this process to one CPU (XLA's CPU thread pool follows
it) and BLAS and OpenMP to one thread; `thread_settings` runs
`manualbp.tools.fashion_bench` once per setting (one thread or the default,
float32 or float64), each in a process of its own. Import them from
`manualbp.tools.fashion_bench`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys


@contextlib.contextmanager
def one_thread():
    """This process on one CPU (XLA's thread pool follows it), BLAS and OpenMP on one thread.

    Enter it before JAX's backend starts: the pool is sized when the backend is.
    """
    from threadpoolctl import threadpool_limits

    if not hasattr(os, "sched_setaffinity"):
        raise SystemExit("--threads 1: expected os.sched_setaffinity (Linux), got none here")
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        with threadpool_limits(1):
            yield
    finally:  # XLA's pool stays as sized; processes started later get every CPU again
        os.sched_setaffinity(0, cpus)


def thread_settings(rounds: int) -> list[dict]:
    """manual against sklearn, paired, for one thread and the default threads × float32, float64.

    Each setting runs in a process of its own (`main`), since the thread pools
    and x64 are fixed when a process first uses them. Prints a line per setting.
    """
    results = []
    for threads in ("1", "default"):
        for dtype in ("float32", "float64"):
            command = [sys.executable, "-m", "manualbp.tools.fashion_bench", str(rounds),
                       "--dtype", dtype, "--threads", threads, "--trainers", "manual", "sklearn",
                       "--no-peak", "--json"]  # fmt: skip
            output = subprocess.run(command, capture_output=True, text=True)
            if output.returncode:
                last = (output.stderr.strip().splitlines() or ["no message"])[-1]
                raise RuntimeError(f"fashion_bench --threads {threads} --dtype {dtype}: {last}")
            result = {"dtype": dtype, **json.loads(output.stdout.strip().splitlines()[-1])}
            results.append(result)
            if "skipped" not in result:
                wall = result["paired"]["sklearn_over_manual_time"]["median"]
                cpu = result["paired_cpu"]["sklearn_over_manual_time"]["median"]
                manual, sklearn = result["manual"], result["sklearn"]
                print(
                    f"threads {threads}, {dtype}: s/epoch manual {manual['epoch_s']:.3f} wall "
                    f"{manual['cpu_epoch_s']:.3f} CPU, sklearn {sklearn['epoch_s']:.3f} wall "
                    f"{sklearn['cpu_epoch_s']:.3f} CPU; paired sklearn / manual {wall:.2f} wall, "
                    f"{cpu:.2f} CPU; CPU / wall {result['cpu_over_wall']:.2f}",
                    flush=True,
                )
    return results
