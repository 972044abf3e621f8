"""Verification: localize a wrong derivation to its equation, its layer and its building block.

`verify` (backward.py) checks a whole backward pass: building blocks
(blocks.py), equations one at a time (equations.py), end to end and the fast
form that trains (end_to_end.py), optionally finite differences
(finite_differences.py). `verify_activation` and `verify_loss` (grids.py)
check one σ' or ∂E/∂ŷ. Every row is judged by one rule (compare.py,
`manualbp.tolerance.judge`) against a float64 reference (witnesses.py);
report.py holds the `Row` and `Report` they produce. `verify_extensions`
(extensions.py) and `verify_curvature` (curvature.py) check equations (5)–(19),
`verify_spectra` (spectra.py) the spectra of (20)–(25) against dense eigensolvers.
"""

from manualbp.verification.backward import verify
from manualbp.verification.curvature import verify_curvature
from manualbp.verification.diagnosis import diagnose
from manualbp.verification.extensions import catalogue_extensions, verify_extensions
from manualbp.verification.grids import verify_activation, verify_loss
from manualbp.verification.report import Report, Row
from manualbp.verification.spectra import verify_spectra

__all__ = [
    "Report",
    "Row",
    "catalogue_extensions",
    "diagnose",
    "verify",
    "verify_activation",
    "verify_curvature",
    "verify_extensions",
    "verify_loss",
    "verify_spectra",
]
