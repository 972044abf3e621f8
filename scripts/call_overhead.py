"""What the public call costs over its jitted program: input checks and the Python around them.

Every public numerical function is built by `manualbp._entry.entry_point`,
which keeps the jitted program it calls as ``.program``. This times the public
`hvp` and `manual_value_and_grad` against their programs, called with the same
(already checked) arguments, on the small benchmark nets 784-100-10 and
64-64-64-1, interleaved round by round, and prints the median of the per-round
ratios with its 95% interval (`manualbp.tools.timing`). Target: ≤ 1.05.

    python scripts/call_overhead.py                 # about a minute on 2 CPU cores
    python scripts/call_overhead.py --repeats 60 --calls 50
"""

from __future__ import annotations

import argparse

import jax

import manualbp as mbp
from manualbp import gradients
from manualbp.data import random_batch
from manualbp.extensions import curvature
from manualbp.tools import timing

NETS = (
    ("784-100-10", (784, 100, 10), "tanh", "softmax", "cross_entropy"),
    ("64-64-64-1", (64, 64, 64, 1), "tanh", "identity", "mse"),
)
BATCH = 128


def variants(net, params, X, Y, v) -> dict:
    """name -> (public call, its program), each a function of no arguments."""
    return {
        "hvp": (
            lambda: mbp.extensions.hvp(net, params, X, Y, v),
            lambda: curvature._hvp.program(net, params, X, Y, v),
        ),
        "manual_value_and_grad": (
            lambda: mbp.manual_value_and_grad(net, params, X, Y),
            lambda: gradients._manual_value_and_grad.program(net, params, X, Y, "batched"),
        ),
    }


def repeated(fn, calls: int):
    """``calls`` calls of ``fn`` back to back, waiting for the last result."""

    def run():
        for _ in range(calls - 1):
            fn()
        return fn()

    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds")
    parser.add_argument("--calls", type=int, default=20, help="calls per timed round")
    args = parser.parse_args(argv)
    print("| net | function | public µs | program µs | public / program [95% CI] |")
    print("|---|---|---|---|---|")
    for name, sizes, hidden, output, loss in NETS:
        net = mbp.MLP(sizes, hidden=hidden, output=output, loss=loss)
        params = net.init(jax.random.key(0))
        X, Y = random_batch(net, jax.random.key(1), BATCH)
        v = jax.tree.map(lambda t: 0.5 * t, params)
        for function, (public, program) in variants(net, params, X, Y, v).items():
            fns = {"public": repeated(public, args.calls), "program": repeated(program, args.calls)}
            timing.first_calls(fns)
            times = timing.interleaved(fns, args.repeats)
            ratio = timing.paired_ratio(times["public"], times["program"])
            us = {k: 1e6 * timing.summary(t)["median_s"] / args.calls for k, t in times.items()}
            ci = ratio["ci95"]
            interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
            print(
                f"| {name} | {function} | {us['public']:.0f} | {us['program']:.0f} | "
                f"{ratio['median']:.3f}{interval} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
