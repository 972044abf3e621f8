"""The classes of hard cases the verdict must get right, one small case generator each.

Used by scripts/verdict_sweep.py. Correct derivations must pass or be inconclusive with a
reason (never fail, never raise); wrong ones must fail. Each class is drawn at random from
its own family, so that no instance is tuned to.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import manualbp as mbp
from manualbp import backprop
from manualbp.extensions.curvature_equations import CURVATURE
from manualbp.network import Layer
from manualbp.verification import verify_activation, verify_curvature, verify_extensions


def params_for(net, rng, dtype, *, integer=False, bias=True):
    draw = (lambda shape: rng.integers(-2, 3, shape)) if integer else rng.standard_normal
    return tuple(
        Layer(
            jnp.asarray(draw((o, i)) / (1 if integer else np.sqrt(i)), dtype),
            jnp.asarray(draw((o,)) if bias else np.zeros(o), dtype),
        )
        for i, o in zip(net.sizes[:-1], net.sizes[1:], strict=True)
    )


def regression(net, rng, B, dtype, scale=1.0, integer=False):
    draw = (lambda shape: rng.integers(-2, 3, shape)) if integer else rng.standard_normal
    X = jnp.asarray(draw((B, net.sizes[0])) * scale, dtype)
    Y = jnp.asarray(draw((B, net.sizes[-1])) * scale, dtype)
    return X, Y


def nielsen_loop(net, params, X, Y):
    """A correct per-example loop: each example's backprop, summed in order, divided by B."""

    def body(b, acc):
        E, g = backprop.backprop(net, params, X[b], Y[b])
        return acc[0] + E, jax.tree.map(jnp.add, acc[1], g)

    zero = (jnp.zeros((), X.dtype), jax.tree.map(jnp.zeros_like, params))
    E, g = jax.lax.fori_loop(0, X.shape[0], body, zero)
    _, _, deltas = backprop.backward_with_deltas(net, params, X, Y)
    return E / X.shape[0], jax.tree.map(lambda t: t / X.shape[0], g), deltas


def _act(name, fn, deriv):
    return mbp.Activation(name, fn, deriv)


def _where(cond, a, b, z):
    return jnp.where(cond, jnp.asarray(a, z.dtype), jnp.asarray(b, z.dtype))


KINKED = [
    _act("relu_max", lambda z: jnp.maximum(z, 0), lambda z: _where(z > 0, 1, 0, z)),
    _act("abs", jnp.abs, jnp.sign),
    _act("hardtanh", lambda z: jnp.clip(z, -1, 1), lambda z: _where(jnp.abs(z) < 1, 1, 0, z)),
    _act("leaky", lambda z: jnp.where(z > 0, z, 0.1 * z), lambda z: _where(z >= 0, 1, 0.1, z)),
    _act("nn_relu", jax.nn.relu, lambda z: _where(z >= 0, 1, 0, z)),
]
CUBE = _act("cube", lambda z: z**3 / 3, lambda z: z * z)


def correct_cases(rng, quick):
    """(name, thunk returning a Report) for correct derivations of every class."""
    cases = []
    f32, f64 = jnp.float32, jnp.float64
    tanh_net = mbp.MLP((4, 8, 3), "tanh", "identity", "mse")
    for B, dtype in [(2048 if quick else 16384, f32), (4096 if quick else 65536, f64)]:
        p, (X, Y) = params_for(tanh_net, rng, dtype), regression(tanh_net, rng, B, dtype)
        cases.append(
            (f"per-example loop B={B} {jnp.dtype(dtype).name}", tanh_net, p, X, Y, nielsen_loop)
        )
    p = params_for(tanh_net, rng, f64)
    X, _ = regression(tanh_net, rng, 8192, f64)
    cases.append(
        ("float64 B=8192, targets = 5", tanh_net, p, X, jnp.full((8192, 3), 5.0, f64), None)
    )
    for h in ("sigmoid", "tanh", "relu"):
        net = mbp.MLP((4, 16, 3), h, "identity", "mse")
        p, (X, Y) = params_for(net, rng, f32), regression(net, rng, 1, f32)
        cases.append(
            (f"one example x4096 {h}", net, p, jnp.repeat(X, 4096, 0), jnp.repeat(Y, 4096, 0), None)
        )
    cube = mbp.MLP((4, 7, 6, 3), CUBE, CUBE, "mse")
    for seed in range(4 if quick else 20):
        p, (X, Y) = params_for(cube, rng, f32), regression(cube, rng, 9, f32)
        cases.append((f"z³/3 seed {seed}", cube, p, X, Y, None))
    for act in KINKED:
        for dtype in (f32, f64):
            net = mbp.MLP((4, 6, 5, 3), act, "identity", "mse")
            p = params_for(net, rng, dtype, integer=True, bias=False)
            X, Y = regression(net, rng, 6, dtype, integer=True)
            cases.append((f"integer kinks {act.name} {jnp.dtype(dtype).name}", net, p, X, Y, None))
    for scale in (1e-155, 1e-160):
        net = mbp.MLP((4, 6, 3), "tanh", "identity", "mse")
        p = params_for(net, rng, f64, bias=False)
        X, Y = regression(net, rng, 6, f64, scale)
        cases.append((f"float64 x{scale:g}, zero biases", net, p, X, Y, None))
    return cases


