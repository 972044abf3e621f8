"""One check: the manual array against a float64 reference, judged by the witness's own error.

`compare` makes the `Row`: non-finite values first (they never pass), then
`tolerance.judge`, then, for a miss, a diagnosis that names the error's form
only where that form explains it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from manualbp import tolerance
from manualbp.tolerance import Rounding
from manualbp.verification.diagnosis import diagnose, explain, worst_entries
from manualbp.verification.report import Row


class Site(NamedTuple):
    """Where a row sits in the report: its check, equation (None for none), layer and device."""

    check: str
    equation: Any = None
    layer: Any = None
    device: str = ""


class Setting(NamedTuple):
    """What every row of one report shares: the dtype it is judged in, the device it ran on."""

    dtype: Any
    device: str = ""


class Clues(NamedTuple):
    """What a miss is explained by; none of it changes whether a row passes.

    Attributes:
        candidates: named wrong forms, ``{name: array or function returning
            one}``; a miss that matches one within the allowance is diagnosed by its name.
        inputs: ``{name: array}`` the manual result was computed from, to say
            where a NaN or inf came from.
        upstream: ``{name: float64 reference array}`` the value depends on; a
            NaN or inf that one of them has too is not judged here.
        points: (name, array) the value was taken at (z for a σ'), to show
            the worst entries of a miss in the user's terms.
    """

    candidates: Mapping | None = None
    inputs: Mapping | None = None
    upstream: Mapping | None = None
    points: tuple | None = None


NO_CLUES = Clues()


def compare(site: Site, actual, reference, witness, rounding: Rounding, clues=NO_CLUES) -> Row:
    """Judge ``actual`` (the manual result) against ``reference`` (float64), by ``witness``.

    Args:
        site: where the row sits (`Site`).
        actual: the manual result, in the net's dtype.
        reference: the same quantity in float64 from the same inputs.
        witness: the same quantity computed the trusted way in the net's
            dtype, or None where the reference has no higher precision; or a
            tuple (autodiff's or None, further correct routes such as the
            per-example loop of `witnesses.sequential_mean`).
        rounding: what the allowance is derived from (`tolerance.Rounding`).
        clues: what explains a miss (`Clues`).
    """
    actual = np.asarray(actual, np.float64)
    reference = np.asarray(reference, np.float64)
    where = site._asdict()
    if actual.shape != reference.shape:
        return _failed(where, _shape_diagnosis(actual.shape, reference.shape))
    witness, others = _split(witness)
    dtype = rounding.dtype
    if not np.all(np.isfinite(actual)) or not np.all(np.isfinite(reference)):
        return _nonfinite_row(where, (actual, reference, witness), dtype, clues)
    if witness is not None and not np.all(np.isfinite(witness)):
        witness = np.where(np.isfinite(witness), witness, reference)  # judged where it is finite
    outside = _outside_range(reference, witness, dtype)
    if outside:
        return _failed(where, outside, judged=False)
    if others:  # further correct routes, judged where they are finite
        witness = (witness, *(np.where(np.isfinite(o), o, reference) for o in others))
    verdict = tolerance.judge(actual, reference, witness, rounding)
    diagnosis = ""
    if not verdict["passed"]:
        diagnosis = explain(actual, clues.candidates, verdict["allowance"]) or diagnose(
            actual, reference, verdict["allowance"]
        )
        if clues.points is not None:
            diagnosis = "; ".join(
                part for part in (diagnosis, worst_entries(actual, reference, clues.points)) if part
            )
    return _row(where, verdict, dtype, diagnosis)


def _split(witness):
    """(autodiff's witness or None, the further routes): a tuple's first entry is autodiff's."""
    if isinstance(witness, tuple):
        first, *others = witness
        first = None if first is None else np.asarray(first, np.float64)
        return first, [np.asarray(o, np.float64) for o in others if o is not None]
    return (None if witness is None else np.asarray(witness, np.float64)), []


def _row(where, verdict, dtype, diagnosis) -> Row:
    s = verdict["scale"]
    unit = tolerance.eps(dtype) * s
    error, allowed = verdict["error"], verdict["allowance"]

    def ratio(x, by):
        if by > 0:
            return x / by
        return 0.0 if x == 0 else math.inf

    return Row(
        max_abs_err=error,
        rel_err=ratio(error, s),
        tol=ratio(allowed, s),
        passed=verdict["passed"],
        diagnosis=diagnosis,
        error_eps=ratio(error, unit),
        witness_eps=ratio(verdict["witness_error"], unit),
        allowance_eps=ratio(allowed, unit),
        **where,
    )


def _failed(where, diagnosis, judged=True) -> Row:
    return Row(
        max_abs_err=math.inf,
        rel_err=math.inf,
        tol=0.0,
        passed=False,
        diagnosis=diagnosis,
        judged=judged,
        **where,
    )


def _shape_diagnosis(shape, expected) -> str:
    if len(shape) == 2 and tuple(reversed(shape)) == tuple(expected):
        return f"transposed: shape {shape}, expected {tuple(expected)}"
    return f"shape {shape}, expected {tuple(expected)}"


def _nonfinite_row(where, arrays, dtype, clues: Clues) -> Row:
    """A NaN or inf: where it is, and where it came from. Never a pass.

    ``arrays`` = (actual, reference, witness or None), as `compare` has them.
    """
    actual, reference, witness = arrays
    bad_ref = ~np.isfinite(reference)
    bad = ~np.isfinite(actual)
    if not bad.any():  # the manual result is finite, the float64 reference is not
        return _failed(
            where,
            f"the float64 reference is {_kinds(reference[bad_ref])} at {_count(bad_ref)}: "
            "not judged there",
            judged=False,
        )
    text = f"{_kinds(actual[bad])} at {_count(bad)}"
    dtype_name = np.dtype(dtype).name
    if bad_ref[bad].all():
        return _failed(
            where,
            f"{text}; not finite in float64 either: E or its derivative does not exist at "
            "these inputs, so nothing is judged there",
            judged=False,
        )
    before = [name for name, x in (clues.upstream or {}).items() if not np.all(np.isfinite(x))]
    if before:
        return _failed(
            where,
            f"{text}; it comes from {', '.join(before)}, not finite in float64 either: not judged",
            judged=False,
        )
    if witness is not None and not np.all(np.isfinite(witness)):
        # Where autodiff overflows in this array too, NaN spreads differently
        # (its ReLU masks a NaN that σ' = 0 times NaN keeps): judged per array.
        return _failed(
            where,
            f"{text}; autodiff overflows in {dtype_name} in this array too (the float64 "
            "reference is finite): not judged in this dtype",
            judged=False,
        )
    if np.dtype(dtype).itemsize <= 2 and np.isinf(actual[bad & ~bad_ref]).all():
        return _failed(
            where,
            f"{text}; it overflows in {dtype_name} where autodiff, ordering the arithmetic "
            "otherwise (1/B first), does not: an overflow of this dtype, not judged",
            judged=False,
        )
    carried = [name for name, x in (clues.inputs or {}).items() if not np.all(np.isfinite(x))]
    if carried:
        return _failed(where, f"{text}; it came in with {', '.join(carried)}")
    return _failed(where, f"{text}; it arises here: the inputs and the reference are finite")


def _outside_range(reference, witness, dtype) -> str:
    """Why a finite reference cannot be judged in ``dtype``: beyond its range, or below it.

    A quantity whose every entry lies below the dtype's smallest normal number
    is subnormal there, and XLA flushes subnormals to zero: its rounding is
    that of the flush, not of the derivation (T10). The same holds where
    autodiff in the dtype gives all zeros for a reference within 1/eps of that
    smallest normal: the witness underflowed on the way.
    """
    info = np.finfo(np.dtype(dtype))
    largest = float(np.max(np.abs(reference), initial=0.0))
    name = np.dtype(dtype).name
    if largest > float(info.max):
        return (
            f"reaches {largest:.3g} in float64, beyond the largest {name} ({float(info.max):.3g}): "
            f"not judged in {name}"
        )
    if 0 < largest < float(info.tiny):
        return (
            f"every entry is below {name}'s smallest normal number ({float(info.tiny):.3g}; the "
            f"largest is {largest:.3g}): subnormal, and flushed to zero by XLA, so not judged "
            f"in {name}"
        )
    if witness is not None and 0 < largest < float(info.tiny / info.eps) and not np.any(witness):
        return (
            f"autodiff in {name} gives 0 where the float64 reference does not (largest "
            f"{largest:.3g}, near {name}'s smallest normal): it underflows, so not judged"
        )
    return ""


def _kinds(values) -> str:
    found = (("NaN", np.isnan(values).any()), ("inf", np.isinf(values).any()))
    return " and ".join(name for name, hit in found if hit)


def _count(mask) -> str:
    if mask.ndim == 0:
        return "its one value"
    first = tuple(int(i) for i in np.argwhere(mask)[0])
    return f"{int(mask.sum())} of {mask.size} entries (first at {first})"
