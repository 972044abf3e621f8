"""Manual gradients (equations (1)–(4)) against jax.grad of the same loss.

Every hidden activation × every (output, loss) pair × depths 1–3 hidden layers,
in float32 and float64, under the one tolerance rule of `manualbp.tolerance`.

The matrix runs op by op (`jax.disable_jit`): every case shares the same
shapes, so each primitive compiles once for the whole matrix instead of once
per net, which keeps this file to seconds on two cores. The jitted path is
covered by test_properties.py and test_api.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import OUTPUT_LOSS_PAIRS, assert_grads_close, grads_close, numpy_case

import manualbp as mbp
from manualbp.activations import HIDDEN_ACTIVATIONS

B = 8
DEPTH_SIZES = ((5, 7, 3), (5, 7, 6, 3), (5, 7, 6, 4, 3))  # 1, 2 and 3 hidden layers


def manual_and_autodiff(net, seed, dtype):
    params, X, Y = numpy_case(net, seed, B, dtype)
    with jax.disable_jit():
        return (
            mbp.manual_value_and_grad(net, params, X, Y),
            mbp.autodiff_value_and_grad(net, params, X, Y),
        )


@pytest.mark.parametrize("output, loss", OUTPUT_LOSS_PAIRS)
@pytest.mark.parametrize("hidden", HIDDEN_ACTIVATIONS)
def test_manual_equals_autodiff(hidden, output, loss, dtype):
    for seed, sizes in enumerate(DEPTH_SIZES):
        net = mbp.MLP(sizes, hidden, output, loss)
        (E, grads), (E_ref, grads_ref) = manual_and_autodiff(net, seed, dtype)
        assert grads[0].W.dtype == dtype
        assert np.isfinite(E_ref)
        assert_grads_close(E, E_ref, sizes, B, dtype)
        assert_grads_close(grads, grads_ref, sizes, B, dtype)
        # The rule is tight enough to see a 0.1% error in every array.
        wrong = jax.tree.map(lambda g: np.asarray(g, np.float64) * (1 + 1e-3), grads)
        assert not grads_close(wrong, grads_ref, sizes, B, dtype)


@pytest.mark.parametrize(
    "output, loss", [("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy")]
)
def test_general_equation_4_equals_autodiff_for_fusable_pairs(output, loss, dtype):
    """With fused=False the manual path takes the general eq. (4), softmax Jacobian included."""
    for seed, sizes in enumerate(DEPTH_SIZES):
        net = mbp.MLP(sizes, "tanh", output, loss, fused=False)
        (_, grads), (_, grads_ref) = manual_and_autodiff(net, seed, dtype)
        assert_grads_close(grads, grads_ref, sizes, B, dtype)


def test_rule_catches_a_single_wrong_entry():
    sizes = DEPTH_SIZES[0]
    net = mbp.MLP(sizes, "tanh", "softmax", "cross_entropy")
    (_, grads), (_, grads_ref) = manual_and_autodiff(net, 0, jnp.float32)
    assert grads_close(grads, grads_ref, sizes, B, jnp.float32)
    W = np.asarray(grads[0].W).copy()
    i, j = np.unravel_index(np.argmax(np.abs(W)), W.shape)
    W[i, j] *= 1 + 1e-3
    wrong = (grads[0]._replace(W=W), grads[1])
    assert not grads_close(wrong, grads_ref, sizes, B, jnp.float32)
