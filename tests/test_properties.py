"""Property-based tests over random architectures, batch sizes and activations.

Ten drawn nets by default, run op by op (no per-net compile); 25 jitted ones with -m slow.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import OUTPUT_LOSS_PAIRS, assert_grads_close, numpy_case
from hypothesis import given, settings
from hypothesis import strategies as st

import manualbp as mbp
from manualbp.activations import HIDDEN_ACTIVATIONS
from manualbp.autodiff import gradient_magnitudes
from manualbp.network import as_targets

EXAMPLES = 10


@st.composite
def cases(draw):
    output, loss = draw(st.sampled_from(OUTPUT_LOSS_PAIRS))
    depth = draw(st.integers(1, 4))  # parameter layers
    sizes = draw(st.lists(st.integers(1, 6), min_size=depth + 1, max_size=depth + 1))
    if output == "softmax":
        sizes[-1] = max(sizes[-1], 2)
    hidden = draw(
        st.lists(st.sampled_from(HIDDEN_ACTIVATIONS), min_size=depth - 1, max_size=depth - 1)
    )
    net = mbp.MLP(tuple(sizes), hidden, output, loss, fused=draw(st.booleans()))
    return net, draw(st.integers(1, 6)), draw(st.integers(0, 2**31 - 1))


def agree_every_way(case):
    net, B, seed = case
    params, X, Y = numpy_case(net, seed, B, jnp.float32)
    E, grads = mbp.manual_value_and_grad(net, params, X, Y)
    E_ref, grads_ref = mbp.autodiff_value_and_grad(net, params, X, Y)
    # Random small batches can cancel: measure against the size of the summed terms.
    magnitude = gradient_magnitudes(net, params, X, as_targets(net, Y, jnp.float32))
    assert_grads_close(E, E_ref, net.sizes, B, jnp.float32)
    assert_grads_close(grads, grads_ref, net.sizes, B, jnp.float32, magnitude)

    # The vmap of the single-example backprop equals the batched form.
    E_vmap, grads_vmap = mbp.manual_value_and_grad(net, params, X, Y, form="vmap")
    assert_grads_close(E_vmap, E, net.sizes, B, jnp.float32)
    assert_grads_close(grads_vmap, grads, net.sizes, B, jnp.float32, magnitude)

    # Per-example gradients carry a leading batch axis and average to the batch gradient.
    per_example = mbp.per_example_grads(net, params, X, Y)
    for g, p in zip(jax.tree.leaves(per_example), jax.tree.leaves(params), strict=True):
        assert g.shape == (B, *p.shape)
    mean = jax.tree.map(lambda g: np.mean(np.asarray(g, np.float64), axis=0), per_example)
    assert_grads_close(mean, grads, net.sizes, B, jnp.float32, magnitude)


def agree_op_by_op(case):
    """`agree_every_way` with jit off: op by op, each small operation compiles once per
    shape and is shared by every drawn net, where a jitted whole compiles per net."""
    with jax.disable_jit():
        agree_every_way(case)


# Op by op, many nets in the default run; jitted, as users call it, a sweep with -m slow.
test_manual_gradients_agree_every_way = settings(max_examples=EXAMPLES, deadline=None)(
    given(cases())(agree_op_by_op)
)
test_manual_gradients_agree_every_way_jitted = pytest.mark.slow(
    settings(max_examples=25, deadline=None)(given(cases())(agree_every_way))
)
