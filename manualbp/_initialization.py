"""What `MLP` is built from: the checked layer widths, and the random draw of `MLP.init`."""

from __future__ import annotations

import functools
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from manualbp.parameters import Layer, Params

Array = jax.Array


INIT_SCHEMES = ("lecun", "glorot", "he", "nielsen", "nielsen_scaled")
"""Weight initializations; see `MLP.init`."""


# The jit stays here rather than in `_entry.entry_point`: that helper builds the functions
# of (net, params, X, Y), checking them and casting into the parameters' dtype and back,
# while init takes none of those (`MLP.init` checks its own arguments); and `_entry` imports
# network, which imports this module, so importing it here would be a cycle. The jit also
# fixes the values: the whole draw compiled as one program (sizes, dtype, scheme static)
# gives other bits than the same operations run one by one, and every stored value starts
# from it.
@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def draw(sizes: tuple[int, ...], key: Array, dtype, scheme: str) -> Params:
    """`MLP.init`'s draw: one key per layer l = 2..L, W^l scaled by the scheme, b^l."""
    params = []
    keys = jax.random.split(key, len(sizes) - 1)
    for key_l, n_in, n_out in zip(keys, sizes[:-1], sizes[1:], strict=True):
        key_W, key_b = jax.random.split(key_l)
        W_std = {
            "lecun": (1 / n_in) ** 0.5,
            "glorot": (2 / (n_in + n_out)) ** 0.5,
            "he": (2 / n_in) ** 0.5,
            "nielsen": 1.0,
            "nielsen_scaled": (1 / n_in) ** 0.5,
        }[scheme]
        W = W_std * jax.random.normal(key_W, (n_out, n_in), dtype)
        if scheme.startswith("nielsen"):
            b = jax.random.normal(key_b, (n_out,), dtype)
        else:
            b = jnp.zeros((n_out,), dtype)
        params.append(Layer(W, b))
    return tuple(params)


def check_sizes(sizes) -> tuple[int, ...]:
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise TypeError(
            f"sizes: expected a sequence of layer widths (N_1, ..., N_L), got {sizes!r}"
        )
    if len(sizes) < 2:
        raise ValueError(
            f"sizes: expected at least two layers (input and output), got {tuple(sizes)}"
        )
    for l, n in enumerate(sizes, start=1):
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(
                f"sizes: expected positive integer widths, got N_{l} = {n!r} in {tuple(sizes)}"
            )
    return tuple(int(n) for n in sizes)
