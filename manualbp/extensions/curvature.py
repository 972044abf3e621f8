"""Curvature by hand: the GGN's diagonal and Kronecker factors, the Hessian's diagonal,
and Hessian- and GGN-vector products, for the batch-mean Ē = (1/B) Σ_b E_b.

Definitions (docs/derivation.md, equations (10)–(19)): f_b is the loss's input,
z^L for a fused pair used fused, ŷ = a^L otherwise; H_b = ∂²E_b/∂f_b²;
J_b = ∂f_b/∂θ; G = (1/B) Σ_b J_bᵀ H_b J_b.

* `diag_ggn`: backpropagate a factor S_b (H_b = S_b S_bᵀ) by (12), (13); (14).
* `diag_ggn_mc`, `kfac`: the same with sampled factors (16), unbiased.
* `kflr`: per layer (A, G) of (15); for B = 1, G ⊗ A is the GGN block of W^l
  flattened row-major.
* `diag_hessian`: backpropagate the Hessian H^l = ∂²E_b/∂z^l² with its σ''
  terms (17).
* `hvp`: Pearlmutter's R-operator, forward (18), backward (19).
* `ggn_vp`: G v: R{f} by (18), times H, back through (1)–(3).

The composed quantities (`diag_ggn_layers`, ...) take a `CurvatureEquations`
so that a derivation of one's own can be checked; the public functions
validate their inputs and call jitted programs with the net static. Nothing
here calls autodiff.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from manualbp import validation
from manualbp.backprop import (
    bias_grad_sum,
    delta_L_batch,
    hidden_delta_batch,
    sigma_prime,
    weight_grad_sum,
)
from manualbp.extensions.curvature_equations import CURVATURE, logits_are_f
from manualbp.gradients import in_compute_dtype, like_params
from manualbp.network import MLP, Forward, Layer, Params, forward_pass_batch

Array = jax.Array

__all__ = ["diag_ggn", "diag_ggn_mc", "ggn_vp", "hvp", "kfac", "kflr", "diag_hessian"]


# --- the composed quantities (rows are examples; params[k] is layer l = k + 2) -------


def _per_example(net, fn, *arrays):
    return jax.vmap(lambda *row: fn(net, *row))(*arrays)


def backprop_factor(net, params, fwd, S_L, per_layer, eqs=CURVATURE) -> list:
    """S^l for l = L..2 by (13) from S^L, and ``per_layer(S^l, A^{l-1})`` of each."""
    S, out = S_L, [None] * len(params)
    for k in reversed(range(len(params))):  # params[k] is layer l = k + 2
        out[k] = per_layer(S, fwd.a[k])
        if k > 0:
            sp = sigma_prime(net.activations[k - 1], fwd.z[k], fwd.a[k])
            S = eqs.hidden_factor(S, params[k].W, sp)
    return out


def ggn_factor_L(net, fwd, Y, eqs=CURVATURE) -> Array:
    """S^L of every example by (11), (12): (B, N_L, N_L)."""
    S_f = _per_example(net, eqs.loss_factor, fwd.z[-1], fwd.a[-1], Y)
    return _per_example(net, eqs.output_factor, fwd.z[-1], S_f)


def sampled_factor_L(net, fwd, Y, key, samples, eqs=CURVATURE) -> Array:
    """S̃^L of every example by (16), (12): (B, N_L, samples), one key per example."""
    keys = jax.random.split(key, Y.shape[0])
    S_f = jax.vmap(lambda k, z, a, y: eqs.sampled_factor(net, k, z, a, y, samples))(
        keys, fwd.z[-1], fwd.a[-1], Y
    )
    return _per_example(net, eqs.output_factor, fwd.z[-1], S_f)


def diag_ggn_layers(net, params, X, Y, eqs=CURVATURE, *, key=None, samples=0) -> Params:
    """diag G by (11)–(14); with ``key``, its Monte Carlo estimate by (16)."""
    fwd = forward_pass_batch(net, params, X)
    if key is None:
        S_L = ggn_factor_L(net, fwd, Y, eqs)
    else:
        S_L = sampled_factor_L(net, fwd, Y, key, samples, eqs)
    return tuple(backprop_factor(net, params, fwd, S_L, eqs.ggn_diag, eqs))


def kron_layers(net, params, X, Y, eqs=CURVATURE, *, key=None) -> tuple:
    """(A, G) of (15) per layer; with ``key``, G from one sampled column per example."""
    fwd = forward_pass_batch(net, params, X)
    if key is None:
        S_L = ggn_factor_L(net, fwd, Y, eqs)
    else:
        S_L = sampled_factor_L(net, fwd, Y, key, 1, eqs)
    factors = backprop_factor(net, params, fwd, S_L, eqs.kron_factors, eqs)
    return tuple(factors)


def diag_hessian_layers(net, params, X, Y, eqs=CURVATURE) -> Params:
    """diag ∇²Ē by (17): H^L, then H^l from H^{l+1} and the example's own δ^{l+1}."""
    fwd = forward_pass_batch(net, params, X)
    H = _per_example(net, eqs.output_hessian, fwd.z[-1], fwd.a[-1], Y)
    delta = delta_L_batch(net, fwd.z[-1], fwd.a[-1], Y)
    out = [None] * len(params)
    for k in reversed(range(len(params))):  # params[k] is layer l = k + 2
        out[k] = eqs.hessian_diag(H, fwd.a[k])
        if k > 0:
            sigma, W = net.activations[k - 1], params[k].W
            sp = sigma_prime(sigma, fwd.z[k], fwd.a[k])
            H = eqs.hidden_hessian(H, delta, W, sp, sigma.deriv2(fwd.z[k]))
            delta = hidden_delta_batch(delta, W, sp)
    return tuple(out)


