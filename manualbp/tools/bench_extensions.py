"""Benchmark of the per-example extensions: their cost next to one batch gradient.

Answers: does each quantity of equations (5)–(9) cost about what the batch
gradient costs (targets: `batch_l2` and `clipped_value_and_grad` ≤ 1.3×
`manual_value_and_grad` on every configuration of `bench.CONFIGS`,
`sum_grad_squared` and `variance` ≤ 2×), how does the clipped gradient compare
with the `vmap(jax.grad)`-then-clip route JAX users write today (target
≤ 0.1× on the medium net), and does a DP-SGD epoch stay within 1.5× a plain
manual epoch.

    python -c "from manualbp.tools.bench_extensions import main; main()"

Method as in `bench`: compile, warm up, then the variants interleaved round by
round (`timing.interleaved`), and ratios taken per round (`timing.paired_ratio`),
quoted as the median with a distribution-free 95% interval.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import optax

import manualbp as mbp
from manualbp._records import environment
from manualbp.data import random_batch
from manualbp.tools import timing
from manualbp.tools.bench import CONFIGS, CONFIGS_BY_NAME, TRAINING_EPOCHS, _ratio
from manualbp.verification.extensions import clip_materialized, example_grads

L2_CLIP = 1.0
QUANTITIES = ("batch_l2", "clipped", "sum_grad_squared", "variance")
TARGETS = {"batch_l2": 1.3, "clipped": 1.3, "sum_grad_squared": 2.0, "variance": 2.0}
VMAP_TARGET = 0.1
DP_EPOCH_TARGET = 1.5
DP_TRAINING = (("nielsen", 100, 10_000), ("medium", 512, 10_240))
"""(configuration, batch size, training examples) for the DP-SGD epoch rows."""


@functools.partial(jax.jit, static_argnums=0)
def vmap_grad_then_clip(net, params, X, Y, l2_clip):
    """The route JAX users write today: every g_b by vmap(grad), then clip and average."""
    Y = mbp.network.as_targets(net, Y, X.dtype)
    return clip_materialized(example_grads(net, params, X, Y), l2_clip)


@functools.partial(jax.jit, static_argnums=0)
def vmap_grad_then_norms(net, params, X, Y):
    """Per-example squared norms from materialized g_b, for comparison with `batch_l2`."""
    Y = mbp.network.as_targets(net, Y, X.dtype)
    G = example_grads(net, params, X, Y)
    return [jnp.sum(g * g, axis=tuple(range(1, g.ndim))) for g in jax.tree.leaves(G)]


def _case(config):
    net = config.net()
    params = net.init(jax.random.key(0))
    X, Y = random_batch(net, jax.random.key(1), config.batch)
    return net, params, X, Y


def _quantity_fns(net, params, X, Y) -> dict:
    ext = mbp.extensions
    return {
        "manual": lambda: mbp.manual_value_and_grad(net, params, X, Y),
        "batch_l2": lambda: ext.batch_l2(net, params, X, Y),
        "clipped": lambda: ext.clipped_value_and_grad(net, params, X, Y, l2_clip=L2_CLIP),
        "sum_grad_squared": lambda: ext.sum_grad_squared(net, params, X, Y),
        "variance": lambda: ext.variance(net, params, X, Y),
    }


def bench_quantities(config, repeats: int) -> dict:
    """Each quantity against `manual_value_and_grad`, in the same interleaved rounds."""
    fns = _quantity_fns(*_case(config))
    first = timing.first_calls(fns)
    times = timing.interleaved(fns, repeats)
    row = {"config": config.name, "batch": config.batch, "loadavg": os.getloadavg()}
    for name in fns:
        row[name] = timing.summary(times[name], first[name])
    for name in QUANTITIES:
        paired = timing.paired_ratio(times[name], times["manual"])
        row[f"{name}_over_manual"] = {**paired, "target": TARGETS[name]}
    return row


def bench_against_vmap(config, repeats: int) -> dict:
    """`clipped_value_and_grad` and `batch_l2` against the vmap(jax.grad) routes."""
    net, params, X, Y = _case(config)
    clip = jnp.asarray(L2_CLIP, jnp.float32)
    fns = {
        "clipped": lambda: mbp.extensions.clipped_value_and_grad(
            net, params, X, Y, l2_clip=L2_CLIP
        ),
        "vmap_clip": lambda: vmap_grad_then_clip(net, params, X, Y, clip),
        "batch_l2": lambda: mbp.extensions.batch_l2(net, params, X, Y),
        "vmap_norms": lambda: vmap_grad_then_norms(net, params, X, Y),
    }
    first = timing.first_calls(fns)
    times = timing.interleaved(fns, repeats)
    row = {"config": config.name, "batch": config.batch, "loadavg": os.getloadavg()}
    for name in fns:
        row[name] = timing.summary(times[name], first[name])
    row["clipped_over_vmap"] = {
        **timing.paired_ratio(times["clipped"], times["vmap_clip"]),
        "target": VMAP_TARGET,
    }
    row["batch_l2_over_vmap"] = {
        **timing.paired_ratio(times["batch_l2"], times["vmap_norms"]),
        "target": VMAP_TARGET,
    }
    return row


def bench_dp_epoch(config, batch_size: int, n: int, repeats: int) -> dict:
    """`train` with and without `privacy`, TRAINING_EPOCHS epochs per call, same rounds.

    The private epoch draws Poisson samples of expected size ``batch_size`` and runs
    them in chunks of the default physical size P (`DPSGD.physical_size`); the plain
    one takes fixed batches of ``batch_size`` from a shuffle. Both run ⌊n / B⌋ steps.
    """
    net = config.net()
    params = net.init(jax.random.key(0))
    X, Y = random_batch(net, jax.random.key(1), n)
    optimizer = optax.sgd(0.01)
    privacy = mbp.DPSGD(l2_clip=L2_CLIP, noise_multiplier=1.0)

    def train(privacy):
        return mbp.train(
            net,
            params,
            optimizer,
            X,
            Y,
            epochs=TRAINING_EPOCHS,
            batch_size=batch_size,
            key=jax.random.key(2),
            progress=False,
            privacy=privacy,
        ).params

    fns = {"manual": lambda: train(None), "dp_sgd": lambda: train(privacy)}
    first = timing.first_calls(fns)
    times = timing.interleaved(fns, repeats)
    row = {"config": config.name, "batch": batch_size, "n": n, "epochs": TRAINING_EPOCHS}
    row["physical_size"] = mbp.privacy.physical_size(privacy, batch_size)
    for name in fns:
        summary = timing.summary(times[name], first[name])
        summary["epoch_s"] = summary["median_s"] / TRAINING_EPOCHS
        row[name] = summary
    row["dp_over_manual"] = {
        **timing.paired_ratio(times["dp_sgd"], times["manual"]),
        "target": DP_EPOCH_TARGET,
    }
    row["loadavg"] = os.getloadavg()
    return row


def bench_per_example(repeats: int) -> dict:
    """Every row: the quantities on each of `bench.CONFIGS`, vmap on medium, DP-SGD epochs."""
    report = {"environment": environment(machine=True), "repeats": repeats}
    report["quantities"] = [bench_quantities(config, repeats) for config in CONFIGS]
    report["vmap"] = bench_against_vmap(CONFIGS_BY_NAME["medium"], max(5, repeats // 2))
    report["dp_epoch"] = [
        bench_dp_epoch(CONFIGS_BY_NAME[name], batch, n, repeats) for name, batch, n in DP_TRAINING
    ]
    return report


def markdown(report: dict) -> str:
    """The report as markdown tables (median paired ratio [95% interval])."""
    lines = [
        "| config | B | manual ms | " + " | ".join(f"{q} / manual" for q in QUANTITIES) + " |",
        "|---|---|---|" + "---|" * len(QUANTITIES),
    ]
    for row in report["quantities"]:
        ratios = " | ".join(_verdict(row[f"{q}_over_manual"]) for q in QUANTITIES)
        lines.append(
            f"| {row['config']} | {row['batch']} | {row['manual']['median_s'] * 1e3:.3g} "
            f"| {ratios} |"
        )
    v = report["vmap"]
    lines += [
        "",
        "| medium, B = 512 | manual ms | vmap(jax.grad) route ms | manual / vmap |",
        "|---|---|---|---|",
        f"| clipped gradient | {v['clipped']['median_s'] * 1e3:.3g} "
        f"| {v['vmap_clip']['median_s'] * 1e3:.3g} | {_verdict(v['clipped_over_vmap'])} |",
        f"| per-example norms | {v['batch_l2']['median_s'] * 1e3:.3g} "
        f"| {v['vmap_norms']['median_s'] * 1e3:.3g} | {_verdict(v['batch_l2_over_vmap'])} |",
        "",
        "| training | B (B̄) | n | P | plain epoch s | DP-SGD epoch s, Poisson | DP-SGD / plain |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["dp_epoch"]:
        lines.append(
            f"| {row['config']} | {row['batch']} | {row['n']} | {row['physical_size']} "
            f"| {row['manual']['epoch_s']:.3g} "
            f"| {row['dp_sgd']['epoch_s']:.3g} | {_verdict(row['dp_over_manual'])} |"
        )
    return "\n".join(lines) + "\n"


def _verdict(paired: dict) -> str:
    met = "met" if paired["median"] <= paired["target"] else "**not met**"
    return f"{_ratio(paired, digits=2)} ({met}, ≤ {paired['target']})"


def main(repeats: int = 10) -> dict:
    """Run every row, print the tables, return the report."""
    report = bench_per_example(repeats)
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
