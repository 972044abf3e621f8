"""The fast batched form (Δ^L scaled by 1/B once, sums in (2) and (3)) equals the equations' form.

`backprop.fast_backprop` is what the public gradients and training run;
`backprop.backward_with_deltas` with `backprop.EQUATIONS` applies the batch mean in
equations (2) and (3) at every layer, as the equations are written. They must
agree under the one tolerance rule, for every (output, loss) pair, fused or not.
"""

import jax
import jax.numpy as jnp
import pytest
from helpers import OUTPUT_LOSS_PAIRS, assert_grads_close, numpy_case

import manualbp as mbp
from manualbp import backprop

B = 8
SIZES = (5, 7, 6, 3)


# Every (output, loss) pair as the catalogue builds it, and the general eq. (4) for the
# pairs that have a fused form (for the others fused=False changes nothing).
CASES = [(output, loss, True) for output, loss in OUTPUT_LOSS_PAIRS] + [
    (output, loss, False)
    for output, loss in OUTPUT_LOSS_PAIRS
    if mbp.MLP((2, 2), output=output, loss=loss).fused_loss is not None
]


@pytest.mark.parametrize("output, loss, fused", CASES)
@pytest.mark.parametrize("hidden", ["tanh", "relu", "gelu"])
def test_fast_form_equals_the_equations_form(hidden, output, loss, fused, dtype):
    net = mbp.MLP(SIZES, hidden, output, loss, fused=fused)
    params, X, Y = numpy_case(net, 0, B, dtype)
    Y = mbp.network.as_targets(net, Y, dtype)
    E, grads = backprop.fast_backprop(net, params, X, Y)
    E_ref, grads_ref, _ = backprop.backward_with_deltas(net, params, X, Y)
    assert_grads_close(E, E_ref, SIZES, B, dtype)
    assert_grads_close(grads, grads_ref, SIZES, B, dtype)


def test_the_fused_cases_are_the_fusable_pairs():
    assert sorted((o, l) for o, l, fused in CASES if not fused) == [
        ("sigmoid", "binary_cross_entropy"),
        ("softmax", "cross_entropy"),
    ]


def test_fast_form_compiled_equals_the_equations_form():
    """The same under jit, where XLA fuses the 1/B into the kernel forming Δ^L."""
    net = mbp.MLP(SIZES, "sigmoid", "softmax", "cross_entropy")
    params, X, Y = numpy_case(net, 1, B, jnp.float32)
    Y = mbp.network.as_targets(net, Y, jnp.float32)
    fast = jax.jit(backprop.fast_backprop, static_argnums=0)(net, params, X, Y)
    backward = jax.jit(backprop.backward_with_deltas, static_argnums=0)
    E_ref, grads_ref, _ = backward(net, params, X, Y)
    assert_grads_close(fast[0], E_ref, SIZES, B, jnp.float32)
    assert_grads_close(fast[1], grads_ref, SIZES, B, jnp.float32)
