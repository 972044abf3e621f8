"""Curvature rows for the loss Hessian and the GGN, equations (11)–(16): by step and end to end.

Teacher-forced: each step is given the reference's own inputs (S^{l+1} from
`jax.jacrev`), so a wrong step fails at its own equation and layer. End to
end: `diag_ggn`, `kflr`, the Monte Carlo `diag_ggn_mc` and `kfac` (with the
very same sampled targets), and G ⊗ A against the GGN block for one example.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from manualbp import autodiff
from manualbp.extensions import curvature as C
from manualbp.extensions.curvature_equations import logits_are_f
from manualbp.verification.curvature_references import (
    MC_SAMPLES,
    ggn_terms,
    layer_rows,
    pair,
    times_terms,
)


def block_rows(ref, eqs) -> list:
    net, L = ref.net, ref.net.L
    S_f = jax.vmap(lambda z, a, y: eqs.loss_factor(net, z, a, y))(ref.z[-1], ref.a[-1], ref.Y)
    H_f = jax.vmap(lambda z, a, y: eqs.loss_hessian(net, z, a, y))(ref.z[-1], ref.a[-1], ref.Y)
    r = ref.Rz[-1]  # any direction will do; this one is at hand
    H_f_r = jax.vmap(lambda z, a, y, r: eqs.loss_hessian_dot(net, z, a, y, r))(
        ref.z[-1], ref.a[-1], ref.Y, r
    )
    M = ref.H_terms
    rows = [
        pair("H_f", 11, L, H_f, ref.H_f, M),
        pair("S_f S_fᵀ", 11, L, jnp.einsum("bic,bjc->bij", S_f, S_f), ref.H_f, M),
        pair("H_f r", 11, L, H_f_r, jnp.einsum("bij,bj->bi", ref.H_f, r), times_terms(M, r)),
    ]
    for k, sigma in enumerate(net.activations):
        needed = k < len(ref.p) - 1 or not logits_are_f(net)
        if not needed or sigma.deriv2 is None:
            continue
        z = ref.z[k + 1]
        if sigma.elementwise:
            sp = autodiff.elementwise_derivative(sigma.fn, z)
            reference = autodiff.elementwise_derivative(sigma.deriv, z)
            rows.append(pair("σ''", None, k + 2, sigma.deriv2(z), reference, abs(sp)))
        else:
            actual = jax.vmap(sigma.deriv2)(z)
            reference = autodiff.jacobian(sigma.deriv, z)
            rows.append(pair("T_σ", None, k + 2, actual, reference))
    return rows


def ggn_rows(ref, eqs, key) -> list:
    net, p, n = ref.net, ref.p, len(ref.p)
    S_f = jax.vmap(lambda z, a, y: eqs.loss_factor(net, z, a, y))(ref.z[-1], ref.a[-1], ref.Y)
    S_ref = [ref.factor(k, S_f) for k in range(n)]
    S_L = jax.vmap(lambda z, M: eqs.output_factor(net, z, M))(ref.z[-1], S_f)
    rows = [pair("S^L", 12, net.L, S_L, S_ref[-1])]
    for k in range(n - 1):
        S = eqs.hidden_factor(S_ref[k + 1], p[k + 1].W, ref.sigma_prime[k])
        rows.append(pair("S^l", 13, k + 2, S, S_ref[k]))
    # (14), (15) given S^l = J_lᵀ S_f: their references take H = S_f S_fᵀ, the same S_f.
    SS = jnp.einsum("bic,bjc->bij", S_f, S_f)
    terms = [ref.ggn_diag_terms(k) for k in range(n)]
    for k in range(n):
        step = eqs.ggn_diag(S_ref[k], ref.a[k])
        rows += layer_rows("diag G", 14, k, step, ref.ggn_diag(k, SS), size=terms[k])
        A, G = eqs.kron_factors(S_ref[k], ref.a[k])
        A_ref = jnp.einsum("bj,bi->ji", ref.a[k], ref.a[k]) / ref.B
        G_ref = jnp.einsum("bik,bij,bjm->km", ref.J[k], SS, ref.J[k]) / ref.B
        G_size = ggn_terms(ref.J[k], ref.H_terms, ref.B)
        rows += [pair("A", 15, k + 2, A, A_ref), pair("G", 15, k + 2, G, G_ref, G_size)]
    # End to end: the composed quantities, against autodiff's own H_f.
    diag = C.diag_ggn_layers(net, p, ref.X, ref.Y, eqs)
    for k in range(n):
        rows += layer_rows(
            "diag_ggn vs autodiff", None, k, diag[k], ref.ggn_diag(k), net.L - 1, terms[k]
        )
    rows += kron_rows(ref, eqs)
    rows += sampled_rows(ref, eqs, key)
    return rows


def kron_rows(ref, eqs) -> list:
    """kflr per layer, and G ⊗ A against the GGN block of W^l for the first example."""
    net, p, depth = ref.net, ref.p, ref.net.L - 1
    factors = C.kron_layers(net, p, ref.X, ref.Y, eqs)
    single = C.kron_layers(net, p, ref.X[:1], ref.Y[:1], eqs)
    rows = []
    for k, ((A, G), (A1, G1)) in enumerate(zip(factors, single, strict=True)):
        G_ref = jnp.einsum("bik,bij,bjm->km", ref.J[k], ref.H_f, ref.J[k]) / ref.B
        A_ref = jnp.einsum("bj,bi->ji", ref.a[k], ref.a[k]) / ref.B
        J_W = ref.J_theta[k].W[0].reshape(net.sizes[-1], -1)
        block = J_W.T @ ref.H_f[0] @ J_W
        G_size = ggn_terms(ref.J[k], ref.H_terms, ref.B)
        G1_size = ggn_terms(ref.J[k][:1], ref.H_terms[:1], 1)
        # A product of two rounded factors carries the rounding of both: twice the depth
        # (T8), on the scale of the product of the factors' terms.
        kron_size = jnp.kron(G1_size, jnp.abs(A1))
        rows += [
            pair("kflr A vs autodiff", None, k + 2, A, A_ref, depth=depth),
            pair("kflr G vs autodiff", None, k + 2, G, G_ref, G_size, depth),
            pair(
                "G ⊗ A vs GGN block (B = 1)",
                None,
                k + 2,
                jnp.kron(G1, A1),
                block,
                kron_size,
                2 * depth,
            ),
        ]
    return rows


def sampled_rows(ref, eqs, key) -> list:
    """diag_ggn_mc and kfac against autodiff with the very same sampled targets."""
    net, p, n, depth = ref.net, ref.p, len(ref.p), ref.net.L - 1
    rows = []
    for samples in (MC_SAMPLES, 1):
        S_f = ref.drawn[samples]
        H = jnp.einsum("bic,bjc->bij", S_f, S_f)  # its own s̃ s̃ᵀ, for the same J
        if samples == MC_SAMPLES:
            diag = C.diag_ggn_layers(net, p, ref.X, ref.Y, eqs, key=key, samples=samples)
            for k in range(n):
                rows += layer_rows(
                    "diag_ggn_mc vs autodiff", None, k, diag[k], ref.ggn_diag(k, H), depth
                )
        else:
            factors = C.kron_layers(net, p, ref.X, ref.Y, eqs, key=key)
            for k, (_, G) in enumerate(factors):
                G_ref = jnp.einsum("bik,bij,bjm->km", ref.J[k], H, ref.J[k]) / ref.B
                rows.append(pair("kfac G vs autodiff", None, k + 2, G, G_ref, depth=depth))
    return rows
