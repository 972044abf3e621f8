"""Beyond the gradient: quantities hand-derived backprop gives almost for free.

`per_example` (equations (5)–(9) of docs/derivation.md): per-example gradient
norms, the sum and variance of squared per-example gradients, and DP-SGD's
clipped gradient, all from the batch's Δ^l and A^{l-1} without forming a
per-example gradient. `verify` checks them against autodiff.
"""

from manualbp.extensions.per_example import (
    batch_l2,
    clipped_value_and_grad,
    sum_grad_squared,
    variance,
)
from manualbp.extensions.verify import catalogue_extensions, verify_extensions

__all__ = [
    "batch_l2",
    "catalogue_extensions",
    "clipped_value_and_grad",
    "sum_grad_squared",
    "variance",
    "verify_extensions",
]
