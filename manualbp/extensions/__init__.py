"""Beyond the gradient: quantities hand-derived backprop gives almost for free.

`per_example` (equations (5)–(9) of docs/derivation.md): per-example gradient
norms, the sum and variance of squared per-example gradients, and DP-SGD's
clipped gradient, all from the batch's Δ^l and A^{l-1} without forming a
per-example gradient. `curvature` (equations (10)–(19)): the GGN's diagonal
and Kronecker factors, the Hessian's diagonal, and Hessian- and GGN-vector
products, by backpropagating a factor of the loss's Hessian or by the
R-operator. The verifiers live in `manualbp.verification` (`verify_extensions`,
`verify_curvature`): this package is the math alone.
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

__all__ = [
    "batch_l2",
    "clipped_value_and_grad",
    "diag_ggn",
    "diag_ggn_mc",
    "diag_hessian",
    "ggn_vp",
    "hvp",
    "kfac",
    "kflr",
    "sum_grad_squared",
    "variance",
]