def r_forward_pass(net, params, fwd, v, eqs=CURVATURE) -> Forward:
    """R{z^l} and R{a^l} for l = 1..L by (18), aligned by layer as `Forward` is.

    R{z^1} is None and R{a^1} = R{x} = 0 is None; R{a^L} is not needed and not formed (None).
    """
    Rz, Ra = [None], [None]
    for k, (W, _) in enumerate(params):  # params[k] is layer l = k + 2
        Rz.append(eqs.r_forward(Ra[k], fwd.a[k], W, v[k]))
        last = k == len(params) - 1
        Ra.append(
            None if last else sigma_prime(net.activations[k], fwd.z[k + 1], fwd.a[k + 1]) * Rz[-1]
        )
    return Forward(tuple(Rz), tuple(Ra))


def hvp_layers(net, params, X, Y, v, eqs=CURVATURE) -> Params:
    """∇²Ē v by the R-operator: (18) forward, (19) backward, with 1/B applied once to δ^L."""
    B = X.shape[0]
    fwd = forward_pass_batch(net, params, X)
    R = r_forward_pass(net, params, fwd, v, eqs)
    delta = delta_L_batch(net, fwd.z[-1], fwd.a[-1], Y) / B
    Rdelta = _per_example(net, eqs.r_output_delta, fwd.z[-1], fwd.a[-1], Y, R.z[-1]) / B
    out = [None] * len(params)
    for k in reversed(range(len(params))):  # params[k] is layer l = k + 2
        out[k] = eqs.r_grad(Rdelta, delta, fwd.a[k], R.a[k])
        if k > 0:
            sigma, W = net.activations[k - 1], params[k].W
            sp = sigma_prime(sigma, fwd.z[k], fwd.a[k])
            Rdelta = eqs.r_hidden_delta(
                Rdelta, delta, W, v[k].W, sp, sigma.deriv2(fwd.z[k]), R.z[k]
            )
            delta = hidden_delta_batch(delta, W, sp)
    return tuple(out)


