"""A verification's result: one `Row` per check, gathered in a `Report`."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, NamedTuple

from manualbp.table import format_table


class Row(NamedTuple):
    """One check: what was compared, where, how far apart, and whether that is within tolerance."""

    check: str
    equation: int | None
    layer: int | None
    max_abs_err: float
    rel_err: float
    tol: float
    passed: bool
    diagnosis: str = ""
    device: str = ""

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

    def verdict(self) -> str:
        subject = self.meta.get("subject", "derivation")
        if self.passed:
            return f"PASSED: {subject}: all {len(self.rows)} checks agree with autodiff"
        first = self.failures[0]
        where = _where(first)
        how = f" ({first.diagnosis})" if first.diagnosis else ""
        return (
            f"FAILED: {subject}: {len(self.failures)} of {len(self.rows)} checks disagree; "
            f"first: {first.check}{where}{how}"
        )

    def __str__(self) -> str:
        rows = self.failures + tuple(r for r in self.rows if r.passed)
        show_device = len({r.device for r in rows}) > 1
        columns = ["", "check", "eq", "layer", "rel_err", "tol", "max_abs_err", "diagnosis"]
        if show_device:
            columns.insert(4, "device")
        table = [
            {
                "": "ok" if r.passed else "FAIL",
                "check": r.check,
                "eq": "" if r.equation is None else f"({r.equation})",
                "layer": "" if r.layer is None else str(r.layer),
                "device": r.device,
                "rel_err": f"{r.rel_err:.2e}",
                "tol": f"{r.tol:.1e}",
                "max_abs_err": f"{r.max_abs_err:.2e}",
                "diagnosis": r.diagnosis,
            }
            for r in rows
        ]
        return "\n".join(
            [self.verdict(), "", format_table(table, columns, rule=False, align="left")]
        )

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


def _where(row: Row) -> str:
    parts = []
    if row.equation is not None:
        parts.append(f"eq. ({row.equation})")
    if row.layer is not None:
        parts.append(f"layer l={row.layer}")
    if row.device:
        parts.append(row.device)
    return f" [{', '.join(parts)}]" if parts else ""
