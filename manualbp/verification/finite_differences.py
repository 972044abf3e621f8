"""Central finite differences in float64: a witness that does not trust autodiff either.

For a sampled coordinate θ of W^l or b^l, with step h = ∛eps · max(1, |θ|),

    fd_h = (E(θ + h) − E(θ − h)) / 2h.

It carries two errors of its own, and a row states both, per coordinate:

* rounding: each E is rounded at eps · |E|, so fd_h is off by about eps · |E| / h;
* curvature (truncation): h² |E'''| / 6. fd_2h has four times as much, so
  |fd_2h − fd_h| / 3 measures it on the spot, with no bound on E''' assumed.

A coordinate passes when |manual − fd_h| ≤ K · (rounding + curvature + floor),
the floor `tolerance.floor` of the manual value's own rounding. Where a
pre-activation of a σ with a kink at 0 (ReLU, leaky ReLU) changes sign within
θ ± 2h, E is not smooth inside the step and fd_h means nothing: such a
coordinate is reported as "kink inside the step" and not compared.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from manualbp import tolerance
from manualbp.network import as_targets, forward_pass_batch, mean_loss
from manualbp.verification.diagnosis import diagnose
from manualbp.verification.report import Row

FD_DTYPE = np.float64


def fd_rows(net, params, batch, backward, sampling) -> list[Row]:
    """One row per W^l and b^l: the manual gradient at ``samples`` coordinates against fd.

    ``batch`` = (X, Y); ``sampling`` = (samples, seed): how many coordinates of
    each W^l and b^l, drawn with `np.random.default_rng(seed)`.
    """
    (X, Y), (samples, seed) = batch, sampling
    rng = np.random.default_rng(seed)
    rows = []
    with jax.enable_x64():
        p64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), params)
        X64 = jnp.asarray(np.asarray(X, np.float64))
        Y64 = as_targets(net, jnp.asarray(Y), FD_DTYPE)
        _, grads, _ = backward(net, p64, X64, Y64)
        probe = _Probe(net, p64, X64, Y64)
        for k in range(len(params)):
            for field in ("W", "b"):
                theta = np.asarray(getattr(p64[k], field))
                manual = np.asarray(getattr(grads[k], field), np.float64)
                flat = rng.choice(theta.size, size=min(samples, theta.size), replace=False)
                rows.append(_row(probe, k, field, theta, manual, flat))
    return rows


class _Probe:
    """E, and whether a kink lies in the step, at θ moved along one coordinate."""

    def __init__(self, net, p64, X64, Y64):
        self.net, self.p64, self.X64, self.Y64 = net, p64, X64, Y64
        self.loss = jax.jit(mean_loss, static_argnums=0)
        self.kinked = [_has_kink_at_0(sigma) for sigma in net.activations]
        self.forward = jax.jit(forward_pass_batch, static_argnums=0)

    def moved(self, k, field, theta, idx, step):
        shifted = theta.copy()
        shifted[idx] += step
        p = list(self.p64)
        p[k] = p[k]._replace(**{field: jnp.asarray(shifted)})
        return tuple(p)

    def E(self, params) -> float:
        return float(self.loss(self.net, params, self.X64, self.Y64))

    def kink_between(self, low, high) -> bool:
        if not any(self.kinked):
            return False
        z_low = self.forward(self.net, low, self.X64).z[1:]  # z^2..z^L, as self.kinked
        z_high = self.forward(self.net, high, self.X64).z[1:]
        return any(
            np.any(np.sign(np.asarray(a)) != np.sign(np.asarray(b)))
            for a, b, kinked in zip(z_low, z_high, self.kinked, strict=True)
            if kinked
        )


def _has_kink_at_0(sigma, t: float = 1e-3) -> bool:
    """Whether σ's slope jumps at 0 (left and right difference quotients disagree)."""
    if not sigma.elementwise:
        return False
    values = np.asarray(sigma.fn(jnp.asarray([-t, 0.0, t], FD_DTYPE)), np.float64)
    left, right = (values[1] - values[0]) / t, (values[2] - values[1]) / t
    return abs(right - left) > 1e-2 * max(abs(left), abs(right), 1e-12)


def _row(probe, k, field, theta, manual, flat) -> Row:
    eps = tolerance.eps(FD_DTYPE)
    h_base = eps ** (1 / 3)
    scale = float(np.max(np.abs(manual), initial=0.0))
    floor = tolerance.floor(FD_DTYPE, probe.net.L - 1, scale)
    kinks, measured = 0, []  # (coordinate, manual, fd, noise)
    for i in flat:
        idx = np.unravel_index(i, theta.shape)
        h = h_base * max(1.0, abs(float(theta[idx])))
        moved = {m: probe.moved(k, field, theta, idx, m * h) for m in (-2, -1, 1, 2)}
        if probe.kink_between(moved[-2], moved[2]):
            kinks += 1
            continue
        E = {m: probe.E(p) for m, p in moved.items()}
        fd_h = (E[1] - E[-1]) / (2 * h)
        fd_2h = (E[2] - E[-2]) / (4 * h)
        rounding = eps * max(abs(e) for e in E.values()) / h
        curvature = abs(fd_2h - fd_h) / 3
        measured.append((i, manual.ravel()[i], fd_h, rounding + curvature + floor))
    return _verdict((k, field), measured, (kinks, len(flat)), scale)


def _verdict(where, measured, kinks, scale) -> Row:
    """The row of ∂E/∂W^l or ∂E/∂b^l: ``where`` = (k, "W" or "b"), ``measured`` as `_row`
    gathers it, ``kinks`` = (coordinates skipped for a kink, coordinates drawn)."""
    (k, field), (kinks, n) = where, kinks
    check = f"∂E/∂{field} vs finite diff."
    kink_note = f"kink inside the step at {kinks} of {n} coordinates: not compared" if kinks else ""
    if not measured:
        return Row(check, None, k + 2, 0.0, 0.0, 0.0, True, kink_note, "")
    _, m, fd, noise = (np.array(column) for column in zip(*measured, strict=True))
    error = np.abs(m - fd)
    allowed = tolerance.K * noise
    worst = int(np.argmax(error / allowed))
    passed = bool(np.all(error <= allowed))
    # In the witness's own units: err and allowance over the finite differences' own noise at
    # the worst coordinate (the witness, 1), not over ε · s, which these rows never approach.
    unit = float(noise[worst]) or 1.0
    notes = [
        f"witness: central differences in float64; err/ε, witness/ε, allowed/ε here in units "
        f"of their own noise (up to {np.max(noise):.1e}: ε|E|/h + curvature)"
    ]
    if not passed:
        notes.insert(0, diagnose(m, fd, float(np.min(allowed))) or "disagrees")
    if kink_note:
        notes.append(kink_note)
    return Row(
        check,
        None,
        k + 2,
        float(np.max(error)),
        float(error[worst] / scale) if scale else 0.0,
        float(allowed[worst] / scale) if scale else 0.0,
        passed,
        "; ".join(notes),
        "",
        error_eps=float(error[worst] / unit),
        witness_eps=float(noise[worst] / unit),
        allowance_eps=float(allowed[worst] / unit),
    )
