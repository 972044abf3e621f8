"""One row per extension quantity, per layer and per W/b, with the wrong forms that explain a miss.

Each quantity is formed from the per-example gradients g_b two ways: from the
float64 g_b of the inputs cast up (the reference) and from autodiff's g_b in
the net's dtype (the witness). Every row goes through `check`, the one place
the extensions meet the tolerance rule.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from manualbp.verification.compare import Clues, Rounding, Site, compare
from manualbp.verification.report import Row


class Part(NamedTuple):
    """The per-example gradients of one layer's W or b (or Ē): float64 and the witness's.

    Attributes:
        g64: the float64 g_b (B, ...) of this part.
        gw: the same by autodiff in the net's dtype, None for a float64 net.
        dtype: the net's dtype.
        depth: the floor's depth (`extensions.SQUARED_FACTOR` times the layers).
        layer: l, or None for Ē.
        name: "W", "b" or "Ē".
    """

    g64: np.ndarray
    gw: np.ndarray | None
    dtype: np.dtype
    depth: int
    layer: int | None
    name: str


class Clipping(NamedTuple):
    """One clip under test: its name, l2_clip, and the norms over all layers and over this one."""

    name: str
    l2_clip: float
    norms: np.ndarray
    layer_norm: np.ndarray


def check(part: Part, label, actual, formula, *, wrong=None, magnitude=None) -> Row:
    """One row: every extension comparison goes through here (the one place of the rule).

    ``label`` = (quantity, equation). ``formula`` maps per-example gradients
    to the quantity; applied to the float64 autodiff g_b it gives the
    reference, applied to the g_b of autodiff in the net's dtype the witness
    (none for a float64 net). ``wrong``: the named wrong forms (`Clues`).
    """
    quantity, equation = label
    # (6), (7), (9) sum over the batch; (5) is per example
    reduced = 1 if equation in (5, None) else len(part.g64)
    return compare(
        Site(f"{quantity} {part.name}", equation, part.layer),
        actual,
        formula(part.g64),
        None if part.gw is None else formula(part.gw),
        Rounding(part.dtype, part.depth, magnitude, reduced),
        Clues(wrong),
    )


def clip_factor(l2_clip: float, norms: np.ndarray) -> np.ndarray:
    return np.minimum(1.0, l2_clip / np.where(norms > 0, norms, 1.0))


def _per_b(g_: np.ndarray) -> tuple[int, ...]:
    """The shape that broadcasts a (B,) factor over per-example gradients like ``g_``."""
    return (-1,) + (1,) * (g_.ndim - 1)


def _squares_per_example(g_):
    return np.sum(g_ * g_, axis=tuple(range(1, g_.ndim)))


def l2_row(part: Part, manual) -> Row:
    norm2 = _squares_per_example(part.g64)
    B = part.g64.shape[0]
    wrong = {
        "not squared: ‖δ^l_b‖ ‖a^{l-1}_b‖, not its square": np.sqrt(norm2),
        "Δ^l scaled by 1/B (the fast form's), off by ×1/B²": norm2 / B**2,
    }
    actual = getattr(manual, part.name)
    return check(part, ("batch_l2", 5), actual, _squares_per_example, wrong=wrong)


def sum_grad_squared_row(part: Part, manual) -> Row:
    g_ = part.g64
    squares, total = g_ * g_, g_.sum(axis=0)
    wrong = {
        "not squared: Σ_b g_b": total,
        "squared after the sum: (Σ_b g_b)²": total**2,
        "averaged, not summed: off by ×1/B": squares.mean(axis=0),
    }
    actual = getattr(manual, part.name)
    return check(part, ("sum_grad_squared", 6), actual, lambda g: (g * g).sum(axis=0), wrong=wrong)


def variance_row(part: Part, manual) -> Row:
    g_ = part.g64
    B = g_.shape[0]
    squares, mean = g_ * g_, g_.mean(axis=0)
    wrong = {
        "mean not subtracted: (1/B) Σ_b g_b²": squares.mean(axis=0),
        "summed, not averaged: Σ_b g_b² − (Σ_b g_b)²": squares.sum(0) - (B * mean) ** 2,
    }
    return check(
        part,
        ("variance", 7),
        getattr(manual, part.name),
        lambda g: (g * g).mean(axis=0) - g.mean(axis=0) ** 2,
        wrong=wrong,
        magnitude=squares.mean(axis=0),
    )


def clipped_row(part: Part, manual, clipping: Clipping) -> Row:
    g_ = part.g64
    B, shape = g_.shape[0], _per_b(g_)
    c = clip_factor(clipping.l2_clip, clipping.norms).reshape(shape)

    def clipped(g):
        return np.mean(c * g, axis=0)

    wrong = {
        "not clipped: the mean gradient": g_.mean(axis=0),
        "summed over the batch, not averaged: off by ×B": B * clipped(g_),
        "clipped per layer, not over all layers together": np.mean(
            clip_factor(clipping.l2_clip, clipping.layer_norm).reshape(shape) * g_, axis=0
        ),
        "clip factor from ‖g_b‖², not ‖g_b‖": np.mean(
            clip_factor(clipping.l2_clip, clipping.norms**2).reshape(shape) * g_, axis=0
        ),
    }
    return check(
        part,
        (f"clipped (C {clipping.name})", 9),
        manual,
        clipped,
        wrong=wrong,
        magnitude=np.mean(np.abs(c * g_), axis=0),
    )
