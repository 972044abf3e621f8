"""Training with the hand-derived gradients: `train`, its compiled programs, the shuffle."""

from manualbp.training import privacy
from manualbp.training.arguments import GRAD_PATHS
from manualbp.training.dpsgd import DPSGD
from manualbp.training.history import DivergenceError
from manualbp.training.loop import TrainResult, train
from manualbp.training.placement import data_parallel_mesh
from manualbp.training.shuffle import permutation

__all__ = [
    "DPSGD",
    "GRAD_PATHS",
    "DivergenceError",
    "TrainResult",
    "data_parallel_mesh",
    "permutation",
    "privacy",
    "train",
]
