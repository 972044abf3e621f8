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

import jax

from manualbp._entry import entry_point
from manualbp.backprop import (
    backward,
    bias_grad_sum,
    delta_L_batch,
    gradient_steps,
    hidden_delta_batch,
    sigma_prime,
    weight_grad_sum,
)
from manualbp.extensions._curvature_checks import (
    check_direction,
    key_check,
    quantity_checks,
    samples_check,
)
from manualbp.extensions.curvature_equations import CURVATURE, logits_are_f
from manualbp.network import MLP, Forward, Params, forward_pass_batch

Array = jax.Array

__all__ = ["diag_ggn", "diag_ggn_mc", "ggn_vp", "hvp", "kfac", "kflr", "diag_hessian"]


# --- the composed quantities (rows are examples; params[k] is layer l = k + 2) -------


def _per_example(net, fn, *arrays):
    return jax.vmap(lambda *row: fn(net, *row))(*arrays)


def backprop_factor(net, params, fwd, S_L, per_layer, eqs=CURVATURE) -> tuple:
    """S^l for l = L..2 by (13) from S^L, and ``per_layer(S^l, A^{l-1})`` of each."""

    def hidden(S_next, W_next, sigma_prime_z, k):
        return eqs.hidden_factor(S_next, W_next, sigma_prime_z)

    def layer(S, a_prev, k):
        return per_layer(S, a_prev)

    return backward(net, params, fwd, S_L, hidden, layer)[0]


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
    return backprop_factor(net, params, fwd, S_L, eqs.ggn_diag, eqs)


def kron_layers(net, params, X, Y, eqs=CURVATURE, *, key=None) -> tuple:
    """(A, G) of (15) per layer; with ``key``, G from one sampled column per example."""
    fwd = forward_pass_batch(net, params, X)
    if key is None:
        S_L = ggn_factor_L(net, fwd, Y, eqs)
    else:
        S_L = sampled_factor_L(net, fwd, Y, key, 1, eqs)
    return backprop_factor(net, params, fwd, S_L, eqs.kron_factors, eqs)


def diag_hessian_layers(net, params, X, Y, eqs=CURVATURE) -> Params:
    """diag ∇²Ē by (17): H^L, then H^l from H^{l+1} and the example's own δ^{l+1}."""
    fwd = forward_pass_batch(net, params, X)
    H_L = _per_example(net, eqs.output_hessian, fwd.z[-1], fwd.a[-1], Y)
    delta_L = delta_L_batch(net, fwd.z[-1], fwd.a[-1], Y)

    def hidden(carried, W_next, sigma_prime_z, k):  # (H^{l+1}, Δ^{l+1}) -> (H^l, Δ^l)
        H_next, delta_next = carried
        sigma_second_z = net.activations[k - 1].deriv2(fwd.z[k])
        H = eqs.hidden_hessian(H_next, delta_next, W_next, sigma_prime_z, sigma_second_z)
        return H, hidden_delta_batch(delta_next, W_next, sigma_prime_z)

    def layer(carried, a_prev, k):
        return eqs.hessian_diag(carried[0], a_prev)

    return backward(net, params, fwd, (H_L, delta_L), hidden, layer)[0]


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
    delta_L = delta_L_batch(net, fwd.z[-1], fwd.a[-1], Y) / B
    Rdelta_L = _per_example(net, eqs.r_output_delta, fwd.z[-1], fwd.a[-1], Y, R.z[-1]) / B

    def hidden(carried, W_next, sigma_prime_z, k):  # (R{Δ^{l+1}}, Δ^{l+1}) -> (R{Δ^l}, Δ^l)
        Rdelta_next, delta_next = carried
        sigma_second_z = net.activations[k - 1].deriv2(fwd.z[k])
        Rdelta = eqs.r_hidden_delta(
            Rdelta_next, delta_next, W_next, v[k].W, sigma_prime_z, sigma_second_z, R.z[k]
        )
        return Rdelta, hidden_delta_batch(delta_next, W_next, sigma_prime_z)

    def layer(carried, a_prev, k):
        Rdelta, delta = carried
        return eqs.r_grad(Rdelta, delta, a_prev, R.a[k])

    return backward(net, params, fwd, (Rdelta_L, delta_L), hidden, layer)[0]


def ggn_vp_layers(net, params, X, Y, v, eqs=CURVATURE) -> Params:
    """G v: R{f} = J v by (18), u = H R{f} / B by (11), then Jᵀ u by (12), (1)–(3)."""
    B = X.shape[0]
    fwd = forward_pass_batch(net, params, X)
    Rz_L = r_forward_pass(net, params, fwd, v, eqs).z[-1]
    Rf = Rz_L if logits_are_f(net) else _output_jvp(net, fwd.z[-1], Rz_L)
    u = _per_example(net, eqs.loss_hessian_dot, fwd.z[-1], fwd.a[-1], Y, Rf) / B
    delta_L = _per_example(net, eqs.output_factor, fwd.z[-1], u[:, :, None])[:, :, 0]
    steps = gradient_steps(hidden_delta_batch, weight_grad_sum, bias_grad_sum)
    return backward(net, params, fwd, delta_L, *steps)[0]