def ggn_vp_layers(net, params, X, Y, v, eqs=CURVATURE) -> Params:
    """G v: R{f} = J v by (18), u = H R{f} / B by (11), then Jᵀ u by (12), (1)–(3)."""
    B = X.shape[0]
    fwd = forward_pass_batch(net, params, X)
    Rz_L = r_forward_pass(net, params, fwd, v, eqs).z[-1]
    Rf = Rz_L if logits_are_f(net) else _output_jvp(net, fwd.z[-1], Rz_L)
    u = _per_example(net, eqs.loss_hessian_dot, fwd.z[-1], fwd.a[-1], Y, Rf) / B
    delta = _per_example(net, eqs.output_factor, fwd.z[-1], u[:, :, None])[:, :, 0]
    out = [None] * len(params)
    for k in reversed(range(len(params))):  # params[k] is layer l = k + 2
        out[k] = Layer(W=weight_grad_sum(delta, fwd.a[k]), b=bias_grad_sum(delta))
        if k > 0:
            sp = sigma_prime(net.activations[k - 1], fwd.z[k], fwd.a[k])
            delta = hidden_delta_batch(delta, params[k].W, sp)
    return tuple(out)


def _output_jvp(net: MLP, Z_L: Array, Rz_L: Array) -> Array:
    """R{ŷ} = (∂ŷ/∂z^L) R{z^L}: σ' ⊙ R{z^L}, or J_σ R{z^L} row by row."""
    sigma = net.output
    if sigma.elementwise:
        return sigma.deriv(Z_L) * Rz_L
    return jax.vmap(lambda z, r: sigma.deriv(z) @ r)(Z_L, Rz_L)


# --- jitted programs, the net static ---------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _diag_ggn(net, params, X, Y):
    return like_params(diag_ggn_layers(net, *in_compute_dtype(net, params, X, Y)), params)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _diag_ggn_mc(net, params, X, Y, key, samples):
    p, X, Y = in_compute_dtype(net, params, X, Y)
    return like_params(diag_ggn_layers(net, p, X, Y, key=key, samples=samples), params)


@functools.partial(jax.jit, static_argnums=0)
def _kron(net, params, X, Y, key):
    factors = kron_layers(net, *in_compute_dtype(net, params, X, Y), key=key)
    return tuple(
        (A.astype(layer.W.dtype), G.astype(layer.W.dtype))
        for (A, G), layer in zip(factors, params, strict=True)
    )


@functools.partial(jax.jit, static_argnums=0)
def _diag_hessian(net, params, X, Y):
    return like_params(diag_hessian_layers(net, *in_compute_dtype(net, params, X, Y)), params)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _vector_product(net, params, X, Y, v, which):
    p, X, Y = in_compute_dtype(net, params, X, Y)
    v = jax.tree.map(lambda t, q: t.astype(q.dtype), v, p)
    product = hvp_layers if which == "hvp" else ggn_vp_layers
    return like_params(product(net, p, X, Y, v), params)


# --- the public functions --------------------------------------------------------------


def diag_ggn(net: MLP, params: Params, X: Array, Y: Array) -> Params:
    """The diagonal of G = (1/B) Σ_b J_bᵀ H_b J_b, exactly, by equations (11)–(14).

    Returns:
        `Layer`s shaped like params.
    """
    _check(net, params, X, Y, "diag_ggn", factor=True)
    return _diag_ggn(net, params, X, Y)


def diag_ggn_mc(
    net: MLP, params: Params, X: Array, Y: Array, *, key: Array, samples: int = 1
) -> Params:
    """An unbiased Monte Carlo estimate of `diag_ggn` from sampled targets, eq. (16).

    Args:
        key: a `jax.random` key.
        samples: targets drawn per example.
    """
    _check(net, params, X, Y, "diag_ggn_mc", factor=True)
    validation.check_key(key)
    _check_samples(samples)
    return _diag_ggn_mc(net, params, X, Y, key, samples)


def kflr(net: MLP, params: Params, X: Array, Y: Array) -> tuple[tuple[Array, Array], ...]:
    """Per layer l = 2..L the Kronecker factors (A, G) of eq. (15).

    A = (1/B) Σ_b a^{l-1}_b (a^{l-1}_b)ᵀ (N_{l-1} × N_{l-1}) and
    G = (1/B) Σ_b (∂f_b/∂z^l_b)ᵀ H_b (∂f_b/∂z^l_b) (N_l × N_l). For B = 1,
    ``jnp.kron(G, A)`` is the GGN block of W^l flattened row-major.
    """
    _check(net, params, X, Y, "kflr", factor=True)
    return _kron(net, params, X, Y, None)


