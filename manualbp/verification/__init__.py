"""Verification: localize a wrong derivation to its equation, its layer and its building block.

`verify` (backward.py) checks a whole backward pass, `verify_activation` and
`verify_loss` (blocks.py) one σ' or ∂E/∂ŷ; compare.py holds the comparison of
two arrays and the tolerance, report.py the `Row` and `Report` they produce.
"""

from manualbp.verification.backward import verify
from manualbp.verification.blocks import verify_activation, verify_loss
from manualbp.verification.compare import diagnose, row_rtol
from manualbp.verification.report import Report, Row

__all__ = ["Report", "Row", "diagnose", "row_rtol", "verify", "verify_activation", "verify_loss"]
