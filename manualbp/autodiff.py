"""The witness: gradients of the same loss by JAX's automatic differentiation.

Nothing in the manual path imports this module; it exists so that manual and
automatic gradients of one and the same `network.batch_loss` can be compared.
"""

from __future__ import annotations

import jax

from manualbp.network import MLP, Params, batch_loss

Array = jax.Array


def value_and_grad(net: MLP, params: Params, X: Array, Y: Array) -> tuple[Array, Params]:
    """The batch mean of E and its gradient with respect to params, by `jax.value_and_grad`."""
    return jax.value_and_grad(batch_loss, argnums=1)(net, params, X, Y)
