"""Each equation on tiny networks whose numbers are worked out by hand here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_grads_close

import manualbp as mbp
from manualbp import activations, losses
from manualbp.backprop import (
    backprop,
    bias_grad,
    bias_grad_batch,
    fast_backprop,
    hidden_delta,
    hidden_delta_batch,
    output_delta,
    weight_grad,
    weight_grad_batch,
)
from manualbp.network import Layer, forward_pass

# A 2-2-1 net: relu hidden layer (σ' is 0 or 1, so every product is visible),
# identity output, E = ½ (ŷ − y)².
#   x   = [1, 2]
#   z^2 = W^2 x + b^2 = [1·1 − 1·2 + 0.5, 0.5·1 + 1·2 − 1] = [−0.5, 1.5]
#   a^2 = relu(z^2) = [0, 1.5]
#   z^3 = W^3 a^2 + b^3 = [2·0 − 1·1.5 + 0.25] = [−1.25] = ŷ
#   E   = ½ (−1.25 − 0.75)² = 2
NET = mbp.MLP((2, 2, 1), hidden="relu", output="identity", loss="mse")
PARAMS = (
    Layer(W=jnp.array([[1.0, -1.0], [0.5, 1.0]]), b=jnp.array([0.5, -1.0])),
    Layer(W=jnp.array([[2.0, -1.0]]), b=jnp.array([0.25])),
)
x = jnp.array([1.0, 2.0])
y = jnp.array([0.75])

z2, a2 = jnp.array([-0.5, 1.5]), jnp.array([0.0, 1.5])
z3 = jnp.array([-1.25])
dE_dyhat = jnp.array([-2.0])  # ŷ − y = −1.25 − 0.75
delta3 = jnp.array([-2.0])  # eq. (4): ∂E/∂ŷ ⊙ σ'(z^3) = −2 · 1
dW3 = jnp.array([[0.0, -3.0]])  # eq. (2): δ^3 (a^2)ᵀ = −2 · [0, 1.5]
db3 = jnp.array([-2.0])  # eq. (3): δ^3
delta2 = jnp.array([0.0, 2.0])  # eq. (1): (W^3)ᵀ δ^3 ⊙ σ'(z^2) = [−4, 2] ⊙ [0, 1]
dW2 = jnp.array([[0.0, 0.0], [2.0, 4.0]])  # eq. (2): δ^2 xᵀ = [0, 2]ᵀ [1, 2]
db2 = jnp.array([0.0, 2.0])  # eq. (3): δ^2


def test_forward_pass_stores_every_z_and_a_aligned_by_layer():
    fwd = forward_pass(NET, PARAMS, x)  # index i is layer l = i + 1
    assert fwd.z[0] is None  # the input layer a^1 = x computes no z
    np.testing.assert_array_equal(fwd.a[0], x)
    np.testing.assert_array_equal(fwd.z[1], z2)
    np.testing.assert_array_equal(fwd.a[1], a2)
    np.testing.assert_array_equal(fwd.z[2], z3)
    np.testing.assert_array_equal(fwd.a[2], z3)


def test_loss_gradient():
    np.testing.assert_array_equal(losses.mse.fn(z3, y), 2.0)
    np.testing.assert_array_equal(losses.mse.grad(z3, y), dE_dyhat)


def test_equation_4_output_delta():
    np.testing.assert_array_equal(output_delta(dE_dyhat, z3, activations.identity), delta3)


def test_equation_1_hidden_delta():
    sigma_prime = activations.relu.deriv(z2)
    np.testing.assert_array_equal(sigma_prime, [0.0, 1.0])
    np.testing.assert_array_equal(hidden_delta(delta3, PARAMS[1].W, sigma_prime), delta2)


def test_equation_2_weight_grad():
    np.testing.assert_array_equal(weight_grad(delta3, a2), dW3)
    np.testing.assert_array_equal(weight_grad(delta2, x), dW2)


def test_equation_3_bias_grad():
    np.testing.assert_array_equal(bias_grad(delta3), db3)
    np.testing.assert_array_equal(bias_grad(delta2), db2)


def test_backprop_composes_the_equations():
    E, grads = backprop(NET, PARAMS, x, y)
    assert E == 2.0
    for got, want in zip(jax.tree.leaves(grads), (dW2, db2, dW3, db3), strict=True):
        np.testing.assert_array_equal(got, want)


def test_public_api_on_the_hand_computed_case():
    E, grads = mbp.manual_value_and_grad(NET, PARAMS, x[None, :], y[None, :])
    assert E == 2.0
    for got, want in zip(jax.tree.leaves(grads), (dW2, db2, dW3, db3), strict=True):
        np.testing.assert_array_equal(got, want)
    E_auto, grads_auto = mbp.autodiff_value_and_grad(NET, PARAMS, x[None, :], y[None, :])
    assert E_auto == 2.0
    for got, want in zip(jax.tree.leaves(grads_auto), (dW2, db2, dW3, db3), strict=True):
        np.testing.assert_array_equal(got, want)


def test_batched_equations_average_the_single_example_ones():
    # Two examples, the second's δ and x scaled, so every row differs.
    deltas = jnp.stack([delta2, -2 * delta2])
    xs = jnp.stack([x, 3 * x])
    np.testing.assert_array_equal(
        weight_grad_batch(deltas, xs),
        (weight_grad(delta2, x) + weight_grad(-2 * delta2, 3 * x)) / 2,
    )
    np.testing.assert_array_equal(bias_grad_batch(deltas), (delta2 - 2 * delta2) / 2)
    sp = jnp.array([[0.0, 1.0], [1.0, 1.0]])
    np.testing.assert_array_equal(
        hidden_delta_batch(jnp.stack([delta3, 2 * delta3]), PARAMS[1].W, sp),
        jnp.stack(
            [hidden_delta(delta3, PARAMS[1].W, sp[0]), hidden_delta(2 * delta3, PARAMS[1].W, sp[1])]
        ),
    )


def test_batched_backprop_averages_over_the_batch():
    # Example 2 has target 2.75: ŷ − y = −4, so its gradients are twice example 1's.
    X = jnp.stack([x, x])
    Y = jnp.array([[0.75], [2.75]])
    E, grads = fast_backprop(NET, PARAMS, X, Y)
    assert E == (2.0 + 8.0) / 2
    for got, want in zip(jax.tree.leaves(grads), (dW2, db2, dW3, db3), strict=True):
        np.testing.assert_array_equal(got, 1.5 * want)


def test_sigmoid_derivative_at_zero_is_one_quarter():
    # σ(0) = ½, σ'(0) = ½ (1 − ½) = ¼, from z or from the stored a.
    assert activations.sigmoid.deriv(jnp.array(0.0)) == 0.25
    assert activations.sigmoid.deriv_from_output(jnp.array(0.5)) == 0.25


def test_softmax_equation_4_hand_case():
    # z = [0, 0]: ŷ = [½, ½]; y = [1, 0]: g = −y/ŷ = [−2, 0], ⟨g, ŷ⟩ = −1,
    # δ^L = ŷ ⊙ (g − ⟨g, ŷ⟩) = [½ · (−1), ½ · 1] = [−½, ½] = ŷ − y.
    z = jnp.array([0.0, 0.0])
    y_onehot = jnp.array([1.0, 0.0])
    g = losses.cross_entropy.grad(activations.softmax.fn(z), y_onehot)
    np.testing.assert_array_equal(g, [-2.0, 0.0])
    np.testing.assert_array_equal(output_delta(g, z, activations.softmax), [-0.5, 0.5])
    # The Jacobian route gives the same δ^L: J = diag(ŷ) − ŷŷᵀ = [[¼, −¼], [−¼, ¼]].
    J = activations.softmax.deriv(z)
    np.testing.assert_array_equal(J, [[0.25, -0.25], [-0.25, 0.25]])
    np.testing.assert_array_equal(J.T @ g, [-0.5, 0.5])


@pytest.mark.parametrize(
    "output, loss, z, y_true",
    [
        # δ^L = ŷ − y in both fused pairs; here ŷ = [½, ½] and σ(0) = ½.
        ("softmax", "cross_entropy", [0.0, 0.0], [1.0, 0.0]),
        ("sigmoid", "binary_cross_entropy", [0.0, 0.0], [1.0, 0.0]),
    ],
)
def test_fused_delta_is_y_hat_minus_y(output, loss, z, y_true):
    fused = losses.fused_loss(mbp.get_activation(output), mbp.get_loss(loss))
    np.testing.assert_array_equal(fused.delta(jnp.array(z), jnp.array(y_true)), [-0.5, 0.5])


def test_fused_losses_equal_the_general_ones_where_both_are_finite():
    z = jnp.array([0.3, -1.2, 2.0])
    y_prob = jnp.array([0.2, 0.5, 0.3])
    sizes = (3, 3)  # one layer of three outputs: the tolerance rule's depth 1, length 3
    fused = losses.fused_loss(activations.softmax, losses.cross_entropy)
    general = losses.cross_entropy.fn(activations.softmax.fn(z), y_prob)
    assert_grads_close(fused.fn(z, y_prob), general, sizes, 1, jnp.float32)
    fused = losses.fused_loss(activations.sigmoid, losses.binary_cross_entropy)
    general = losses.binary_cross_entropy.fn(activations.sigmoid.fn(z), y_prob)
    assert_grads_close(fused.fn(z, y_prob), general, sizes, 1, jnp.float32)


def test_a_users_own_softmax_is_not_replaced_by_the_fused_form():
    mine = mbp.Activation("softmax", activations.softmax.fn, activations.softmax.deriv, False)
    net = mbp.MLP((3, 2), output=mine, loss="cross_entropy")
    assert net.fused_loss is None
