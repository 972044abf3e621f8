"""End-to-end rows: the whole manual pass, and the fast form that trains, against autodiff.

Reference: autodiff of `network.mean_loss` in float64 from the same
parameters and batch cast up; witness: autodiff in the net's dtype. The
values pass through every layer, so the floor counts d = L − 1 layers, and
the magnitudes chain down from δ^L (`witnesses.chain_magnitudes`).
"""

from __future__ import annotations

import numpy as np

from manualbp import backprop
from manualbp.network import Layer
from manualbp.verification.compare import Clues, Rounding, Site, compare
from manualbp.verification.report import Row
from manualbp.verification.witnesses import sequential_mean


def forward_overflow(wit, ref, dtype, device) -> Row | None:
    """A row saying the forward pass overflows in the net's dtype, or None.

    Where z^l or a^l is not finite in the net's dtype but is in float64, no
    derivation can be judged in this dtype on this batch: the row says so and
    is not a failure of the derivation (`Row.judged` is False).
    """
    if wit is None:
        return None
    for k, (z, z64) in enumerate(zip(wit.z[1:], ref.z[1:], strict=True)):
        bad = ~np.isfinite(np.asarray(z, np.float64)) | ~np.isfinite(
            np.asarray(wit.a[k + 1], np.float64)
        )
        if bad.any() and np.all(np.isfinite(z64)):
            largest = float(np.max(np.abs(z64)))
            top = float(np.finfo(np.dtype(dtype)).max)
            return Row(
                "forward pass",
                None,
                k + 2,
                np.inf,
                np.inf,
                0.0,
                False,
                f"overflows in {np.dtype(dtype).name} at layer l={k + 2} (|z| reaches "
                f"{largest:.3g} in float64, the largest {np.dtype(dtype).name} is {top:.3g}): "
                "the derivation is not judged in this dtype on this batch",
                device,
                judged=False,
            )
    return None


def end_to_end_rows(net, manual, sides, magnitudes, setting) -> list[Row]:
    """E, and δ^l, ∂E/∂W^l, ∂E/∂b^l at every layer, against autodiff.

    ``sides`` = (ref, wit): `witnesses.Side` in float64 and in the net's dtype
    (None for a float64 net). ``magnitudes`` = (per layer k: (m_δ, m_W, m_b)
    of layer l = k + 2 (`witnesses.chain_magnitudes`), m_E: what E inherits
    from z^L's rounding). ``setting`` = (dtype, device).
    """
    ref, wit = sides
    magnitudes, m_E = magnitudes
    E, grads, deltas = manual
    row = _judge_by(net, ref, setting, reduced=len(deltas[0]))
    rows = [row("E vs autodiff", None, (E, ref.E, _get(wit, "E")), m_E)]
    for k in reversed(range(len(grads))):
        m_delta, m_W, m_b = magnitudes[k]
        l = k + 2
        delta = (deltas[k], ref.deltas[k], _get(wit, "deltas", k))
        grad = (grads[k], ref.grads[k], _routes(sides, k, setting[0]))
        rows += [
            row("δ vs autodiff", l, delta, m_delta, reduced=1),  # one δ per example: no batch sum
            *_grad_rows(row, "vs autodiff", l, grad, (m_W, m_b)),
        ]
    return rows


def fast_form_rows(net, params, batch, sides, magnitudes, setting) -> list[Row]:
    """`backprop.fast_backprop`, the function `manual_value_and_grad` and `train` call.

    Called here as it is there, on the net's own σ' and ∂E/∂ŷ: a regression in
    the fast form (the 1/B applied once, (2) and (3) as plain sums) fails these
    rows even where the plain equations above pass. ``batch`` = (X, Y); the
    rest as for `end_to_end_rows`.
    """
    ref, wit = sides
    magnitudes, m_E = magnitudes
    X, Y = batch
    E, grads = backprop.fast_backprop(net, params, X, Y)
    row = _judge_by(net, ref, setting, reduced=len(X))
    rows = [row("E fast form vs autodiff", None, (E, ref.E, _get(wit, "E")), m_E)]
    for k in reversed(range(len(params))):
        _, m_W, m_b = magnitudes[k]
        sides_k = (grads[k], ref.grads[k], _routes(sides, k, setting[0]))
        rows += _grad_rows(row, "fast form vs autodiff", k + 2, sides_k, (m_W, m_b))
    return rows


def _judge_by(net, ref, setting, reduced):
    """The end-to-end rule: depth L − 1, the batch sum of ``reduced`` terms, E and δ^L upstream."""
    dtype, device = setting
    clues = Clues(upstream=_upstream(ref))

    def row(check, layer, arrays, magnitude, reduced=reduced) -> Row:
        actual, reference, witness = arrays
        rounding = Rounding(dtype, net.L - 1, magnitude, reduced)
        site = Site(check, None, layer, device)
        return compare(site, actual, reference, witness, rounding, clues)

    return row


def _grad_rows(row, name, l, arrays, magnitudes) -> list[Row]:
    """∂E/∂W^l and ∂E/∂b^l: ``arrays`` = (manual, float64 reference, the routes in the dtype)."""
    grad, ref, routes = arrays
    return [
        row(
            f"∂E/∂{field} {name}",
            l,
            (getattr(grad, field), getattr(ref, field), tuple(_get(w, field) for w in routes)),
            m,
        )
        for field, m in zip(("W", "b"), magnitudes, strict=True)
    ]


def _routes(sides, k, dtype) -> tuple:
    """The correct routes to ∂E/∂θ^l in the net's dtype: autodiff's, and a per-example loop.

    The loop (`witnesses.sequential_mean`) sums the witness's own δ_b (a_b)ᵀ
    one example at a time, as a hand-written loop over the batch does (T6).
    """
    ref, wit = sides
    side = ref if wit is None else wit
    delta, a = np.asarray(side.deltas[k]), np.asarray(side.a[k])
    loop = Layer(sequential_mean(delta, a, dtype), sequential_mean(delta, None, dtype))
    return (_get(wit, "grads", k), loop)


def _get(side, name, k=None):
    """A field of the witness (layer k of it), or None where there is no witness."""
    if side is None:
        return None
    value = getattr(side, name)
    return value if k is None else value[k]


def _upstream(ref) -> dict:
    """What every end-to-end value depends on: E and δ^L, in float64."""
    return {"E": ref.E, "δ^L": ref.deltas[-1]}
