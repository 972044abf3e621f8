"""The public API's contract: names, shapes, dtypes, jit with the net static, target forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_grads_close, numpy_case, trees_equal

import manualbp as mbp
from manualbp.network import INIT_SCHEMES


def test_pinned_example_runs():
    net = mbp.MLP(sizes=(784, 30, 10), hidden="sigmoid", output="softmax", loss="cross_entropy")
    params = net.init(jax.random.key(0))
    X = jax.random.normal(jax.random.key(1), (4, 784))
    Y = jnp.array([0, 3, 9, 1])
    assert mbp.forward(net, params, X).shape == (4, 10)
    E = mbp.loss(net, params, X, Y)
    E_manual, grads = mbp.manual_value_and_grad(net, params, X, Y)
    E_auto, grads_auto = mbp.autodiff_value_and_grad(net, params, X, Y)
    per_example = mbp.per_example_grads(net, params, X, Y)
    assert E.shape == () and np.allclose(E, E_manual) and np.allclose(E, E_auto)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert per_example[0].W.shape == (4, 30, 784)
    assert_grads_close(grads, grads_auto, net.sizes, 4, jnp.float32)


def test_defaults_and_resolution():
    net = mbp.MLP((3, 4, 2))
    assert [a.name for a in net.activations] == ["tanh", "identity"]
    assert net.loss is mbp.LOSSES["mse"]
    net = mbp.MLP((3, 4, 5, 2), hidden=("relu", mbp.ACTIVATIONS["elu"]), output="softmax")
    assert [a.name for a in net.activations] == ["relu", "elu", "softmax"]
    assert net.L == 4 and net.output.name == "softmax"


def test_net_is_hashable_and_a_static_jit_argument():
    a = mbp.MLP((3, 4, 2), hidden="relu")
    b = mbp.MLP((3, 4, 2), hidden=["relu"])
    assert a == b and hash(a) == hash(b)
    with pytest.raises(dataclasses_frozen_error()):
        a.sizes = (1, 2)
    params, X, Y = numpy_case(a, 0, 5, jnp.float32)
    traces = []

    def step(net, params, X, Y):
        traces.append(net)
        return mbp.manual_value_and_grad(net, params, X, Y)

    step = jax.jit(step, static_argnums=0)
    E, grads = step(a, params, X, Y)
    step(b, params, X, Y)  # an equal net, built another way: the same compiled program
    assert traces == [a]
    with jax.disable_jit():  # op by op, without XLA's fusion: an independent evaluation
        E_eager, grads_eager = mbp.manual_value_and_grad(a, params, X, Y)
    assert_grads_close(E, E_eager, a.sizes, 5, jnp.float32)
    assert_grads_close(grads, grads_eager, a.sizes, 5, jnp.float32)


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize("scheme", INIT_SCHEMES)
def test_init_shapes_dtype_and_scale(scheme, dtype):
    net = mbp.MLP((400, 300, 10))
    params = net.init(jax.random.key(0), dtype=dtype, scheme=scheme)
    assert [p.W.shape for p in params] == [(300, 400), (10, 300)]
    assert [p.b.shape for p in params] == [(300,), (10,)]
    assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(params))
    expected_var = {
        "lecun": 1 / 400,
        "glorot": 2 / 700,
        "he": 2 / 400,
        "nielsen": 1.0,
        "nielsen_scaled": 1 / 400,
    }[scheme]
    # 120,000 draws: the sample variance is within a few percent of the true one.
    assert np.var(np.asarray(params[0].W)) == pytest.approx(expected_var, rel=0.05)
    b_var = np.var(np.asarray(params[0].b))
    if scheme.startswith("nielsen"):
        assert b_var == pytest.approx(1.0, rel=0.3)
    else:
        assert b_var == 0.0


def test_init_is_reproducible_from_the_key():
    net = mbp.MLP((5, 4, 3))
    a, b = net.init(jax.random.key(7)), net.init(jax.random.key(7))
    c = net.init(jax.random.key(8))
    assert trees_equal(a, b)
    assert not np.array_equal(a[0].W, c[0].W)


def test_gradients_come_back_in_each_parameters_dtype():
    with jax.enable_x64():
        net = mbp.MLP((3, 4, 2))
        params, X, Y = numpy_case(net, 0, 5, jnp.float64)
        mixed = (params[0], jax.tree.map(lambda p: p.astype(jnp.float32), params[1]))
        for fn in (mbp.manual_value_and_grad, mbp.autodiff_value_and_grad):
            _, grads = fn(net, mixed, X.astype(jnp.float32), Y)
            assert [g.dtype for g in jax.tree.leaves(grads)] == [jnp.float64] * 2 + [
                jnp.float32
            ] * 2


def test_class_labels_equal_one_hot_targets():
    net = mbp.MLP((3, 4, 3), output="softmax", loss="cross_entropy")
    params, X, labels = numpy_case(net, 0, 5, jnp.float32)
    one_hot = jax.nn.one_hot(labels, 3)
    for fn in (mbp.manual_value_and_grad, mbp.autodiff_value_and_grad):
        (E_labels, g_labels), (E_onehot, g_onehot) = (
            fn(net, params, X, labels),
            fn(net, params, X, one_hot),
        )
        assert E_labels == E_onehot
        assert trees_equal(g_labels, g_onehot)


def test_a_vector_target_is_the_column_when_there_is_one_output():
    net = mbp.MLP((3, 4, 1))
    params, X, Y = numpy_case(net, 0, 5, jnp.float32)
    E_col, g_col = mbp.manual_value_and_grad(net, params, X, Y)
    E_vec, g_vec = mbp.manual_value_and_grad(net, params, X, Y[:, 0])
    assert E_col == E_vec
    assert trees_equal(g_col, g_vec)


def test_a_vector_of_floats_for_several_outputs_is_an_error_not_a_broadcast():
    net = mbp.MLP((3, 4, 2))
    params, X, _ = numpy_case(net, 0, 5, jnp.float32)
    with pytest.raises(ValueError, match=r"Y: got shape \(5,\)"):
        mbp.manual_value_and_grad(net, params, X, jnp.zeros(5))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(sizes=(3,)), ValueError, "at least two layers"),
        (dict(sizes=(3, 0, 2)), ValueError, "positive integer widths"),
        (dict(sizes=(3, 2), output="softmaxx"), ValueError, "unknown activation 'softmaxx'"),
        (dict(sizes=(3, 2), loss="l2"), ValueError, "unknown loss 'l2'; expected one of mse"),
        (dict(sizes=(3, 4, 2), hidden="softmax"), ValueError, "not componentwise"),
        (dict(sizes=(3, 4, 2), hidden=("relu", "tanh")), ValueError, "one activation per hidden"),
        (dict(sizes=(3, 2), loss=3), TypeError, "expected a loss name"),
    ],
)
def test_bad_net_descriptions_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        mbp.MLP(**kwargs)


def test_params_from_takes_column_biases_and_checks_shapes():
    net = mbp.MLP((3, 4, 2))
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((4, 3)), rng.standard_normal((2, 4))]
    biases = [rng.standard_normal((4, 1)), rng.standard_normal(2)]
    params = net.params_from(weights, biases, dtype=jnp.float32)
    assert [p.b.shape for p in params] == [(4,), (2,)]
    np.testing.assert_array_equal(params[0].b, biases[0][:, 0].astype(np.float32))
    np.testing.assert_array_equal(params[1].W, weights[1].astype(np.float32))
    with pytest.raises(ValueError, match=r"layer l=3.*\(2, 4\)"):
        net.params_from(weights, [biases[0], np.zeros(3)], dtype=jnp.float32)
    with pytest.raises(ValueError, match="expected 2 weights and 2 biases"):
        net.params_from(weights[:1], biases, dtype=jnp.float32)


def test_float64_without_x64_is_refused_not_silently_float32():
    net = mbp.MLP((3, 4, 2))
    weights = [np.ones((4, 3)), np.ones((2, 4))]
    biases = [np.zeros(4), np.zeros(2)]
    with pytest.raises(TypeError, match="x64 mode is off.*jax_enable_x64"):
        net.params_from(weights, biases)
    params = tuple(mbp.Layer(W, b) for W, b in zip(weights, biases, strict=True))
    with pytest.raises(TypeError, match=r"params\[0\]\.W .*x64 mode is off"):
        mbp.manual_value_and_grad(net, params, np.ones((2, 3)), np.ones((2, 2)))
    with jax.enable_x64(True):
        assert net.params_from(weights, biases)[0].W.dtype == jnp.float64
