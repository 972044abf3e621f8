"""What the curvature rows compare against: autodiff references and the size of their terms.

`References` gathers, for one batch and direction v, every autodiff route the
rows of `verify_curvature` need (per-example Jacobians, `jax.hessian`,
`jax.jvp`); the ``*_terms`` functions give the size of the terms each
quantity sums with their signs removed, the cancellation refinement (T4) for
curvature: diag(p) − p pᵀ of a confident softmax cancels far below its
terms, and every route to it rounds at the size of the terms (T9). `pair`
is what one row compares, still as arrays inside the traced program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from manualbp import autodiff
from manualbp.extensions.curvature_equations import logits_are_f
from manualbp.network import Layer, example_loss, forward_pass, forward_pass_batch, mean_loss

MC_SAMPLES = 2
"""Targets drawn per example for the Monte Carlo rows (the reference uses the same ones)."""


def pair(check, equation, layer, actual, reference, magnitude=None, depth=1) -> tuple:
    """What one row compares, still as arrays (inside the traced program).

    ``depth``: the layers the value passes through, 1 for a teacher-forced
    step or a building block, L − 1 for an end-to-end quantity.
    """
    return (check, equation, layer, depth), (actual, reference, magnitude)


def layer_rows(check, equation, k, actual: Layer, reference: Layer, depth=1, size=None) -> list:
    size = Layer(None, None) if size is None else size
    return [
        pair(f"{check} W", equation, k + 2, actual.W, reference.W, size.W, depth),
        pair(f"{check} b", equation, k + 2, actual.b, reference.b, size.b, depth),
    ]


class References:
    """Every autodiff reference the rows need, for one batch and direction v."""

    def __init__(self, net, p, batch, direction, sampling):
        """``batch`` = (X, Y); ``direction`` = (v, the `CurvatureEquations` under test);
        ``sampling`` = (key, drawn): the key of the sampled factors of (16), or the factors
        ``drawn`` already (from the run in the net's dtype, cast up), None to draw them."""
        (X, Y), (v, eqs), (key, drawn) = batch, direction, sampling
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
        self.H_terms = loss_hessian_terms(net, self.a[-1], Y, self.H_f)
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

    def ggn_diag_terms(self, k):
        """The terms of `ggn_diag` with their signs removed, |J|ᵀ |H| |J| (the refinement)."""
        out = []
        for J in self.J_theta[k]:
            J = jnp.abs(J)
            HJ = jnp.einsum("bij,bj...->bi...", self.H_terms, J)
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


def loss_hessian_terms(net, y_hat, Y, H_f):
    """The size of the terms H_f is formed from, (B, N_L, N_L) (the cancellation refinement).

    For the softmax with cross-entropy in the logits, H_f = (Σ y)(diag(p) − p pᵀ):
    for a confident classifier p_i − p_i² cancels to far below p_i, and every
    route to it rounds at the size of its terms, (Σ|y|) p_i ([i = j] + p_j).
    Elsewhere, |H_f| itself.
    """
    if logits_are_f(net) and not net.output.elementwise:
        p = jnp.abs(y_hat)
        total = jnp.abs(jnp.sum(Y, axis=-1))[:, None, None]
        return total * p[:, :, None] * (jnp.eye(p.shape[-1], dtype=p.dtype)[None] + p[:, None, :])
    return jnp.abs(H_f)


def times_terms(M, r):
    """M |r| per example: the terms of H r with signs removed."""
    return jnp.einsum("bij,bj->bi", M, jnp.abs(r))


def ggn_terms(J, H_terms, B):
    """(1/B) Σ_b |J_b|ᵀ |H_b| |J_b| with J_b (N_L, N): the terms of a GGN factor (N, N)."""
    J = jnp.abs(J)
    return jnp.einsum("bik,bij,bjm->km", J, H_terms, J) / B


def hessian_terms(ref) -> list:
    """The size of the terms each H^l of (17) sums, signs removed, chained down from |H^L|.

    M^l = |D| |W^{l+1}|ᵀ M^{l+1} |W^{l+1}| |D| + diag(|σ^l''| ⊙ |W^{l+1}|ᵀ |δ^{l+1}|):
    where the terms cancel, H^l (and every route to it) rounds at their size,
    not at its own (the cancellation refinement).
    """
    n = len(ref.p)
    M = [None] * n
    M[-1] = ref.H_terms if logits_are_f(ref.net) else jnp.abs(ref.Hz[-1])
    for k in reversed(range(n - 1)):
        W, sp = jnp.abs(ref.p[k + 1].W), jnp.abs(ref.sigma_prime[k])
        inner = jnp.einsum("mk,bmn,nj->bkj", W, M[k + 1], W) * sp[:, :, None] * sp[:, None, :]
        second = jnp.abs(ref.sigma_second[k]) * (jnp.abs(ref.deltas[k + 1]) @ W)
        M[k] = inner + jax.vmap(jnp.diag)(second)
    return M


def r_delta_terms(ref) -> list:
    """The size of the terms of R{δ^l}, chained down from |H_f| |R{z^L}| (the refinement).

    At the output R{δ^L} = H_f R{z^L} for logits f, whose terms are those of
    H_f (for the softmax, diag(p) − p pᵀ cancels); below, (19) carries them
    through |W^{l+1}| and |σ^l'|, next to its own value.
    """
    n = len(ref.p)
    size = [None] * n
    top = jnp.abs(ref.Rdeltas[-1])
    if logits_are_f(ref.net):
        top = jnp.maximum(top, jnp.einsum("bij,bj->bi", ref.H_terms, jnp.abs(ref.Rz[-1])))
    size[-1] = top
    for k in reversed(range(n - 1)):
        carried = (size[k + 1] @ jnp.abs(ref.p[k + 1].W)) * jnp.abs(ref.sigma_prime[k])
        size[k] = jnp.maximum(carried, jnp.abs(ref.Rdeltas[k]))
    return size


def ggn_vp_terms(ref, v) -> list:
    """(1/B) Σ_b |J_b|ᵀ |H_b| |J_b| |v|, per layer: the terms of G v with signs removed."""
    Jv = sum(
        jnp.einsum("bi...,...->bi", jnp.abs(J), jnp.abs(t))
        for J_layer, v_layer in zip(ref.J_theta, v, strict=True)
        for J, t in zip(J_layer, v_layer, strict=True)
    )
    u = jnp.einsum("bij,bj->bi", ref.H_terms, Jv) / ref.B
    return [
        Layer(*(jnp.einsum("bi...,bi->...", jnp.abs(J), u) for J in J_layer))
        for J_layer in ref.J_theta
    ]
