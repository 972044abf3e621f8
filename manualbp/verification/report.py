"""A verification's result: one `Row` per check, gathered in a `Report`."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, NamedTuple

from manualbp._table import format_table


class Row(NamedTuple):
    """One check: what was compared, where, how far apart, and whether that is allowed.

    Attributes:
        check, equation, layer: what was compared, and where (the derivation's
            equation number and layer l).
        max_abs_err: e = max|g − g⁶⁴|, the manual error against the float64 reference.
        rel_err: e / s, s the array's scale (`tolerance.judge`).
        tol: the allowance K · max(e_w, floor) / s; the row passes when rel_err ≤ tol.
        passed: whether it agrees; a non-finite manual value never does.
        diagnosis: what the error looks like, where it has a simple form.
        device: where it ran, with ``devices="all"``.
        error_eps, witness_eps, allowance_eps: e, e_w (the witness's error) and
            the allowance, in units of eps · s (eps of the net's dtype).
        judged: False where the row could not be judged: the computation
            overflows in this dtype for autodiff too, or the reference is not finite.
    """

    check: str
    equation: int | None
    layer: int | None
    max_abs_err: float
    rel_err: float
    tol: float
    passed: bool
    diagnosis: str = ""
    device: str = ""
    error_eps: float = math.nan
    witness_eps: float = math.nan
    allowance_eps: float = math.nan
    judged: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_number(v) for k, v in self._asdict().items()}


def _json_number(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


@dataclasses.dataclass(frozen=True)
class Report:
    """The rows of a verification and what they were run on.

    Attributes:
        rows: every check, in the order run.
        meta: what was verified and where: net, batch, dtype, devices, versions.
    """

    rows: tuple[Row, ...]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    @property
    def failures(self) -> tuple[Row, ...]:
        return tuple(row for row in self.rows if not row.passed)

    @property
    def inconclusive(self) -> bool:
        """Not passed, and no row that could be judged failed: nothing was found wrong."""
        return not self.passed and all(not row.judged for row in self.failures)

    def verdict(self) -> str:
        subject = self.meta.get("subject", "derivation")
        if self.passed:
            return f"PASSED: {subject}: all {len(self.rows)} checks agree with autodiff"
        if self.inconclusive:
            first = self.failures[0]
            return (
                f"INCONCLUSIVE: {subject}: {len(self.failures)} of {len(self.rows)} checks "
                f"cannot be judged, none is wrong; first: {first.check}{_where(first)} "
                f"({first.diagnosis})"
            )
        judged = [r for r in self.failures if r.judged]
        first = judged[0]
        how = f" ({first.diagnosis})" if first.diagnosis else ""
        return (
            f"FAILED: {subject}: {len(judged)} of {len(self.rows)} checks disagree; "
            f"first: {first.check}{_where(first)}{how}"
        )

    def __str__(self) -> str:
        rows = self.failures + tuple(r for r in self.rows if r.passed)
        show_device = len({r.device for r in rows}) > 1
        columns = ["", "check", "eq", "layer", "err/ε", "witness/ε", "allowed/ε", "diagnosis"]
        if show_device:
            columns.insert(4, "device")
        table = [
            {
                "": "ok" if r.passed else ("FAIL" if r.judged else "n/a"),
                "check": r.check,
                "eq": "" if r.equation is None else f"({r.equation})",
                "layer": "" if r.layer is None else str(r.layer),
                "device": r.device,
                "err/ε": _units(r.error_eps),
                "witness/ε": _units(r.witness_eps),
                "allowed/ε": _units(r.allowance_eps),
                "diagnosis": r.diagnosis,
            }
            for r in rows
        ]
        lines = [self.verdict()]
        if self.meta.get("reference"):
            lines.append(f"reference: {self.meta['reference']}")
        return "\n".join([*lines, "", format_table(table, columns, rule=False, align="left")])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: verdict, meta (dtype, devices, versions) and every row."""
        return {
            "passed": self.passed,
            "verdict": self.verdict(),
            **self.meta,
            "failures": [r.to_dict() for r in self.failures],
            "rows": [r.to_dict() for r in self.rows],
        }

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)


def _units(x: float) -> str:
    """A multiple of eps · s, short: 0.31, 12, 3.4e+05; "" where there is none."""
    if math.isnan(x):
        return ""
    if math.isinf(x):
        return "inf"
    return f"{x:.2g}" if x < 1e4 else f"{x:.1e}"


def _where(row: Row) -> str:
    parts = []
    if row.equation is not None:
        parts.append(f"eq. ({row.equation})")
    if row.layer is not None:
        parts.append(f"layer l={row.layer}")
    if row.device:
        parts.append(row.device)
    return f" [{', '.join(parts)}]" if parts else ""