def kfac(net: MLP, params: Params, X: Array, Y: Array, *, key: Array) -> tuple:
    """`kflr`'s (A, G) with G estimated from one sampled target per example, eq. (16)."""
    _check(net, params, X, Y, "kfac", factor=True)
    validation.check_key(key)
    return _kron(net, params, X, Y, key)


def diag_hessian(net: MLP, params: Params, X: Array, Y: Array) -> Params:
    """The exact diagonal of ∇²Ē, σ'' terms included, by equation (17)."""
    _check(net, params, X, Y, "diag_hessian", second=True)
    return _diag_hessian(net, params, X, Y)


def hvp(net: MLP, params: Params, X: Array, Y: Array, v: Params) -> Params:
    """∇²Ē · v by Pearlmutter's R-operator, equations (18), (19); v shaped like params."""
    _check(net, params, X, Y, "hvp", second=True)
    _check_direction(net, params, v)
    return _vector_product(net, params, X, Y, v, "hvp")


def ggn_vp(net: MLP, params: Params, X: Array, Y: Array, v: Params) -> Params:
    """G · v = (1/B) Σ_b J_bᵀ H_b J_b v, by (18), (11) and (1)–(3); v shaped like params."""
    _check(net, params, X, Y, "ggn_vp", factor=True)
    _check_direction(net, params, v)
    return _vector_product(net, params, X, Y, v, "ggn_vp")


# --- input checks ------------------------------------------------------------------------


def _check(net, params, X, Y, name: str, *, factor=False, second=False) -> None:
    """The batch, and the second derivatives this quantity needs from the net's records."""
    validation.check_batch(net, params, X, Y)
    record = net.fused_loss if logits_are_f(net) else net.loss
    what = "the fused pair" if logits_are_f(net) else f"loss {net.loss.name!r}"
    if record.hessian is None or (factor and record.hessian_factor is None):
        raise ValueError(
            f"{name}: {what} has no hand-derived Hessian"
            + (" and factor S (hessian_factor)" if factor else "")
            + "; give the Loss its hessian and hessian_factor"
        )
    if second:
        needs = net.hidden if logits_are_f(net) else net.activations
        for k, sigma in enumerate(needs):
            if sigma.deriv2 is None:
                raise ValueError(
                    f"{name}: activation {sigma.name!r} (layer l={k + 2}) has no σ'' "
                    "(Activation.deriv2)"
                )


def _check_samples(samples) -> None:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples: expected a positive integer, got {samples!r}")


def _check_direction(net: MLP, params: Params, v) -> None:
    """v must be a tuple of `Layer`s with the shapes of params and floating dtypes."""
    if not isinstance(v, tuple) or len(v) != len(params):
        raise ValueError(
            f"v: expected a tuple of {len(params)} mbp.Layer(W, b) shaped like params, "
            f"got {type(v).__name__}"
            + (f" of length {len(v)}" if isinstance(v, (tuple, list)) else "")
        )
    for k, (layer, p) in enumerate(zip(v, params, strict=True)):
        if not isinstance(layer, Layer):
            raise TypeError(f"v[{k}] (layer l={k + 2}): expected an mbp.Layer(W, b)")
        for name in ("W", "b"):
            x, ref = getattr(layer, name), getattr(p, name)
            shape = getattr(x, "shape", None)
            if shape is None or tuple(shape) != tuple(ref.shape):
                raise ValueError(
                    f"v[{k}].{name} (layer l={k + 2}): expected shape {tuple(ref.shape)}, "
                    f"got {shape}"
                )
            if not jnp.issubdtype(x.dtype, jnp.floating):
                raise TypeError(f"v[{k}].{name}: expected a floating dtype, got {x.dtype}")
