"""Verification of the curvature quantities: rows per equation and layer against autodiff.

Every quantity of equations (10)–(19) is checked two ways, in the derivation's
layer numbering (l = 2..L), as `verify` checks (1)–(4):

* Teacher-forced steps. Each equation is given exactly the inputs the
  reference computes (S^{l+1} = (∂f/∂z^{l+1})ᵀ S_f from `jax.jacrev`, the
  Hessian H^{l+1} = ∂²E/∂z^{l+1}² from `jax.hessian`, R{δ^{l+1}} and R{z^l}
  from `jax.jvp`, σ' and σ'' from forward mode), and its output is compared
  with the reference's at that layer. A wrong step fails at its own equation
  and layer, and not at every layer below it. At the output, (17) and (19)
  start from z^L, ŷ and y and use the net's own σ^L derivatives and loss
  record, so a wrong σ^L'' fails there as well as in its own σ'' row.
* End to end. The composed quantities (`diag_ggn`, its Monte Carlo estimate
  with the same sampled targets, `kflr`, `kfac`, `diag_hessian`, `hvp`,
  `ggn_vp`) against autodiff routes: per-example Jacobians with the loss's
  Hessian, `jax.hessian` of Ē per parameter array (small nets), `jax.jvp`
  of `jax.grad`, and J v, H, Jᵀ composed. For B = 1 the KFLR factors are
  also checked as G ⊗ A against the GGN block of W^l.

The building blocks come first: H_f, S_f S_fᵀ and the closed-form H_f r
against `jax.hessian` of E in f, and σ'' of every layer that needs it
against autodiff of the hand-derived σ' (as `verify_activation`). Every row
goes through `_agree`, the one place that decides the tolerance.

The verdict is `tolerance.judge`'s: the program that forms every row runs
twice, in the net's dtype (the manual results, and the references as the
witness) and in float64 from the same parameters and batch cast up (the
reference, and the magnitudes). What is drawn at random, the direction v and
the sampled factors s̃ of (16), is drawn once in the net's dtype and cast up,
so that both runs see the same v and the same samples. A float64 net has no
higher precision: its one run is the reference, and there is no witness.
A 2-byte net (bfloat16, float16) is judged the same way, by its own witness.
A teacher-forced step or a building block passes through one layer (d = 1);
an end-to-end quantity through L − 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from manualbp import autodiff, validation
from manualbp._entry import in_compute_dtype
from manualbp.extensions import curvature as C
from manualbp.extensions.curvature_equations import CURVATURE, CurvatureEquations, logits_are_f
from manualbp.network import (
    MLP,
    Layer,
    Params,
    example_loss,
    forward_pass,
    forward_pass_batch,
    mean_loss,
)
from manualbp.parameters import param_dtype
from manualbp.records import environment
from manualbp.verification import witnesses
from manualbp.verification.compare import compare
from manualbp.verification.report import Report, Row

Array = jax.Array

MC_SAMPLES = 2
"""Targets drawn per example for the Monte Carlo rows (the reference uses the same ones)."""


def _agree(label, actual, reference, witness, magnitude, dtype) -> Row:
    """One row: ``actual`` against the float64 ``reference``, judged by ``witness``.

    ``label`` = (check, equation, layer, depth). The one place the curvature
    rows meet the tolerance rule (`tolerance.judge`), so that a change of rule
    is a change here.
    """
    check, equation, layer, depth = label
    return compare(
        check,
        equation,
        layer,
        actual,
        reference,
        witness,
        dtype=dtype,
        depth=depth,
        magnitude=magnitude,
    )


def _pair(check, equation, layer, actual, reference, magnitude=None, depth=1) -> tuple:
    """What one row compares, still as arrays (inside the traced program).

    ``depth``: the layers the value passes through, 1 for a teacher-forced
    step or a building block, L − 1 for an end-to-end quantity.
    """
    return (check, equation, layer, depth), (actual, reference, magnitude)


def verify_curvature(
    net: MLP,
    params: Params,
    X: Array,
    Y: Array,
    *,
    key: Array | None = None,
    equations: CurvatureEquations = CURVATURE,
) -> Report:
    """Check every curvature quantity equation by equation and layer by layer.

    Args:
        net, params, X, Y: the network, its parameters and a (small) batch.
        key: a `jax.random` key for the direction v of the vector products and
            the sampled targets (default ``jax.random.key(0)``).
        equations: the `CurvatureEquations` under test (default: manualbp's).

    Returns:
        A `Report`.
    """
    key = jax.random.key(0) if key is None else key
    rows = curvature_rows(net, params, X, Y, key=key, equations=equations)
    dtype = param_dtype(params)
    meta = {
        "subject": f"curvature of {net!r}",
        "batch": int(X.shape[0]),
        "dtype": str(jnp.dtype(dtype)),
        "reference": witnesses.reference_note(dtype),
        **environment(),
    }
    return Report(tuple(rows), meta)


MAX_ARRAY_SIZE = 2048
"""Most entries of one W^l or b^l: the reference forms its dense Hessian (size² entries)."""
MAX_BATCH = 256
"""Most examples: the reference forms every example's Jacobian with respect to θ."""


def _check_small(net: MLP, batch: int) -> None:
    """Refuse, with a clear error, a net whose dense autodiff references would not fit."""
    largest = max(n_out * n_in for n_in, n_out in zip(net.sizes[:-1], net.sizes[1:], strict=True))
    if largest > MAX_ARRAY_SIZE or batch > MAX_BATCH:
        raise ValueError(
            f"verify_curvature: its autodiff references are dense Hessians and Jacobians, so it "
            f"takes nets whose largest W^l has at most {MAX_ARRAY_SIZE} entries and batches of at "
            f"most {MAX_BATCH}; got {largest} entries (sizes={net.sizes}) and B = {batch}. "
            "Check the derivation on a small net of the same activations and loss"
        )


def curvature_rows(
    net: MLP,
    params: Params,
    X: Array,
    Y: Array,
    *,
    key: Array,
    equations: CurvatureEquations = CURVATURE,
) -> list[Row]:
    """The rows of `verify_curvature`: building blocks, GGN, Hessian, R-operator."""
    validation.check_batch(net, params, X, Y)
    validation.check_finite(X, Y)
    validation.check_key(key)
    _check_small(net, X.shape[0])
    p, X, Y = in_compute_dtype(net, params, X, Y)
    dtype = jnp.dtype(param_dtype(p))
    labels = []

    def arrays(p, X, Y, key, v=None, drawn=None):
        # One traced program for every reference and step: op by op, the many
        # small autodiff transforms spend most of their time compiling. Run
        # first in the net's dtype (v and the samples drawn here), then in
        # float64 with that v and those samples cast up.
        key_v, key_mc = jax.random.split(key)
        if v is None:
            v = jax.tree.map(lambda t: jax.random.normal(key_v, t.shape, t.dtype), p)
        ref = _References(net, p, X, Y, v, equations, key_mc, drawn)
        pairs = (
            _block_rows(ref, equations)
            + _ggn_rows(ref, equations, key_mc)
            + _hessian_rows(ref, equations)
            + _r_rows(ref, equations)
        )
        labels[:] = [label for label, _ in pairs]
        return [values for _, values in pairs], v, ref.drawn

    values, v, drawn = jax.jit(arrays)(p, X, Y, key)
    if dtype == witnesses.REFERENCE_DTYPE:
        # No higher precision: this run is the reference, and there is no witness.
        judged = [(actual, None, reference, magnitude) for actual, reference, magnitude in values]
    else:

        def reference_arrays(p, X, Y, key, v, drawn):
            values, _, _ = arrays(p, X, Y, key, v, drawn)
            return [(reference, magnitude) for _, reference, magnitude in values]

        with jax.enable_x64(True):
            up = jax.tree.map(lambda t: jnp.asarray(np.asarray(t, np.float64)), (p, X, Y, v, drawn))
            references = jax.device_get(jax.jit(reference_arrays)(*up[:3], key, *up[3:]))
        judged = [
            (actual, witness, reference64, magnitude64)
            for (actual, witness, _), (reference64, magnitude64) in zip(
                values, references, strict=True
            )
        ]
    return [
        _agree(label, actual, reference, witness, magnitude, dtype)
        for label, (actual, witness, reference, magnitude) in zip(labels, judged, strict=True)
    ]


class _References:
    """Every autodiff reference the rows need, for one batch and direction v."""

    def __init__(self, net, p, X, Y, v, eqs, key, drawn=None):
        self.net, self.p, self.X, self.Y, self.v = net, p, X, Y, v
        self.B = X.shape[0]
        self.z, self.a = forward_pass_batch(net, p, X)  # aligned by layer: z[k + 1] is z^{k+2}
        self.deltas = autodiff.deltas(net, p, X, Y)
        n = len(p)
        self.J = [jax.vmap(jax.jacrev(self._tail_f(k)))(self.z[k + 1], Y) for k in range(n)]
        self.Hz = [jax.vmap(jax.hessian(self._tail_E(k)))(self.z[k + 1], Y) for k in range(n)]
        f_L = self.z[-1] if logits_are_f(net) else self.a[-1]
        loss_fn = net.fused_loss.fn if logits_are_f(net) else net.loss.fn
        self.H_f = jax.vmap(jax.hessian(loss_fn))(f_L, Y)
        self.sigma_prime = [autodiff.elementwise_derivative(s.fn, z) for s, z in self._hidden()]
        self.sigma_second = [
            autodiff.elementwise_derivative(
                lambda t, s=s: autodiff.elementwise_derivative(s.fn, t), z
            )
            for s, z in self._hidden()
        ]
        # Per-example Jacobians of f in the parameters: leaves (B, N_L, *shape).
        self.J_theta = jax.vmap(jax.jacrev(self._f_of_params), (None, 0))(p, X)
        self.Rz, self.Ra = jax.jvp(lambda q: forward_pass_batch(net, q, X), (p,), (v,))[1]
        self.Rdeltas = jax.jvp(lambda q: autodiff.deltas(net, q, X, Y), (p,), (v,))[1]
        grad = jax.grad(lambda q: mean_loss(net, q, X, Y))
        self.hvp = jax.jvp(grad, (p,), (v,))[1]
        # The sampled factors s̃ of (16), {samples: (B, N_L, samples)}, with the keys
        # the composed quantities use: drawn in the net's dtype, cast up for float64.
        if drawn is None:
            keys = jax.random.split(key, self.B)
            drawn = {
                s: jax.vmap(lambda k_, z, a, y, s=s: eqs.sampled_factor(net, k_, z, a, y, s))(
                    keys, self.z[-1], self.a[-1], Y
                )
                for s in (MC_SAMPLES, 1)
            }
        self.drawn = drawn

    def _hidden(self):
        return zip(self.net.hidden, self.z[1:-1], strict=True)

    def _tail(self, k, z, y):
        """(f, E) of one example as functions of z^{k+2}."""
        net, p = self.net, self.p
        a = net.activations[k].fn(z)
        for j in range(k + 1, len(p)):
            z = p[j].W @ a + p[j].b
            a = net.activations[j].fn(z)
        return (z if logits_are_f(net) else a), example_loss(net, z, a, y)

    def _tail_f(self, k):
        return lambda z, y: self._tail(k, z, y)[0]

    def _tail_E(self, k):
        return lambda z, y: self._tail(k, z, y)[1]

    def _f_of_params(self, q, x):
        fwd = forward_pass(self.net, q, x)
        return fwd.z[-1] if logits_are_f(self.net) else fwd.a[-1]

    def batch_f(self, q):
        fwd = forward_pass_batch(self.net, q, self.X)
        return fwd.z[-1] if logits_are_f(self.net) else fwd.a[-1]

    def factor(self, k, S_f):
        """S^l = (∂f/∂z^l)ᵀ S_f for layer l = k + 2, (B, N_l, C)."""
        return jnp.einsum("bik,bic->bkc", self.J[k], S_f)

    def ggn_diag(self, k, H=None):
        """diag of (1/B) Σ_b J_bᵀ H_b J_b for layer l = k + 2, by per-example Jacobians."""
        H = self.H_f if H is None else H
        out = []
        for J in self.J_theta[k]:
            HJ = jnp.einsum("bij,bj...->bi...", H, J)
            out.append(jnp.sum(J * HJ, axis=(0, 1)) / self.B)
        return Layer(*out)

    def hessian_diag(self, k):
        """diag of ∇²Ē for layer l = k + 2, by `jax.hessian` of Ē in each array."""
        out = []
        for field in ("W", "b"):
            leaf = getattr(self.p[k], field)

            def loss(t, field=field):
                q = list(self.p)
                q[k] = q[k]._replace(**{field: t})
                return mean_loss(self.net, tuple(q), self.X, self.Y)

            H = jax.hessian(loss)(leaf).reshape(leaf.size, leaf.size)
            out.append(jnp.diagonal(H).reshape(leaf.shape))
        return Layer(*out)


def _layer_rows(check, equation, k, actual: Layer, reference: Layer, depth=1) -> list:
    return [
        _pair(f"{check} W", equation, k + 2, actual.W, reference.W, depth=depth),
        _pair(f"{check} b", equation, k + 2, actual.b, reference.b, depth=depth),
    ]


def _block_rows(ref, eqs) -> list:
    net, L = ref.net, ref.net.L
    S_f = jax.vmap(lambda z, a, y: eqs.loss_factor(net, z, a, y))(ref.z[-1], ref.a[-1], ref.Y)
    H_f = jax.vmap(lambda z, a, y: eqs.loss_hessian(net, z, a, y))(ref.z[-1], ref.a[-1], ref.Y)
    r = ref.Rz[-1]  # any direction will do; this one is at hand
    H_f_r = jax.vmap(lambda z, a, y, r: eqs.loss_hessian_dot(net, z, a, y, r))(
        ref.z[-1], ref.a[-1], ref.Y, r
    )
    rows = [
        _pair("H_f", 11, L, H_f, ref.H_f),
        _pair("S_f S_fᵀ", 11, L, jnp.einsum("bic,bjc->bij", S_f, S_f), ref.H_f),
        _pair("H_f r", 11, L, H_f_r, jnp.einsum("bij,bj->bi", ref.H_f, r)),
    ]
    for k, sigma in enumerate(net.activations):
        needed = k < len(ref.p) - 1 or not logits_are_f(net)
        if not needed or sigma.deriv2 is None:
            continue
        z = ref.z[k + 1]
        if sigma.elementwise:
            sp = autodiff.elementwise_derivative(sigma.fn, z)
            reference = autodiff.elementwise_derivative(sigma.deriv, z)
            rows.append(_pair("σ''", None, k + 2, sigma.deriv2(z), reference, abs(sp)))
        else:
            actual = jax.vmap(sigma.deriv2)(z)
            reference = autodiff.jacobian(sigma.deriv, z)
            rows.append(_pair("T_σ", None, k + 2, actual, reference))
    return rows


def _ggn_rows(ref, eqs, key) -> list:
    net, p, n = ref.net, ref.p, len(ref.p)
    S_f = jax.vmap(lambda z, a, y: eqs.loss_factor(net, z, a, y))(ref.z[-1], ref.a[-1], ref.Y)
    S_ref = [ref.factor(k, S_f) for k in range(n)]
    S_L = jax.vmap(lambda z, M: eqs.output_factor(net, z, M))(ref.z[-1], S_f)
    rows = [_pair("S^L", 12, net.L, S_L, S_ref[-1])]
    for k in range(n - 1):
        S = eqs.hidden_factor(S_ref[k + 1], p[k + 1].W, ref.sigma_prime[k])
        rows.append(_pair("S^l", 13, k + 2, S, S_ref[k]))
    # (14), (15) given S^l = J_lᵀ S_f: their references take H = S_f S_fᵀ, the same S_f.
    SS = jnp.einsum("bic,bjc->bij", S_f, S_f)
    for k in range(n):
        step = eqs.ggn_diag(S_ref[k], ref.a[k])
        rows += _layer_rows("diag G", 14, k, step, ref.ggn_diag(k, SS))
        A, G = eqs.kron_factors(S_ref[k], ref.a[k])
        A_ref = jnp.einsum("bj,bi->ji", ref.a[k], ref.a[k]) / ref.B
        G_ref = jnp.einsum("bik,bij,bjm->km", ref.J[k], SS, ref.J[k]) / ref.B
        rows += [_pair("A", 15, k + 2, A, A_ref), _pair("G", 15, k + 2, G, G_ref)]
    # End to end: the composed quantities, against autodiff's own H_f.
    diag = C.diag_ggn_layers(net, p, ref.X, ref.Y, eqs)
    for k in range(n):
        rows += _layer_rows("diag_ggn vs autodiff", None, k, diag[k], ref.ggn_diag(k), net.L - 1)
    rows += _kron_rows(ref, eqs)
    rows += _sampled_rows(ref, eqs, key)
    return rows


def _kron_rows(ref, eqs) -> list:
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
        rows += [
            _pair("kflr A vs autodiff", None, k + 2, A, A_ref, depth=depth),
            _pair("kflr G vs autodiff", None, k + 2, G, G_ref, depth=depth),
            _pair("G ⊗ A vs GGN block (B = 1)", None, k + 2, jnp.kron(G1, A1), block, depth=depth),
        ]
    return rows


def _sampled_rows(ref, eqs, key) -> list:
    """diag_ggn_mc and kfac against autodiff with the very same sampled targets."""
    net, p, n, depth = ref.net, ref.p, len(ref.p), ref.net.L - 1
    rows = []
    for samples in (MC_SAMPLES, 1):
        S_f = ref.drawn[samples]
        H = jnp.einsum("bic,bjc->bij", S_f, S_f)  # its own s̃ s̃ᵀ, for the same J
        if samples == MC_SAMPLES:
            diag = C.diag_ggn_layers(net, p, ref.X, ref.Y, eqs, key=key, samples=samples)
            for k in range(n):
                rows += _layer_rows(
                    "diag_ggn_mc vs autodiff", None, k, diag[k], ref.ggn_diag(k, H), depth
                )
        else:
            factors = C.kron_layers(net, p, ref.X, ref.Y, eqs, key=key)
            for k, (_, G) in enumerate(factors):
                G_ref = jnp.einsum("bik,bij,bjm->km", ref.J[k], H, ref.J[k]) / ref.B
                rows.append(_pair("kfac G vs autodiff", None, k + 2, G, G_ref, depth=depth))
    return rows


def _hessian_rows(ref, eqs) -> list:
    net, p, n = ref.net, ref.p, len(ref.p)
    M = _hessian_magnitudes(ref)
    H_L = jax.vmap(lambda z, a, y: eqs.output_hessian(net, z, a, y))(ref.z[-1], ref.a[-1], ref.Y)
    rows = [_pair("H^L", 17, net.L, H_L, ref.Hz[-1])]
    for k in range(n - 1):
        H = eqs.hidden_hessian(
            ref.Hz[k + 1], ref.deltas[k + 1], p[k + 1].W, ref.sigma_prime[k], ref.sigma_second[k]
        )
        rows.append(_pair("H^l", 17, k + 2, H, ref.Hz[k], M[k]))
    diag_ref = [ref.hessian_diag(k) for k in range(n)]
    diag = C.diag_hessian_layers(net, p, ref.X, ref.Y, eqs)
    for k in range(n):
        step = eqs.hessian_diag(ref.Hz[k], ref.a[k])
        d = jnp.diagonal(M[k], axis1=1, axis2=2)
        m = Layer(jnp.einsum("bk,bj->kj", d, ref.a[k] ** 2) / ref.B, jnp.mean(d, axis=0))
        for field in ("W", "b"):
            actual, reference, size = (getattr(t, field) for t in (step, diag_ref[k], m))
            rows += [
                _pair(f"diag ∇²E {field}", 17, k + 2, actual, reference, size),
                _pair(
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


def _hessian_magnitudes(ref) -> list:
    """The size of the terms each H^l of (17) sums, signs removed, chained down from |H^L|.

    M^l = |D| |W^{l+1}|ᵀ M^{l+1} |W^{l+1}| |D| + diag(|σ^l''| ⊙ |W^{l+1}|ᵀ |δ^{l+1}|):
    where the terms cancel, H^l (and every route to it) rounds at their size,
    not at its own (the cancellation refinement).
    """
    n = len(ref.p)
    M = [None] * n
    M[-1] = jnp.abs(ref.Hz[-1])
    for k in reversed(range(n - 1)):
        W, sp = jnp.abs(ref.p[k + 1].W), jnp.abs(ref.sigma_prime[k])
        inner = jnp.einsum("mk,bmn,nj->bkj", W, M[k + 1], W) * sp[:, :, None] * sp[:, None, :]
        second = jnp.abs(ref.sigma_second[k]) * (jnp.abs(ref.deltas[k + 1]) @ W)
        M[k] = inner + jax.vmap(jnp.diag)(second)
    return M


def _r_rows(ref, eqs) -> list:
    net, p, v, n = ref.net, ref.p, ref.v, len(ref.p)
    rows = []
    Ra = [None, *ref.Ra[1:]]  # R{a^1} = R{x} = 0, passed as None as the composition does
    for k in range(n):
        Rz = eqs.r_forward(Ra[k], ref.a[k], p[k].W, v[k])
        rows.append(_pair("R{z^l}", 18, k + 2, Rz, ref.Rz[k + 1]))
    Rdelta_L = jax.vmap(lambda z, a, y, r: eqs.r_output_delta(net, z, a, y, r))(
        ref.z[-1], ref.a[-1], ref.Y, ref.Rz[-1]
    )
    rows.append(_pair("R{δ^L}", 19, net.L, Rdelta_L, ref.Rdeltas[-1]))
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
        rows.append(_pair("R{δ^l}", 19, k + 2, Rdelta, ref.Rdeltas[k]))
    for k in range(n):
        step = eqs.r_grad(ref.Rdeltas[k], ref.deltas[k], ref.a[k], Ra[k])
        step = jax.tree.map(lambda t: t / ref.B, step)
        rows += _layer_rows("R{∂E/∂θ}", 19, k, step, ref.hvp[k])
    hv = C.hvp_layers(net, p, ref.X, ref.Y, v, eqs)
    Fv = jax.jvp(ref.batch_f, (p,), (v,))[1]
    _, pullback = jax.vjp(ref.batch_f, p)
    (gv_ref,) = pullback(jnp.einsum("bij,bj->bi", ref.H_f, Fv) / ref.B)
    gv = C.ggn_vp_layers(net, p, ref.X, ref.Y, v, eqs)
    for k in range(n):
        rows += _layer_rows("hvp vs autodiff", None, k, hv[k], ref.hvp[k], net.L - 1)
        rows += _layer_rows("ggn_vp vs autodiff", None, k, gv[k], gv_ref[k], net.L - 1)
    return rows
