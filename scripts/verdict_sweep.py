"""How often verify's verdict is wrong: false alarms on correct nets, misses on wrong ones.

    PYTHONPATH=. python scripts/verdict_sweep.py            # the whole sweep (minutes)
    PYTHONPATH=. python scripts/verdict_sweep.py --quick    # a fraction of it

Progress goes to standard error: for the correct nets a bar on a terminal, a line per net
otherwise; for the wrong derivations a line per group.

False alarms: `mbp.verify` on correct derivations over
* the catalogue (every hidden activation × every output/loss pair) in float32
  and float64 at input scales 1e-3, 1, 30 and 1e3;
* widths 1 to 1024, depths to 10, B from 1 to 4096, every init scheme,
  bfloat16 and float16 nets.
A false alarm is a report with a failing row that was judged (a row that
cannot be judged, such as a forward pass that overflows in float16, is
counted apart as inconclusive). The sweep also prints the largest
e / max(e_w, floor) seen, the quantity K is calibrated on.

Catches: wrong derivations that must fail at their own equation and layer
and nowhere else among the equation rows:
* float32, B = 4096, 10 layers: a relative error of 1e-4 in each equation at
  each layer; one entry of ∂E/∂W^3 off by 1e-4; example 0 dropped from the
  sums of (2) and (3);
* float64: a relative error of 1e-8 in each equation at each layer;
* bfloat16: each equation doubled, and σ' missing in (1), at each layer.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import verdict_classes

import manualbp as mbp
from manualbp import backprop, tolerance
from manualbp.activations import HIDDEN_ACTIVATIONS
from manualbp.data import random_batch
from manualbp.losses import OUTPUT_LOSS_PAIRS
from manualbp.network import INIT_SCHEMES, Layer, forward_pass_batch
from manualbp.tools.console import Progress


def case(net, dtype, batch, scale=1.0, scheme="nielsen_scaled", seed=0):
    key_params, key_data = jax.random.split(jax.random.key(seed))
    params = net.init(key_params, dtype, scheme)
    X, Y = random_batch(net, key_data, batch, dtype)
    return params, (X.astype(jnp.float32) * scale).astype(dtype), Y


def judge_correct(net, dtype, batch, **kwargs):
    """(false alarm?, inconclusive?, worst K · e / allowance) of one correct net."""
    with jax.enable_x64(dtype == jnp.float64):
        report = mbp.verify(net, *case(net, dtype, batch, **kwargs))
    worst = max(
        (tolerance.K * r.rel_err / r.tol for r in report.rows if r.passed and r.tol), default=0
    )
    false_alarm = not report.passed and not report.inconclusive
    if false_alarm:
        print(f"  FALSE ALARM {net} {jnp.dtype(dtype).name} B={batch} {kwargs}: {report.verdict()}")
    return false_alarm, report.inconclusive, worst


def false_alarms(quick: bool):
    scales = (1e-3, 1.0, 30.0, 1e3)
    hidden = HIDDEN_ACTIVATIONS[::3] if quick else HIDDEN_ACTIVATIONS
    configs = [
        (mbp.MLP((5, 7, 6, 3), h, o, loss), dtype, 8, dict(scale=s))
        for h, (o, loss), dtype, s in itertools.product(
            hidden, OUTPUT_LOSS_PAIRS, (jnp.float32, jnp.float64), scales
        )
    ]
    shapes = [((1, 1, 1), 1), ((3, 1, 1, 2), 64), ((1024, 8, 3), 16), ((16, 1024, 4), 8)]
    shapes += [((8,) * 10 + (3,), 32), ((4, 16, 3), 4096), ((64,) * 4 + (10,), 256)]
    for sizes, batch in shapes[: 3 if quick else None]:
        # Softmax over one unit is refused (it is always 1): one output is a sigmoid's.
        classifier = (
            ("softmax", "cross_entropy") if sizes[-1] > 1 else ("sigmoid", "binary_cross_entropy")
        )
        for h, (o, loss) in [("tanh", classifier), ("relu", ("identity", "mse"))]:
            for dtype, scale in itertools.product((jnp.float32, jnp.float64), (1.0, 30.0)):
                configs.append((mbp.MLP(sizes, h, o, loss), dtype, batch, dict(scale=scale)))
    for scheme in INIT_SCHEMES:
        for h in ("tanh", "relu", "sigmoid"):
            configs.append(
                (
                    mbp.MLP((6, 16, 16, 4), h, "softmax", "cross_entropy"),
                    jnp.float32,
                    32,
                    dict(scheme=scheme),
                )
            )
    for dtype in (jnp.bfloat16, jnp.float16):
        for h, (o, loss) in itertools.product(hidden, OUTPUT_LOSS_PAIRS[:: 2 if quick else 1]):
            for scale in (1.0, 30.0):
                configs.append((mbp.MLP((5, 7, 6, 3), h, o, loss), dtype, 8, dict(scale=scale)))
        configs.append(
            (mbp.MLP((8,) * 10 + (3,), "tanh", "softmax", "cross_entropy"), dtype, 64, {})
        )
        configs.append((mbp.MLP((64, 64, 3), "relu", "identity", "mse"), dtype, 8, dict(scale=1e3)))
    counts = {"nets": 0, "false alarms": 0, "inconclusive": 0}
    worst = 0.0
    with Progress(len(configs), "correct nets") as progress:
        for net, dtype, batch, kwargs in configs:
            alarm, inconclusive, w = judge_correct(net, dtype, batch, **kwargs)
            counts["nets"] += 1
            counts["false alarms"] += alarm
            counts["inconclusive"] += inconclusive
            worst = max(worst, w)
            progress.step(f"{net} {jnp.dtype(dtype).name} B={batch} {kwargs}")
    return counts, worst


# --- wrong derivations ----------------------------------------------------------------


def mutant(equation, layer, wrong):
    """A backward pass whose equation ``equation`` at ``layer`` returns ``wrong(value, inputs)``."""

    def backward(net, params, X, Y):
        fwd = forward_pass_batch(net, params, X)
        L = net.L
        delta = backprop.delta_L_batch(net, fwd.z[-1], fwd.a[-1], Y)
        if (equation, layer) == (4, L):
            delta = wrong(delta, None)
        grads, deltas = [None] * len(params), [None] * len(params)
        for k in reversed(range(len(params))):
            l = k + 2
            deltas[k] = delta
            dW = backprop.weight_grad_batch(delta, fwd.a[k])
            db = backprop.bias_grad_batch(delta)
            if (equation, layer) == (2, l):
                dW = wrong(dW, (delta, fwd.a[k]))
            if (equation, layer) == (3, l):
                db = wrong(db, (delta,))
            grads[k] = Layer(dW, db)
            if k > 0:
                sp = backprop.sigma_prime(net.activations[k - 1], fwd.z[k], fwd.a[k])
                delta = backprop.hidden_delta_batch(delta, params[k].W, sp)
                if (equation, layer) == (1, l - 1):
                    delta = wrong(delta, (deltas[k], params[k].W, sp))
        E = jnp.mean(
            jax.vmap(lambda z, a, y: mbp.network.example_loss(net, z, a, y))(
                fwd.z[-1], fwd.a[-1], Y
            )
        )
        return E, tuple(grads), tuple(deltas)

    return backward


def caught(net, dtype, batch, equation, layer, wrong, name):
    with jax.enable_x64(dtype == jnp.float64):
        params, X, Y = case(net, dtype, batch)
        report = mbp.verify(net, params, X, Y, backward=mutant(equation, layer, wrong))
    failing = {
        (r.equation, r.layer) for r in report.failures if r.equation is not None and r.judged
    }
    ok = failing == {(equation, layer)}
    if not ok:
        print(
            f"  MISSED {name} eq ({equation}) l={layer} {jnp.dtype(dtype).name}: "
            f"failing {sorted(failing)}"
        )
    return ok


def catches(quick: bool):
    width = 32 if quick else 64
    net = mbp.MLP((width,) * 10 + (10,), "tanh", "softmax", "cross_entropy", fused=False)
    L = net.L
    every = [(4, L)] + [
        (eq, l) for l in range(2, L + 1) for eq in (1, 2, 3) if not (eq == 1 and l == L)
    ]
    if quick:
        every = every[::4]
    results = {}

    def scaled(f):
        return lambda value, _: value * f

    for dtype, rel, batch in ((jnp.float32, 1e-4, 4096), (jnp.float64, 1e-8, 256)):
        key = f"{jnp.dtype(dtype).name}: relative error {rel:g} in each equation and layer"
        results[key] = [caught(net, dtype, batch, eq, l, scaled(1 + rel), key) for eq, l in every]
        print(f"{key}: done", file=sys.stderr, flush=True)

    def one_entry(value, _):
        return value.at[0, 0].multiply(1 + 1e-4) if value.ndim == 2 else value

    def drop_first(value, inputs):
        delta, *rest = inputs
        if rest:
            return value - delta[:1].T @ rest[0][:1] / delta.shape[0]
        return value - delta[0] / delta.shape[0]

    extra = [
        ("float32: one entry of ∂E/∂W^3 off by 1e-4", 2, 3, one_entry),
        ("float32: example 0 dropped from the sum of (2)", 2, 5, drop_first),
        ("float32: example 0 dropped from the sum of (3)", 3, 5, drop_first),
    ]
    for name, eq, l, wrong in extra:
        results[name] = [caught(net, jnp.float32, 4096, eq, l, wrong, name)]
    key = "bfloat16: each equation doubled at each layer"
    results[key] = [caught(net, jnp.bfloat16, 256, eq, l, scaled(2.0), key) for eq, l in every]
    print(f"{key}: done", file=sys.stderr, flush=True)
    key = "bfloat16: σ' missing in (1) at each layer"
    results[key] = [
        caught(net, jnp.bfloat16, 256, 1, l, lambda v, inputs: inputs[0] @ inputs[1], key)
        for l in range(2, L)
    ]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fraction of the sweep")
    args = parser.parse_args()
    start = time.perf_counter()
    counts, worst = false_alarms(args.quick)
    print(
        f"correct nets: {counts['nets']}, false alarms: {counts['false alarms']}, "
        f"inconclusive (overflow in the dtype): {counts['inconclusive']}, "
        f"largest e / max(e_w, floor): {worst:.2f} (K = {tolerance.K:g})"
    )
    for name, hits in catches(args.quick).items():
        print(f"{name}: caught and localized {sum(hits)} of {len(hits)}")
    classes(args.quick)
    print(f"{time.perf_counter() - start:.0f} s")


def _in_dtype(dtype, thunk):
    with jax.enable_x64(dtype == jnp.float64):
        return thunk()


def classes(quick: bool) -> dict:
    """The hard classes of scripts/verdict_classes.py: correct ones never fail, wrong ones do."""
    rng = np.random.default_rng(0)
    counts = {"correct": 0, "false alarms": 0, "exceptions": 0, "inconclusive": 0}
    with jax.enable_x64(True):  # the float64 cases are built as float64
        built = verdict_classes.correct_cases(rng, quick)
        extra = verdict_classes.correct_extra(rng)
    thunks = [(c[0], functools.partial(verdict_classes.run_correct, c)) for c in built]
    thunks += [(name, functools.partial(_in_dtype, dtype, thunk)) for name, dtype, thunk in extra]
    for name, thunk in thunks:
        counts["correct"] += 1
        try:
            report = thunk()
        except Exception as error:  # a verifier must never raise on a correct derivation
            counts["exceptions"] += 1
            print(f"  EXCEPTION {name}: {type(error).__name__}: {error}")
            continue
        if report.inconclusive:
            counts["inconclusive"] += 1
            if not all(r.diagnosis for r in report.failures):
                print(f"  INCONCLUSIVE WITHOUT A REASON {name}")
        elif not report.passed:
            counts["false alarms"] += 1
            print(f"  FALSE ALARM {name}: {report.verdict()}")
    wrong = verdict_classes.wrong_cases(rng)
    caught = 0
    for name, thunk in wrong:
        report = thunk()
        hit = not report.passed and not report.inconclusive
        caught += hit
        if not hit:
            print(f"  MISSED {name}: {report.verdict()}")
    print(
        f"hard classes: {counts['correct']} correct, {counts['false alarms']} false alarms, "
        f"{counts['exceptions']} exceptions, {counts['inconclusive']} inconclusive (with a "
        f"reason); wrong derivations caught {caught} of {len(wrong)}"
    )
    return counts


if __name__ == "__main__":
    main()
