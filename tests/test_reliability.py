"""Bad input gets a clear error naming the argument; saturated numerics stay finite and agree."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_grads_close

import manualbp as mbp
from manualbp.network import Layer

NET = mbp.MLP((3, 4, 2), "tanh", "softmax", "cross_entropy")
PARAMS = NET.init(jax.random.key(0))
X = jnp.ones((5, 3))
Y = jnp.array([0, 1, 1, 0, 1])
EVERY_ENTRY = ("forward", "loss", "manual", "autodiff", "per_example", "verify", "train")


def call(entry, net=NET, params=PARAMS, X=X, Y=Y):
    if entry == "forward":
        return mbp.forward(net, params, X)
    if entry == "loss":
        return mbp.loss(net, params, X, Y)
    if entry == "manual":
        return mbp.manual_value_and_grad(net, params, X, Y)
    if entry == "autodiff":
        return mbp.autodiff_value_and_grad(net, params, X, Y)
    if entry == "per_example":
        return mbp.per_example_grads(net, params, X, Y)
    if entry == "verify":
        return mbp.verify(net, params, X, Y)
    return mbp.train(
        net,
        params,
        optax.sgd(0.1),
        X,
        Y,
        epochs=1,
        batch_size=5,
        key=jax.random.key(0),
        progress=False,
    )


BAD_INPUTS = [
    # (what, keyword arguments to call, error type, message fragment)
    ("X features ≠ N_1", dict(X=jnp.ones((5, 4))), ValueError, r"X: expected shape \(B, N_1\)"),
    ("X not 2-D", dict(X=jnp.ones(3)), ValueError, r"X: expected shape \(B, N_1\)"),
    ("empty batch", dict(X=jnp.ones((0, 3)), Y=jnp.zeros(0, int)), ValueError, "batch is empty"),
    ("Y width ≠ N_L", dict(Y=jnp.zeros((5, 3))), ValueError, r"Y: expected shape \(B, N_L\)"),
    ("row counts differ", dict(Y=jnp.zeros(4, int)), ValueError, "Y: expected 5 rows"),
    ("label too large", dict(Y=jnp.array([0, 1, 2, 0, 1])), ValueError, "class labels must lie"),
    ("negative label", dict(Y=jnp.array([0, -1, 1, 0, 1])), ValueError, "class labels must lie"),
    ("float vector Y", dict(Y=jnp.zeros(5)), ValueError, r"Y: got shape \(5,\)"),
    ("too few layers", dict(params=PARAMS[:1]), ValueError, "params: expected 2 layers"),
    (
        "wrong W shape",
        dict(params=(Layer(jnp.ones((4, 2)), jnp.ones(4)), PARAMS[1])),
        ValueError,
        r"params\[0\].W \(layer l=2\): expected shape \(4, 3\)",
    ),
    ("params not a tuple", dict(params={"W": 1}), TypeError, "params: expected a tuple"),
    ("params a list", dict(params=list(PARAMS)), TypeError, "got a list; pass tuple"),
    (
        "a plain (W, b) pair",
        dict(params=(tuple(PARAMS[0]), PARAMS[1])),
        TypeError,
        r"params\[0\] \(layer l=2\): expected an mbp.Layer",
    ),
    (
        "boolean labels",
        dict(Y=jnp.array([True, False, True, True, False])),
        ValueError,
        r"Y: got shape \(5,\) of bool",
    ),
    (
        "string targets",
        dict(Y=np.array(["a", "b", "a", "b", "a"])),
        TypeError,
        "Y: expected integer, boolean or floating",
    ),
    ("X not an array", dict(X=[[1.0, 2.0, 3.0]]), TypeError, "X: expected an array"),
]


@pytest.mark.parametrize("entry", EVERY_ENTRY)
@pytest.mark.parametrize("what, kwargs, error, match", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_every_entry_point_names_the_bad_argument(entry, what, kwargs, error, match):
    if entry == "forward" and set(kwargs) == {"Y"}:
        pytest.skip("forward takes no Y")
    with pytest.raises(error, match=match):
        call(entry, **kwargs)


@pytest.mark.parametrize("entry", ["verify", "train"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_inputs_are_rejected_by_verify_and_train(entry, bad):
    X_bad = np.ones((5, 3), np.float32)
    X_bad[2, 1] = bad
    with pytest.raises(ValueError, match="X: expected finite values"):
        call(entry, X=jnp.asarray(X_bad))


@pytest.mark.parametrize(
    "output, loss, Y_sat",
    [
        ("softmax", "cross_entropy", jnp.array([1, 0, 1, 0])),
        ("sigmoid", "binary_cross_entropy", jnp.array([[1.0], [0.0], [0.0], [1.0]])),
    ],
)
def test_saturated_logits_give_finite_losses_and_agreeing_gradients(output, loss, Y_sat):
    N_L = 2 if output == "softmax" else 1
    net = mbp.MLP((2, 3, N_L), "sigmoid", output, loss)
    # Hidden sigmoids saturate to 0/1 and output logits reach ±1e4.
    params = (
        Layer(jnp.array([[1e3, 0.0], [0.0, -1e3], [1e3, 1e3]]), jnp.zeros(3)),
        Layer(jnp.full((N_L, 3), 5e3) * jnp.array([1.0, -1.0])[:N_L, None], jnp.zeros(N_L)),
    )
    X_sat = jnp.array([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    z_hidden = X_sat @ params[0].W.T
    z_L = jax.nn.sigmoid(z_hidden) @ params[1].W.T
    assert float(jnp.max(jnp.abs(z_L))) >= 1e4
    assert float(jnp.max(jnp.abs(mbp.forward(net, params, X_sat)))) <= 1.0
    E, grads = mbp.manual_value_and_grad(net, params, X_sat, Y_sat)
    E_ref, grads_ref = mbp.autodiff_value_and_grad(net, params, X_sat, Y_sat)
    assert np.isfinite(E) and float(E) > 1e3  # confidently wrong examples cost ~1e4, not inf
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves((grads, grads_ref)))
    assert_grads_close(grads, grads_ref, net.sizes, 4, jnp.float32)
    assert float(jnp.max(jnp.abs(jax.nn.sigmoid(z_hidden) - 0.5))) == 0.5  # fully saturated


def test_an_inf_input_under_a_users_own_jit_is_not_checked():
    """Documented: value checks need concrete arrays; under jit only shapes are checked."""
    step = jax.jit(mbp.manual_value_and_grad, static_argnums=0)
    X_inf = X.at[0, 0].set(jnp.inf)
    _, grads = step(NET, PARAMS, X_inf, Y)  # no error from us: X is a tracer here
    assert not np.all(np.isfinite(grads[0].W))  # which is why verify and train check values
    with pytest.raises(ValueError, match="X: expected shape"):
        step(NET, PARAMS, jnp.ones((5, 4)), Y)


@pytest.mark.parametrize("bad_key", [0, np.array([1, 2]), jax.random.split(jax.random.key(0))])
def test_init_names_a_bad_key(bad_key):
    with pytest.raises(TypeError, match="key: expected one jax.random key"):
        NET.init(bad_key)


def test_init_takes_typed_and_raw_keys():
    typed, raw = NET.init(jax.random.key(3)), NET.init(jax.random.PRNGKey(3))
    assert all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(typed), jax.tree.leaves(raw), strict=True)
    )


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(key=0), TypeError, "key: expected one jax.random key"),
        (
            dict(optimizer=optax.sgd),
            TypeError,
            "optimizer: expected an optax GradientTransformation",
        ),
    ],
)
def test_train_names_a_bad_key_or_optimizer(kwargs, error, match):
    arguments = dict(optimizer=optax.sgd(0.1), key=jax.random.key(0))
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        mbp.train(
            NET,
            PARAMS,
            arguments["optimizer"],
            X,
            Y,
            epochs=1,
            batch_size=5,
            key=arguments["key"],
            progress=False,
        )


def test_sizes_accept_numpy_integers():
    assert mbp.MLP(tuple(np.array([3, 4, 2]))).sizes == (3, 4, 2)
