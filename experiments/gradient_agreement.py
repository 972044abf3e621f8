"""How far apart are manual and autodiff gradients, in units of eps, as nets get deeper and wider?

For every depth × width × hidden activation × dtype, draw random nets and
batches, compute the gradients by equations (1)-(4) and by jax.grad, and
measure the largest per-array error max|g − g_ref| / max|g_ref| (the measure
of manualbp.tolerance) divided by the dtype's machine epsilon. The plot shows
how it grows with depth, one line per width, beside the tolerance bound
C · (L − 1) · √n that manualbp.tolerance allows.

    python experiments/gradient_agreement.py       # writes runs/gradient_agreement/<timestamp>/
    python experiments/gradient_agreement.py --depths 2 4 8 16 --widths 32 512
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp

import manualbp as mbp
from manualbp import data, tolerance
from manualbp.tools import experiment
from manualbp.tools.console import Progress


@dataclasses.dataclass(frozen=True)
class Config(experiment.RunConfig):
    depths: tuple[int, ...] = (2, 4, 8)  # parameter layers L − 1
    widths: tuple[int, ...] = (16, 64, 256)  # every layer's width N_l
    activations: tuple[str, ...] = ("tanh", "sigmoid", "relu")  # hidden σ
    dtypes: tuple[str, ...] = ("float32", "float64")  # parameter and compute dtypes
    batch_size: int = 32  # examples per batch
    draws: int = 3  # random nets and batches per setting; the largest error is kept


def measure(net: mbp.MLP, key: jax.Array, dtype, batch_size: int, draws: int) -> float:
    """The largest relative error between manual and autodiff gradients over ``draws`` draws."""
    worst = 0.0
    for key_draw in jax.random.split(key, draws):
        key_init, key_batch = jax.random.split(key_draw)
        params = net.init(key_init, dtype)
        X, Y = data.random_batch(net, key_batch, batch_size, dtype)
        _, manual = mbp.manual_value_and_grad(net, params, X, Y)
        _, autodiff = mbp.autodiff_value_and_grad(net, params, X, Y)
        worst = max(worst, *(rel for _, _, rel in tolerance.tree_errors(manual, autodiff)))
    return worst


def main(config: Config) -> dict:
    run = experiment.start_run("gradient_agreement", config)
    key = jax.random.key(config.seed)
    rows = []
    settings = list(
        itertools.product(config.dtypes, config.depths, config.widths, config.activations)
    )
    progress = Progress(len(settings), "gradient_agreement")
    for dtype_name, depth, width, activation in settings:
        with jax.enable_x64(dtype_name == "float64"):
            dtype = jnp.dtype(dtype_name)
            net = mbp.MLP((width,) * (depth + 1), hidden=activation, output="identity")
            error = measure(net, key, dtype, config.batch_size, config.draws)
            eps = tolerance.eps(dtype)
            bound = tolerance.net_rtol(dtype, net.sizes, config.batch_size) / eps
        row = {
            "dtype": dtype_name,
            "depth": depth,
            "width": width,
            "activation": activation,
            "error_eps": error / eps,
            "bound_eps": bound,
            "within": error / eps <= bound,
        }
        run.log(**row)
        rows.append(row)
        progress.step(
            f"{dtype_name} depth {depth} width {width} {activation}: {row['error_eps']:.3g} eps"
        )
    progress.close()

    # One panel per dtype: the error (worst activation) against depth, one line per width.
    panels = {}
    for dtype_name in config.dtypes:
        series = {}
        for width in config.widths:
            series[f"width {width}"] = [
                max(
                    r["error_eps"]
                    for r in rows
                    if (r["dtype"], r["depth"], r["width"]) == (dtype_name, depth, width)
                )
                for depth in config.depths
            ]
        series[f"bound, width {max(config.widths)}"] = [
            tolerance.C * depth * max(max(config.widths), config.batch_size) ** 0.5
            for depth in config.depths
        ]
        panels[f"{dtype_name}: max rel. error / eps"] = series
    run.plot(
        "agreement.png",
        panels,
        x=config.depths,
        xlabel="depth L − 1",
        logy=list(panels),
        title="manual vs autodiff gradients (worst activation per point)",
    )
    summary = {
        "all_within_bound": all(r["within"] for r in rows),
        "max_error_eps": {
            d: max(r["error_eps"] for r in rows if r["dtype"] == d) for d in config.dtypes
        },
        "rows": rows,
    }
    run.write_json("summary.json", summary)
    experiment.print_table(rows)
    print(f"every error within manualbp.tolerance's bound: {summary['all_within_bound']}")
    print(f"run folder: {run.path}")
    return experiment.to_json(summary)


if __name__ == "__main__":
    raise SystemExit(experiment.run_main(main, Config, __doc__))
