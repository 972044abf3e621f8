"""Every public numerical function returns what it returned before the plumbing was rewritten.

The fixture ``tests/data/public_values.npz`` holds each public function's
result on one small net per (output, loss, fused) entry of the catalogue,
each with another hidden activation, so every σ and every output/loss pair is
covered. It was written by the code before the backward recursion became one
function and the entry points one helper; on the machine that wrote it the
rewritten code reproduces it bit for bit (``python tests/test_regression.py
--check`` says so), and elsewhere, where XLA may fuse differently, within the
tolerance rule of `manualbp.tolerance`.

    python tests/test_regression.py --write    # rewrite the fixture (only on purpose)
    python tests/test_regression.py --check    # count bit-equal arrays
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import manualbp as mbp
from manualbp import activations, backprop, tolerance
from manualbp.data import random_batch
from manualbp.losses import OUTPUT_LOSS_PAIRS
from manualbp.network import as_targets

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "public_values.npz")
ENTRIES = [(out, loss, True) for out, loss in OUTPUT_LOSS_PAIRS] + [
    ("softmax", "cross_entropy", False),
    ("sigmoid", "binary_cross_entropy", False),
]
HIDDEN = activations.HIDDEN_ACTIVATIONS
CASES = [(HIDDEN[i % len(HIDDEN)], *entry) for i, entry in enumerate(ENTRIES)]
# Two cases by default (about 40 compiled programs each); the rest with -m slow.
DEFAULT = {
    ("leaky_relu", "softmax", "cross_entropy", True),
    ("softplus", "sigmoid", "cross_entropy", True),
}
SIZES, BATCH = (4, 5, 6, 3), 6


def case(hidden, output, loss, fused):
    net = mbp.MLP(SIZES, hidden=hidden, output=output, loss=loss, fused=fused)
    params = net.init(jax.random.key(1))
    X, Y = random_batch(net, jax.random.key(2), BATCH)
    v = jax.tree.map(lambda t: jax.random.normal(jax.random.key(3), t.shape, t.dtype), params)
    return net, params, X, Y, v


def public_values(hidden, output, loss, fused) -> dict:
    """Each public function's result (a pytree) on this case; absent where it refuses the net."""
    net, params, X, Y, v = case(hidden, output, loss, fused)
    ext, key = mbp.extensions, jax.random.key(4)
    Yt = as_targets(net, Y, jnp.float32)
    calls = {
        "forward": lambda: mbp.forward(net, params, X),
        "loss": lambda: mbp.loss(net, params, X, Y),
        "manual_value_and_grad": lambda: mbp.manual_value_and_grad(net, params, X, Y),
        "manual_value_and_grad_vmap": lambda: mbp.manual_value_and_grad(
            net, params, X, Y, form="vmap"
        ),
        "per_example_grads": lambda: mbp.per_example_grads(net, params, X, Y),
        "backprop": lambda: backprop.backprop(net, params, X[0], Yt[0]),
        "backward_with_deltas": lambda: backprop.backward_with_deltas(net, params, X, Yt),
        "fast_backprop": lambda: backprop.fast_backprop(net, params, X, Yt),
        "batch_l2": lambda: ext.batch_l2(net, params, X, Y),
        "sum_grad_squared": lambda: ext.sum_grad_squared(net, params, X, Y),
        "variance": lambda: ext.variance(net, params, X, Y),
        "clipped_value_and_grad": lambda: ext.clipped_value_and_grad(
            net, params, X, Y, l2_clip=0.5
        ),
        "diag_ggn": lambda: ext.diag_ggn(net, params, X, Y),
        "diag_ggn_mc": lambda: ext.diag_ggn_mc(net, params, X, Y, key=key, samples=2),
        "kflr": lambda: ext.kflr(net, params, X, Y),
        "kfac": lambda: ext.kfac(net, params, X, Y, key=key),
        "diag_hessian": lambda: ext.diag_hessian(net, params, X, Y),
        "hvp": lambda: ext.hvp(net, params, X, Y, v),
        "ggn_vp": lambda: ext.ggn_vp(net, params, X, Y, v),
    }
    values = {}
    for name, call in calls.items():
        try:
            values[name] = call()
        except ValueError:  # a quantity the net's records cannot give (no σ'', no factor)
            continue
    return values


def _flat(hidden, output, loss, fused, values) -> dict:
    prefix = f"{hidden}-{output}-{loss}-{fused}"
    return {
        f"{prefix}/{name}/{i}": np.asarray(leaf)
        for name, tree in values.items()
        for i, leaf in enumerate(jax.tree.leaves(tree))
    }


@pytest.fixture(scope="module")
def saved():
    with np.load(FIXTURE) as data:
        return dict(data)


@pytest.mark.parametrize(
    "hidden,output,loss,fused",
    [c if c in DEFAULT else pytest.param(*c, marks=pytest.mark.slow) for c in CASES],
)
def test_public_functions_return_what_they_returned(saved, hidden, output, loss, fused):
    now = _flat(hidden, output, loss, fused, public_values(hidden, output, loss, fused))
    prefix = f"{hidden}-{output}-{loss}-{fused}/"
    assert set(now) == {k for k in saved if k.startswith(prefix)}
    rtol = tolerance.net_rtol(jnp.float32, SIZES, BATCH)
    for name, value in now.items():
        _, rel = tolerance.array_error(value, saved[name])
        assert rel <= rtol, f"{name}: relative error {rel:.3g} > {rtol:.3g}"


def test_a_changed_result_is_caught(saved):
    """The comparison can fail: one ulp-scale change is within, a real change is not."""
    name = next(k for k in saved if k.endswith("/hvp/0"))
    rtol = tolerance.net_rtol(jnp.float32, SIZES, BATCH)
    changed = saved[name] * (1 + 100 * rtol)
    assert tolerance.array_error(changed, saved[name])[1] > rtol


def _main(argv) -> int:
    arrays = {}
    for hidden, output, loss, fused in CASES:
        arrays.update(
            _flat(hidden, output, loss, fused, public_values(hidden, output, loss, fused))
        )
    if argv[1:] == ["--write"]:
        os.makedirs(os.path.dirname(FIXTURE), exist_ok=True)
        np.savez_compressed(FIXTURE, **arrays)
        print(f"wrote {len(arrays)} arrays to {FIXTURE}")
        return 0
    with np.load(FIXTURE) as data:
        saved = dict(data)
    equal = [k for k in arrays if k in saved and np.array_equal(arrays[k], saved[k])]
    differ = sorted(set(arrays) ^ set(saved) | {k for k in arrays if k not in equal})
    print(f"{len(equal)} of {len(saved)} arrays bit-equal; differing or missing: {differ}")
    return 0 if not differ else 1


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
