"""Benchmark: curvature by hand against its autodiff routes, paired round by round.

Targets (docs/benchmarks.md, "Curvature"):

* `hvp` ≤ 1.0× JAX's forward-over-reverse ``jax.jvp(jax.grad(Ē))``;
* `ggn_vp` ≤ 1.0× its autodiff composition: J v by ``jax.jvp``, H_f (J v) by
  ``jax.jvp`` of ``jax.grad`` of the loss in f, Jᵀ by ``jax.vjp``;
* `diag_ggn` ≤ 1.0× the autodiff route (per example, ``jax.vmap`` of the
  ``jax.vjp`` pullback over the N_L columns of S_f, squared and summed), and
  ≤ (N_L + 1)× one `manual_value_and_grad`.

    python -m manualbp.tools.bench_curvature            # about a minute on 2 CPU cores
    python -m manualbp.tools.bench_curvature --repeats 50 --json curvature.json

Every variant is the jitted pure program (no input checks), called once to
compile and once to warm up, then timed with `timing.interleaved` and compared
with `timing.paired_ratio`: the median of per-round ratios with its 95%
interval.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import jax
import jax.numpy as jnp

import manualbp as mbp
from manualbp import backprop
from manualbp._records import environment
from manualbp.data import random_batch
from manualbp.extensions import curvature as C
from manualbp.extensions.curvature_equations import CURVATURE, logits_are_f
from manualbp.network import as_targets, forward_pass, mean_loss
from manualbp.tools import timing
from manualbp.tools.bench import Config

CONFIGS = (
    Config("digits", (64, 128, 128, 10), "tanh", "softmax", "cross_entropy", 128),
    Config("eos", (64, 100, 100, 10), "tanh", "identity", "mse", 256),
)


def programs(net: mbp.MLP, X, Y) -> dict:
    """The jitted manual and autodiff programs, each ``(params, v) -> result``."""
    B = X.shape[0]
    lf = logits_are_f(net)
    loss_of_f = net.fused_loss.fn if lf else net.loss.fn

    def f_single(q, x):
        fwd = forward_pass(net, q, x)
        return fwd.z[-1] if lf else fwd.a[-1]

    def f_batch(q):
        return jax.vmap(f_single, (None, 0))(q, X)

    def autodiff_hvp(p, v):
        return jax.jvp(jax.grad(lambda q: mean_loss(net, q, X, Y)), (p,), (v,))[1]

    def autodiff_ggn_vp(p, v):
        f, Jv = jax.jvp(f_batch, (p,), (v,))
        grad_f = jax.grad(lambda g: jnp.sum(jax.vmap(loss_of_f)(g, Y)))
        HJv = jax.jvp(grad_f, (f,), (Jv,))[1] / B
        return jax.vjp(f_batch, p)[1](HJv)[0]

    def autodiff_diag_ggn(p, v):
        fwd = mbp.network.forward_pass_batch(net, p, X)
        S_f = jax.vmap(lambda z, a, y: CURVATURE.loss_factor(net, z, a, y))(fwd.z[-1], fwd.a[-1], Y)

        def one(x, S):
            pullback = jax.vjp(lambda q: f_single(q, x), p)[1]
            columns = jax.vmap(lambda s: pullback(s)[0])(S.T)
            return jax.tree.map(lambda g: jnp.sum(g * g, axis=0), columns)

        return jax.tree.map(lambda g: jnp.mean(g, axis=0), jax.vmap(one)(X, S_f))

    return {
        "hvp": jax.jit(lambda p, v: C.hvp_layers(net, p, X, Y, v)),
        "hvp_autodiff": jax.jit(autodiff_hvp),
        "ggn_vp": jax.jit(lambda p, v: C.ggn_vp_layers(net, p, X, Y, v)),
        "ggn_vp_autodiff": jax.jit(autodiff_ggn_vp),
        "diag_ggn": jax.jit(lambda p, v: C.diag_ggn_layers(net, p, X, Y)),
        "diag_ggn_autodiff": jax.jit(autodiff_diag_ggn),
        "value_and_grad": jax.jit(lambda p, v: backprop.fast_backprop(net, p, X, Y)),
    }


PAIRS = {
    "hvp": ("hvp", "hvp_autodiff", 1.0),
    "ggn_vp": ("ggn_vp", "ggn_vp_autodiff", 1.0),
    "diag_ggn": ("diag_ggn", "diag_ggn_autodiff", 1.0),
}


def bench_config(config: Config, repeats: int) -> dict:
    net = config.net()
    params = net.init(jax.random.key(0))
    X, Y = random_batch(net, jax.random.key(1), config.batch)
    Y = as_targets(net, Y, jnp.float32)
    v = jax.tree.map(lambda t: jax.random.normal(jax.random.key(2), t.shape, t.dtype), params)
    fns = {name: (lambda fn=fn: fn(params, v)) for name, fn in programs(net, X, Y).items()}
    first = timing.first_calls(fns)
    times = timing.interleaved(fns, repeats)
    rows = {}
    for name, (manual, autodiff, target) in PAIRS.items():
        ratio = timing.paired_ratio(times[manual], times[autodiff])
        rows[name] = {
            "manual_ms": 1e3 * timing.summary(times[manual])["median_s"],
            "autodiff_ms": 1e3 * timing.summary(times[autodiff])["median_s"],
            "ratio": ratio,
            "target": target,
            "met": ratio["median"] <= target,
        }
    N_L = net.sizes[-1]
    ratio = timing.paired_ratio(times["diag_ggn"], times["value_and_grad"])
    rows["diag_ggn / value_and_grad"] = {
        "manual_ms": 1e3 * timing.summary(times["diag_ggn"])["median_s"],
        "value_and_grad_ms": 1e3 * timing.summary(times["value_and_grad"])["median_s"],
        "ratio": ratio,
        "target": N_L + 1,
        "met": ratio["median"] <= N_L + 1,
    }
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "config": dataclasses.asdict(config),
        "rows": rows,
        "first_call_s": first,
        "times_s": times,
        "load_after": load,
    }


def bench_curvature(repeats: int = 30, configs=CONFIGS) -> dict:
    """Every configuration's paired ratios, times and targets; plus the environment."""
    return {
        "environment": environment(machine=True),
        "repeats": repeats,
        "configs": [bench_config(c, repeats) for c in configs],
    }


def markdown(result: dict) -> str:
    lines = [
        "| config | B | quantity | manual ms | reference ms | ratio [95% CI] | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in result["configs"]:
        c = entry["config"]
        for name, row in entry["rows"].items():
            reference = row.get("autodiff_ms", row.get("value_and_grad_ms"))
            ci = row["ratio"]["ci95"]
            interval = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""
            lines.append(
                f"| {c['name']} {tuple(c['sizes'])} | {c['batch']} | {name} | "
                f"{row['manual_ms']:.3g} | {reference:.3g} | "
                f"{row['ratio']['median']:.2f}{interval} | ≤ {row['target']:g} | "
                f"{'yes' if row['met'] else 'no'} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds per configuration")
    parser.add_argument("--json", default=None, help="write every time to this JSON file")
    args = parser.parse_args(argv)
    result = bench_curvature(args.repeats)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
