"""Beyond the gradient: quantities hand-derived backprop gives almost for free.

`per_example` (equations (5)–(9) of docs/derivation.md): per-example gradient
norms, the sum and variance of squared per-example gradients, and DP-SGD's
clipped gradient, all from the batch's Δ^l and A^{l-1} without forming a
per-example gradient. `curvature` (equations (10)–(19)): the GGN's diagonal
and Kronecker factors, the Hessian's diagonal, and Hessian- and GGN-vector
products, by backpropagating a factor of the loss's Hessian or by the
R-operator. `spectra` (equations (20)–(25)): the Hessian's or the GGN's top or
bottom eigenpairs by Lanczos, its trace by Hutchinson or Hutch++, and its
spectral density by stochastic Lanczos quadrature, all on those products.
The verifiers live in `manualbp.verification` (`verify_extensions`,
`verify_curvature`, `verify_spectra`): this package is the math alone.
"""

from manualbp.extensions.curvature import (
    diag_ggn,
    diag_ggn_mc,
    diag_hessian,
    ggn_vp,
    hvp,
    kfac,
    kflr,
)
from manualbp.extensions.per_example import (
    batch_l2,
    clipped_value_and_grad,
    sum_grad_squared,
    variance,
)
from manualbp.extensions.spectra import (
    Eigenpairs,
    SpectralDensity,
    SpectralMethods,
    TraceEstimate,
    eigenpairs,
    hutchinson_trace,
    spectral_density,
)

__all__ = [
    "Eigenpairs",
    "SpectralDensity",
    "SpectralMethods",
    "TraceEstimate",
    "batch_l2",
    "clipped_value_and_grad",
    "diag_ggn",
    "diag_ggn_mc",
    "diag_hessian",
    "eigenpairs",
    "ggn_vp",
    "hutchinson_trace",
    "hvp",
    "kfac",
    "kflr",
    "spectral_density",
    "sum_grad_squared",
    "variance",
]
