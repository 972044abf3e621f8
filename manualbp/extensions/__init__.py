"""Beyond the gradient: curvature by hand (equations (10)–(19) of docs/derivation.md)."""

from manualbp.extensions.curvature import (
    diag_ggn,
    diag_ggn_mc,
    diag_hessian,
    ggn_vp,
    hvp,
    kfac,
    kflr,
)

__all__ = ["diag_ggn", "diag_ggn_mc", "diag_hessian", "ggn_vp", "hvp", "kfac", "kflr"]
