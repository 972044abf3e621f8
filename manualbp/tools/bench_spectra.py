"""Benchmark: Lanczos on the hand-derived hvp against the same Lanczos on autodiff's.

Rows:

* top-1 eigenvalue of ∇²Ē to relative residual ‖Hv − λv‖/|λ| ≤ 1e-4 on a
  784-100-10 net with 1,000 examples: `eigenpairs`' pipeline (the jitted
  Lanczos program, the float64 tridiagonal problem, the residual product) on
  `hvp_layers`, against the identical pipeline on ``jax.jvp(jax.grad(Ē))``;
  target ≤ 1.1×, paired round by round;
* the split of k = 20 Lanczos steps on the large net into the 20 products and
  the O(k² n) full reorthogonalization: the program with and without
  reorthogonalization, and 20 products alone.

    python -m manualbp.tools.bench_spectra                 # a few minutes on 2 CPU cores
    python -m manualbp.tools.bench_spectra --repeats 20 --json spectra.json

The Krylov dimension m of the first row is the least of 10, 20, 40, ... for
which the hand-derived pipeline meets the residual; both pipelines then run
with that m from the same start vector.
"""

from __future__ import annotations

import argparse
import functools
import json

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

import manualbp as mbp
from manualbp._records import environment
from manualbp.data import random_batch
from manualbp.extensions import _krylov
from manualbp.extensions import curvature as C
from manualbp.extensions._spectral_programs import (
    Problem,
    SpectralMethods,
    data_operator,
    lanczos_program,
    residual_program,
)
from manualbp.network import as_targets, mean_loss
from manualbp.tools import timing

TARGET = 1.1
RELATIVE_RESIDUAL = 1e-4


def autodiff_hvp(net, params, X, Y, v):
    """∇²Ē v by forward-over-reverse autodiff: the reference product."""
    return jax.jvp(jax.grad(lambda q: mean_loss(net, q, X, Y)), (params,), (v,))[1]


def top_eigenpair(problem: Problem, params, X, Y, steps: int):
    """`eigenpairs`' pipeline for k = 1 without its input checks: (λ, ‖Hv − λv‖/|λ|)."""
    V, alpha, beta = lanczos_program(problem, params, X, Y, None, jax.random.key(0), steps)
    theta, S = _krylov.tridiagonal_eigh(alpha, beta)
    top = _krylov.select(theta, 1, "largest")
    y = jnp.asarray(_krylov.ritz_vectors(V, S[:, top]), V.dtype)
    residual = residual_program(problem, params, X, Y, None, y, jnp.asarray(theta[top]))
    return float(theta[top][0]), float(residual[0]) / abs(float(theta[top][0]))


def case(sizes, hidden, output, loss, batch):
    net = mbp.MLP(sizes, hidden=hidden, output=output, loss=loss)
    params = net.init(jax.random.key(0))
    X, Y = random_batch(net, jax.random.key(1), batch)
    return net, params, X, as_targets(net, Y, jnp.float32)


def bench_top1(repeats: int) -> dict:
    net, params, X, Y = case((784, 100, 10), "tanh", "softmax", "cross_entropy", 1000)
    manual = Problem(net, C.hvp_layers)
    reference = Problem(net, autodiff_hvp)
    steps = 10
    while True:
        value, relative = top_eigenpair(manual, params, X, Y, steps)
        if relative <= RELATIVE_RESIDUAL or steps >= 320:
            break
        steps *= 2
    fns = {
        "manual": lambda: top_eigenpair(manual, params, X, Y, steps),
        "autodiff": lambda: top_eigenpair(reference, params, X, Y, steps),
    }
    first = timing.first_calls(fns)
    times = timing.interleaved(fns, repeats)
    ratio = timing.paired_ratio(times["manual"], times["autodiff"])
    return {
        "net": "784-100-10 tanh, softmax + cross-entropy, 1,000 examples",
        "steps": steps,
        "eigenvalue": value,
        "relative_residual": {name: fn()[1] for name, fn in fns.items()},
        "manual_s": timing.summary(times["manual"]),
        "autodiff_s": timing.summary(times["autodiff"]),
        "first_call_s": first,
        "ratio": ratio,
        "target": TARGET,
        "met": ratio["median"] <= TARGET,
    }


