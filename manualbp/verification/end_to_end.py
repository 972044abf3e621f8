"""End-to-end rows: the whole manual pass, and the fast form that trains, against autodiff.

Reference: autodiff of `network.mean_loss` in float64 from the same
parameters and batch cast up; witness: autodiff in the net's dtype. The
values pass through every layer, so the floor counts d = L − 1 layers, and
the magnitudes chain down from δ^L (`witnesses.chain_magnitudes`).
"""

from __future__ import annotations

import numpy as np

from manualbp import backprop
from manualbp.verification.compare import compare
from manualbp.verification.report import Row


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


def end_to_end_rows(net, manual, ref, wit, magnitudes, dtype, device) -> list[Row]:
    """E, and δ^l, ∂E/∂W^l, ∂E/∂b^l at every layer, against autodiff.

    ``magnitudes[k]`` = (m_δ, m_W, m_b) of layer l = k + 2 (`witnesses.chain_magnitudes`).
    """
    E, grads, deltas = manual
    where = dict(dtype=dtype, depth=net.L - 1, device=device, upstream=_upstream(ref))
    rows = [compare("E vs autodiff", None, None, E, ref.E, _get(wit, "E"), **where)]
    for k in reversed(range(len(grads))):
        m_delta, m_W, m_b = magnitudes[k]
        l = k + 2
        rows += [
            compare(
                "δ vs autodiff",
                None,
                l,
                deltas[k],
                ref.deltas[k],
                _get(wit, "deltas", k),
                magnitude=m_delta,
                **where,
            ),
            *_grad_rows(
                "vs autodiff", l, grads[k], ref.grads[k], _get(wit, "grads", k), m_W, m_b, where
            ),
        ]
    return rows


def fast_form_rows(net, params, X, Y, ref, wit, magnitudes, dtype, device) -> list[Row]:
    """`backprop.fast_backprop`, the function `manual_value_and_grad` and `train` call.

    Called here as it is there, on the net's own σ' and ∂E/∂ŷ: a regression in
    the fast form (the 1/B applied once, (2) and (3) as plain sums) fails these
    rows even where the plain equations above pass.
    """
    E, grads = backprop.fast_backprop(net, params, X, Y)
    where = dict(dtype=dtype, depth=net.L - 1, device=device, upstream=_upstream(ref))
    rows = [compare("E fast form vs autodiff", None, None, E, ref.E, _get(wit, "E"), **where)]
    for k in reversed(range(len(params))):
        _, m_W, m_b = magnitudes[k]
        rows += _grad_rows(
            "fast form vs autodiff",
            k + 2,
            grads[k],
            ref.grads[k],
            _get(wit, "grads", k),
            m_W,
            m_b,
            where,
        )
    return rows


def _grad_rows(name, l, grad, ref, wit, m_W, m_b, where) -> list[Row]:
    return [
        compare(
            f"∂E/∂{field} {name}",
            None,
            l,
            getattr(grad, field),
            getattr(ref, field),
            None if wit is None else getattr(wit, field),
            magnitude=m,
            **where,
        )
        for field, m in (("W", m_W), ("b", m_b))
    ]


def _get(side, name, k=None):
    """A field of the witness (layer k of it), or None where there is no witness."""
    if side is None:
        return None
    value = getattr(side, name)
    return value if k is None else value[k]


def _upstream(ref) -> dict:
    """What every end-to-end value depends on: E and δ^L, in float64."""
    return {"E": ref.E, "δ^L": ref.deltas[-1]}
