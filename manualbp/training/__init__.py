"""Training with the hand-derived gradients: `train`, its compiled programs, the shuffle."""

from manualbp.training.loop import (
    GRAD_PATHS,
    DivergenceError,
    TrainResult,
    data_parallel_mesh,
    train,
)
from manualbp.training.privacy import DPSGD
from manualbp.training.shuffle import permutation

__all__ = [
    "DPSGD",
    "GRAD_PATHS",
    "DivergenceError",
    "TrainResult",
    "data_parallel_mesh",
    "permutation",
    "train",
]