@functools.partial(jax.jit, static_argnums=(0, 4))
def products_alone(problem, params, X, Y, steps):
    """``steps`` products in a loop, each on the last one's normalized output."""
    flat, _ = ravel_pytree(params)
    matvec = data_operator(problem, params, X, Y)

    def step(_, q):
        w = matvec(q)
        return w / jnp.linalg.norm(w)

    return jax.lax.fori_loop(0, steps, step, flat / jnp.linalg.norm(flat))


def bench_split(repeats: int, batch: int, k: int = 20) -> dict:
    sizes, hidden, output, loss = (1024, 2048, 2048, 1024), "gelu", "identity", "mse"
    net, params, X, Y = case(sizes, hidden, output, loss, batch)
    plain = SpectralMethods(lanczos=functools.partial(_krylov.lanczos, reorthogonalize=False))
    with_reorth, without = Problem(net, C.hvp_layers), Problem(net, C.hvp_layers, None, plain)
    key = jax.random.key(0)
    fns = {
        "lanczos": lambda: lanczos_program(with_reorth, params, X, Y, None, key, k),
        "lanczos_no_reorth": lambda: lanczos_program(without, params, X, Y, None, key, k),
        "products": lambda: products_alone(with_reorth, params, X, Y, k),
    }
    timing.first_calls(fns)
    times = timing.interleaved(fns, repeats)
    median = {name: timing.summary(t)["median_s"] for name, t in times.items()}
    n = int(sum(x.size for layer in params for x in layer))
    return {
        "net": f"{'-'.join(map(str, sizes))} {hidden}, {output} + {loss}, B = {batch}",
        "parameters": n,
        "k": k,
        "median_s": median,
        "reorthogonalization_s": median["lanczos"] - median["lanczos_no_reorth"],
        "reorthogonalization_share": 1 - median["lanczos_no_reorth"] / median["lanczos"],
        "times_s": times,
    }


def markdown(result: dict) -> str:
    lines = []
    if "top1" in result:
        top = result["top1"]
        ci = top["ratio"]["ci95"]
        interval = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
        lines += [
            "| row | manual | autodiff | ratio [95% CI] | target | met |",
            "|---|---|---|---|---|---|",
            f"| top-1 λ = {top['eigenvalue']:.4g} to ‖Hv − λv‖/|λ| ≤ {RELATIVE_RESIDUAL:g}, "
            f"m = {top['steps']}, {top['net']} | {1e3 * top['manual_s']['median_s']:.0f} ms | "
            f"{1e3 * top['autodiff_s']['median_s']:.0f} ms | "
            f"{top['ratio']['median']:.2f}{interval} | ≤ {TARGET:g} | "
            f"{'yes' if top['met'] else 'no'} |",
            "",
        ]
    if "split" not in result:
        return "\n".join(lines)
    split = result["split"]
    lines += [
        f"Split of k = {split['k']} Lanczos steps, {split['net']}, n = {split['parameters']:,}:",
        "",
        "| part | median s |",
        "|---|---|",
        f"| Lanczos with full reorthogonalization | {split['median_s']['lanczos']:.3g} |",
        f"| Lanczos without | {split['median_s']['lanczos_no_reorth']:.3g} |",
        f"| {split['k']} products alone | {split['median_s']['products']:.3g} |",
        f"| reorthogonalization (difference) | {split['reorthogonalization_s']:.3g} "
        f"({100 * split['reorthogonalization_share']:.0f}%) |",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds per row")
    parser.add_argument("--large-batch", type=int, default=256, help="B for the split's net")
    parser.add_argument("--json", default=None, help="write every time to this JSON file")
    parser.add_argument("--only", choices=("top1", "split"), default=None, help="one row only")
    args = parser.parse_args(argv)
    result = {"environment": environment(machine=True)}
    if args.only != "split":
        result["top1"] = bench_top1(args.repeats)
    if args.only != "top1":
        result["split"] = bench_split(max(3, args.repeats // 3), args.large_batch)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
