"""The parameters of a net: one `Layer` (W^l, b^l) per layer l = 2..L, and their dtype.

Below both network.py and validation.py, so that the net's description can
use the argument checks and the checks can know a `Layer` without either
importing the other. ``params[k]`` is layer l = k + 2 (docs/derivation.md).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class Layer(NamedTuple):
    """The parameters of one layer l: W^l (N_l, N_{l-1}) and b^l (N_l,)."""

    W: Array
    b: Array


Params = tuple[Layer, ...]


def param_dtype(params: Params):
    """The dtype the math runs in: the promoted dtype of every W^l and b^l."""
    with jax.numpy_dtype_promotion("standard"):  # a user's strict setting must not stop this
        return jnp.result_type(*jax.tree.leaves(params))
