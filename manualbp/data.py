"""Data for manualbp: random batches shaped for any net.

`random_batch` draws inputs and targets that suit a net's loss, for checking
gradients on nets that have no dataset of their own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from manualbp import losses
from manualbp.network import MLP

Array = jax.Array


def random_batch(net: MLP, key: Array, batch: int, dtype=jnp.float32) -> tuple[Array, Array]:
    """X ~ N(0, 1) of shape (B, N_1) and targets Y that suit the net's loss.

    Targets: integer class labels (B,) for cross-entropy (with N_L > 1),
    0/1 values (B, N_L) for binary cross-entropy, N(0, 1) values (B, N_L)
    otherwise.
    """
    key_X, key_Y = jax.random.split(key)
    N_1, N_L = net.sizes[0], net.sizes[-1]
    X = jax.random.normal(key_X, (batch, N_1), dtype)
    if net.cost is losses.cross_entropy and N_L > 1:
        Y = jax.random.randint(key_Y, (batch,), 0, N_L)
    elif net.cost is losses.cross_entropy:
        Y = jnp.ones((batch, 1), dtype)
    elif net.cost is losses.binary_cross_entropy:
        Y = jax.random.bernoulli(key_Y, 0.5, (batch, N_L)).astype(dtype)
    else:
        Y = jax.random.normal(key_Y, (batch, N_L), dtype)
    return X, Y