def run_correct(case):
    name, net, p, X, Y, backward = case
    with jax.enable_x64(p[0].W.dtype == jnp.float64):
        return mbp.verify(net, p, X, Y, backward=backward)


def correct_extra(rng):
    """(name, thunk) for the curvature and extension classes (their own verifiers)."""
    out = []
    net = mbp.MLP((4, 6, 5), "tanh", "softmax", "cross_entropy")
    for dtype in (jnp.float32, jnp.float64):
        p = params_for(net, rng, dtype)
        p = (p[0], Layer(p[1].W * 30, p[1].b))
        X = jnp.asarray(rng.standard_normal((6, 4)), dtype)
        Y = jnp.asarray(rng.integers(0, 5, 6))
        out.append(
            (
                f"confident softmax curvature {jnp.dtype(dtype).name}",
                dtype,
                lambda p=p, X=X, Y=Y: verify_curvature(net, p, X, Y),
            )
        )
    three = _act("tanh3", jnp.tanh, lambda z: 1 - jnp.tanh(z) ** 2)
    net3 = mbp.MLP((4, 6, 3), three, "softmax", "cross_entropy")
    p3 = params_for(net3, rng, jnp.float32)
    X3, Y3 = (
        jnp.asarray(rng.standard_normal((5, 4)), jnp.float32),
        jnp.asarray(rng.integers(0, 3, 5)),
    )
    out.append(("curvature without σ''", jnp.float32, lambda: verify_curvature(net3, p3, X3, Y3)))
    relu = mbp.MLP((4, 6, 3), "relu", "identity", "mse")
    for dtype, scale in (
        (jnp.float32, 1e15),
        (jnp.float32, 1e-20),
        (jnp.float64, 1e100),
        (jnp.float64, 1e150),
    ):
        p = params_for(relu, rng, dtype)
        X, Y = regression(relu, rng, 6, dtype, scale)
        out.append(
            (
                f"extensions x{scale:g} {jnp.dtype(dtype).name}",
                dtype,
                lambda p=p, X=X, Y=Y, d=dtype: verify_extensions(
                    relu, p, X, Y, float64=d == jnp.float64
                ),
            )
        )
    return out


def wrong_cases(rng):
    """(name, thunk returning a Report that must fail)."""
    s = jax.nn.sigmoid
    slips = [
        _act(
            "sigmoid(2z), chain factor 2 forgotten",
            lambda z: s(2 * z),
            lambda z: s(2 * z) * (1 - s(2 * z)),
        ),
        _act(
            "elu α=2, α forgotten in σ'",
            lambda z: jnp.where(z > 0, z, 2 * jnp.expm1(jnp.minimum(z, 0))),
            lambda z: jnp.where(z > 0, 1.0, jnp.exp(jnp.minimum(z, 0))),
        ),
        _act(
            "exp(−z²), factor 2 forgotten",
            lambda z: jnp.exp(-z * z),
            lambda z: -z * jnp.exp(-z * z),
        ),
    ]
    out = []
    for act in slips:
        net = mbp.MLP((4, 6, 3), act, "identity", "mse")
        p = params_for(net, rng, jnp.float32)
        p = (Layer(p[0].W, p[0].b - 15.0), p[1])  # a layer at z ≈ −15: saturated or dead
        X, Y = regression(net, rng, 6, jnp.float32)
        out.append(
            (
                act.name + " on a saturated batch",
                lambda net=net, p=p, X=X, Y=Y: mbp.verify(net, p, X, Y),
            )
        )
    cut = _act(
        "tanh, σ' = 0 for z > 4", jnp.tanh, lambda z: jnp.where(z > 4, 0.0, 1 - jnp.tanh(z) ** 2)
    )
    out.append((cut.name, lambda: verify_activation(cut)))
    net = mbp.MLP((4, 6, 3), "tanh", "softmax", "cross_entropy")
    p = params_for(net, rng, jnp.float32)
    X, Y = jnp.asarray(rng.standard_normal((6, 4)), jnp.float32), jnp.asarray(rng.integers(0, 3, 6))

    def not_scaled(net, key, z, a, y, samples):
        return CURVATURE.sampled_factor(net, key, z, a, y, samples) * jnp.sqrt(samples)

    def empirical(net, key, z, a, y, samples):  # the true label, not a draw from the model
        return jnp.repeat(((jax.nn.softmax(z) - y) / jnp.sqrt(samples))[:, None], samples, axis=1)

    for name, sampler in (
        ("MC without 1/√samples", not_scaled),
        ("MC at the true label", empirical),
    ):
        eqs = CURVATURE._replace(sampled_factor=sampler)
        out.append((name, lambda eqs=eqs: verify_curvature(net, p, X, Y, equations=eqs)))
    return out
