"""Curvature rows for the Hessian and the R-operator: equations (17)–(19), hvp and ggn_vp.

(17) H^l and diag ∇²E step by step and `diag_hessian` end to end; (18) R{z^l},
(19) R{δ^l} and R{∂E/∂θ} step by step, `hvp` and `ggn_vp` end to end. The
rows that need σ'' are left out, by `verify_curvature`, for a net that has none.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from manualbp.extensions import curvature as C
from manualbp.network import Layer
from manualbp.verification.curvature_references import (
    ggn_vp_terms,
    hessian_terms,
    layer_rows,
    pair,
    r_delta_terms,
)


def hessian_rows(ref, eqs) -> list:
    net, p, n = ref.net, ref.p, len(ref.p)
    M = hessian_terms(ref)
    H_L = jax.vmap(lambda z, a, y: eqs.output_hessian(net, z, a, y))(ref.z[-1], ref.a[-1], ref.Y)
    rows = [pair("H^L", 17, net.L, H_L, ref.Hz[-1], M[-1])]
    for k in range(n - 1):
        H = eqs.hidden_hessian(
            ref.Hz[k + 1], ref.deltas[k + 1], p[k + 1].W, ref.sigma_prime[k], ref.sigma_second[k]
        )
        rows.append(pair("H^l", 17, k + 2, H, ref.Hz[k], M[k]))
    diag_ref = [ref.hessian_diag(k) for k in range(n)]
    diag = C.diag_hessian_layers(net, p, ref.X, ref.Y, eqs)
    for k in range(n):
        step = eqs.hessian_diag(ref.Hz[k], ref.a[k])
        d = jnp.diagonal(M[k], axis1=1, axis2=2)
        m = Layer(jnp.einsum("bk,bj->kj", d, ref.a[k] ** 2) / ref.B, jnp.mean(d, axis=0))
        for field in ("W", "b"):
            actual, reference, size = (getattr(t, field) for t in (step, diag_ref[k], m))
            rows += [
                pair(f"diag ∇²E {field}", 17, k + 2, actual, reference, size),
                pair(
                    f"diag_hessian vs autodiff {field}",
                    None,
                    k + 2,
                    getattr(diag[k], field),
                    reference,
                    size,
                    net.L - 1,
                ),
            ]
    return rows


def r_rows(ref, eqs, second=True) -> list:
    """(18), (19), hvp and ggn_vp; without σ'' (``second`` False) only those that need none."""
    net, p, v, n = ref.net, ref.p, ref.v, len(ref.p)
    rows = []
    Ras = [None, *ref.Ra[1:]]  # R{a^1} = R{x} = 0, passed as None as the composition does
    for k in range(n):
        Rz = eqs.r_forward(Ras[k], ref.a[k], p[k].W, v[k])
        rows.append(pair("R{z^l}", 18, k + 2, Rz, ref.Rz[k + 1]))
    if second:
        rows += r_delta_rows(ref, eqs, Ras)
    Fv = jax.jvp(ref.batch_f, (p,), (v,))[1]
    _, pullback = jax.vjp(ref.batch_f, p)
    (gv_ref,) = pullback(jnp.einsum("bij,bj->bi", ref.H_f, Fv) / ref.B)
    gv = C.ggn_vp_layers(net, p, ref.X, ref.Y, v, eqs)
    gv_size = ggn_vp_terms(ref, v)
    for k in range(n):
        rows += layer_rows("ggn_vp vs autodiff", None, k, gv[k], gv_ref[k], net.L - 1, gv_size[k])
    return rows


def r_delta_rows(ref, eqs, Ras) -> list:
    """(19) at every layer, R{∂E/∂θ} and hvp: the rows that need σ''."""
    net, p, v, n = ref.net, ref.p, ref.v, len(ref.p)
    rows = []
    Rdelta_L = jax.vmap(lambda z, a, y, r: eqs.r_output_delta(net, z, a, y, r))(
        ref.z[-1], ref.a[-1], ref.Y, ref.Rz[-1]
    )
    size = r_delta_terms(ref)
    rows.append(pair("R{δ^L}", 19, net.L, Rdelta_L, ref.Rdeltas[-1], size[-1]))
    for k in range(n - 1):
        Rdelta = eqs.r_hidden_delta(
            ref.Rdeltas[k + 1],
            ref.deltas[k + 1],
            p[k + 1].W,
            v[k + 1].W,
            ref.sigma_prime[k],
            ref.sigma_second[k],
            ref.Rz[k + 1],
        )
        rows.append(pair("R{δ^l}", 19, k + 2, Rdelta, ref.Rdeltas[k], size[k]))
    grad_size = [
        Layer(
            (size[k].T @ jnp.abs(ref.a[k]) + jnp.abs(ref.deltas[k]).T @ jnp.abs(Ra)) / ref.B,
            jnp.mean(size[k], axis=0),
        )
        for k, Ra in enumerate([jnp.zeros_like(ref.a[0]), *ref.Ra[1:-1]])
    ]
    for k in range(n):
        step = eqs.r_grad(ref.Rdeltas[k], ref.deltas[k], ref.a[k], Ras[k])
        step = jax.tree.map(lambda t: t / ref.B, step)
        rows += layer_rows("R{∂E/∂θ}", 19, k, step, ref.hvp[k], size=grad_size[k])
    hv = C.hvp_layers(net, p, ref.X, ref.Y, v, eqs)
    for k in range(n):
        rows += layer_rows("hvp vs autodiff", None, k, hv[k], ref.hvp[k], net.L - 1, grad_size[k])
    return rows
