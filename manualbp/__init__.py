"""manualbp: hand-derived backpropagation for MLPs, verified against automatic differentiation.

The equations are those of docs/derivation.md: z^l = W^l a^{l-1} + b^l, a^l = σ^l(z^l),
and (1)–(4) for δ^l, ∂E/∂W^l, ∂E/∂b^l and δ^L, one function each in the module
`manualbp.backprop` (``mbp.backprop.backprop`` is the single-example backward pass).
"""

from manualbp import backprop, data, extensions
from manualbp.activations import ACTIVATIONS, Activation, get_activation
from manualbp.backprop import Equations
from manualbp.extensions.curvature_equations import CurvatureEquations
from manualbp.gradients import (
    autodiff_value_and_grad,
    forward,
    loss,
    manual_value_and_grad,
    per_example_grads,
)
from manualbp.losses import LOSSES, Loss, get_loss
from manualbp.network import MLP, Layer, Params
from manualbp.training import (
    DPSGD,
    DivergenceError,
    TrainResult,
    checkpoint,
    data_parallel_mesh,
    privacy,
    train,
)
from manualbp.verification import (
    Report,
    Row,
    verify,
    verify_activation,
    verify_curvature,
    verify_extensions,
    verify_loss,
    verify_spectra,
)

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "MLP",
    "Activation",
    "CurvatureEquations",
    "DPSGD",
    "DivergenceError",
    "Equations",
    "Layer",
    "Loss",
    "Params",
    "Report",
    "Row",
    "TrainResult",
    "autodiff_value_and_grad",
    "backprop",
    "checkpoint",
    "data",
    "data_parallel_mesh",
    "extensions",
    "forward",
    "get_activation",
    "get_loss",
    "loss",
    "manual_value_and_grad",
    "per_example_grads",
    "privacy",
    "train",
    "verify",
    "verify_activation",
    "verify_curvature",
    "verify_extensions",
    "verify_loss",
    "verify_spectra",
]