def _output_jvp(net: MLP, Z_L: Array, Rz_L: Array) -> Array:
    """R{ŷ} = (∂ŷ/∂z^L) R{z^L}: σ' ⊙ R{z^L}, or J_σ R{z^L} row by row."""
    sigma = net.output
    if sigma.elementwise:
        return sigma.deriv(Z_L) * Rz_L
    return jax.vmap(lambda z, r: sigma.deriv(z) @ r)(Z_L, Rz_L)


# --- the public functions, each built by _entry.entry_point ---------------------------


def _diag_ggn_mc_math(net, params, X, Y, key, samples):
    return diag_ggn_layers(net, params, X, Y, key=key, samples=samples)


def _kfac_math(net, params, X, Y, key):
    return kron_layers(net, params, X, Y, key=key)


def _like_weights(factors, params):
    """Each layer's (A, G) in the dtype of its W."""
    return tuple(
        (A.astype(layer.W.dtype), G.astype(layer.W.dtype))
        for (A, G), layer in zip(factors, params, strict=True)
    )


_diag_ggn = entry_point(diag_ggn_layers, quantity_checks("diag_ggn", factor=True))
_diag_ggn_mc = entry_point(
    _diag_ggn_mc_math,
    quantity_checks("diag_ggn_mc", key_check, samples_check, factor=True),
    static=(1,),
)
_kflr = entry_point(kron_layers, quantity_checks("kflr", factor=True), back=_like_weights)
_kfac = entry_point(_kfac_math, quantity_checks("kfac", key_check, factor=True), back=_like_weights)
_diag_hessian = entry_point(diag_hessian_layers, quantity_checks("diag_hessian", second=True))
_hvp = entry_point(hvp_layers, quantity_checks("hvp", check_direction, second=True))
_ggn_vp = entry_point(ggn_vp_layers, quantity_checks("ggn_vp", check_direction, factor=True))


def diag_ggn(net: MLP, params: Params, X: Array, Y: Array) -> Params:
    """The diagonal of G = (1/B) Σ_b J_bᵀ H_b J_b, exactly, by equations (11)–(14).

    Returns:
        `Layer`s shaped like params.
    """
    return _diag_ggn(net, params, X, Y)


def diag_ggn_mc(
    net: MLP, params: Params, X: Array, Y: Array, *, key: Array, samples: int = 1
) -> Params:
    """An unbiased Monte Carlo estimate of `diag_ggn` from sampled targets, eq. (16).

    Args:
        key: a `jax.random` key.
        samples: targets drawn per example.
    """
    return _diag_ggn_mc(net, params, X, Y, key, samples)


def kflr(net: MLP, params: Params, X: Array, Y: Array) -> tuple[tuple[Array, Array], ...]:
    """Per layer l = 2..L the Kronecker factors (A, G) of eq. (15).

    A = (1/B) Σ_b a^{l-1}_b (a^{l-1}_b)ᵀ (N_{l-1} × N_{l-1}) and
    G = (1/B) Σ_b (∂f_b/∂z^l_b)ᵀ H_b (∂f_b/∂z^l_b) (N_l × N_l). For B = 1,
    ``jnp.kron(G, A)`` is the GGN block of W^l flattened row-major.
    """
    return _kflr(net, params, X, Y)


def kfac(net: MLP, params: Params, X: Array, Y: Array, *, key: Array) -> tuple:
    """`kflr`'s (A, G) with G estimated from one sampled target per example, eq. (16)."""
    return _kfac(net, params, X, Y, key)


def diag_hessian(net: MLP, params: Params, X: Array, Y: Array) -> Params:
    """The exact diagonal of ∇²Ē, σ'' terms included, by equation (17)."""
    return _diag_hessian(net, params, X, Y)


def hvp(net: MLP, params: Params, X: Array, Y: Array, v: Params) -> Params:
    """∇²Ē · v by Pearlmutter's R-operator, equations (18), (19); v shaped like params."""
    return _hvp(net, params, X, Y, v)


def ggn_vp(net: MLP, params: Params, X: Array, Y: Array, v: Params) -> Params:
    """G · v = (1/B) Σ_b J_bᵀ H_b J_b v, by (18), (11) and (1)–(3); v shaped like params."""
    return _ggn_vp(net, params, X, Y, v)
