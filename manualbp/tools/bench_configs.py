"""The benchmark's networks and what they cost: the configurations and their FLOP counts.

FLOP count (float32 multiply-adds counted as 2 FLOPs; elementwise work, the
loss, σ and σ' are not counted). For a layer l with n_out = N_l, n_in = N_{l-1}
and a batch of B:

* forward, Z^l = A^{l-1} (W^l)ᵀ:          2 B n_out n_in
* eq. (2), ∂E/∂W^l = (Δ^l)ᵀ A^{l-1}:        2 B n_out n_in
* eq. (1), Δ^{l-1} = Δ^l W^l ⊙ σ':          2 B n_out n_in, for every layer but the
  first (l = 2), whose δ^1 (the gradient with respect to the input) is not needed.

So value-and-grad costs Σ_l 2 B N_l N_{l-1} (3 − [l = 2]) FLOPs, the same work for
the manual and the autodiff path. Per-example gradients do the forward and
eq. (1) matmuls and B outer products δ^l (a^{l-1})ᵀ of N_l N_{l-1} multiplies
each: Σ_l B N_l N_{l-1} (5 − 2 [l = 2]).

Import them from `manualbp.tools.bench`, which re-exports every one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import manualbp as mbp


@dataclasses.dataclass(frozen=True)
class Config:
    """One benchmark network and batch size (float32)."""

    name: str
    sizes: tuple[int, ...]
    hidden: str
    output: str
    loss: str
    batch: int
    paired_peak: bool = False
    """Time the matmul peak in the same rounds (the configuration with a target on it)."""

    def net(self) -> mbp.MLP:
        return mbp.MLP(self.sizes, hidden=self.hidden, output=self.output, loss=self.loss)


CONFIGS = (
    Config("small", (64, 32, 10), "tanh", "softmax", "cross_entropy", 128),
    Config("nielsen", (784, 30, 10), "sigmoid", "sigmoid", "mse", 10),
    Config("regression", (1, 64, 64, 1), "tanh", "identity", "mse", 1024),
    Config("medium", (784, 512, 512, 10), "relu", "softmax", "cross_entropy", 512),
    Config("deep", (784,) + (256,) * 8 + (10,), "tanh", "softmax", "cross_entropy", 256),
    Config("large", (1024, 2048, 2048, 1024), "gelu", "identity", "mse", 1024, paired_peak=True),
)
CONFIGS_BY_NAME = {c.name: c for c in CONFIGS}
QUICK_CONFIGS = ("small", "nielsen", "regression")
"""What ``--quick`` times: the configurations whose calls take milliseconds."""

TRAINING = Config("nielsen", (784, 30, 10), "sigmoid", "sigmoid", "mse", 10)
"""The training benchmark: Nielsen's chapter-1 network and SGD with η = 3."""
TRAINING_ETA = 3.0
TRAINING_BATCHES = (10, 100)
"""Mini-batch sizes for the training rows: the textbook's 10, and 100."""
TRAINING_EPOCHS = 3
"""Epochs per timed `train` call: a run's one-time setup (input checks, placing the
data on the device) is shared by its epochs, as in real use."""


def value_and_grad_flops(sizes: Sequence[int], batch: int) -> dict[str, int]:
    """Matmul FLOPs of one value-and-grad: forward, eq. (1) and eq. (2), and their total."""
    layers = list(zip(sizes[:-1], sizes[1:], strict=True))  # (n_in, n_out) for l = 2..L
    forward = sum(2 * batch * n_out * n_in for n_in, n_out in layers)
    eq2 = forward
    eq1 = sum(2 * batch * n_out * n_in for n_in, n_out in layers[1:])
    return {"forward": forward, "eq1": eq1, "eq2": eq2, "total": forward + eq1 + eq2}


def per_example_flops(sizes: Sequence[int], batch: int) -> int:
    """FLOPs of per-example gradients: forward and eq. (1) matmuls, B outer products for eq. (2)."""
    counts = value_and_grad_flops(sizes, batch)
    outer = sum(batch * n_out * n_in for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True))
    return counts["forward"] + counts["eq1"] + outer


def per_example_shapes(sizes: Sequence[int], batch: int) -> list[tuple[int, ...]]:
    """Shapes of the per-example gradients: (B, N_l, N_{l-1}) and (B, N_l) for each layer."""
    layers = zip(sizes[:-1], sizes[1:], strict=True)
    return [shape for n_in, n_out in layers for shape in ((batch, n_out, n_in), (batch, n_out))]


def per_example_bytes(sizes: Sequence[int], batch: int, itemsize: int = 4) -> int:
    """Bytes of the materialized per-example gradients (every W^l and b^l, B times)."""
    return sum(math.prod(shape) for shape in per_example_shapes(sizes, batch)) * itemsize
