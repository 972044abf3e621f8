"""Checks at manualbp's public boundary: clear errors instead of silent broadcasts.

Shape and dtype checks read only static information, so they cost nothing
under `jax.jit` and also run when the arrays are tracers. Checks of values
(label range, finiteness) need concrete arrays: they run on concrete inputs
and are skipped for tracers, i.e. inside a user's own `jit`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from manualbp.network import MLP, Layer, Params, check_key, check_x64

__all__ = [
    "check_batch",
    "check_finite",
    "check_inputs",
    "check_key",
    "check_params",
    "check_targets",
]


@functools.cache
def _kind(dtype) -> str:
    """The kind of a dtype (floating, integer, bool or other), by `jnp.issubdtype`.

    The checks run on every call, and for a small net their cost is the
    call's; a dtype's kind never changes, so it is looked up once.
    """
    for kind, name in ((jnp.floating, "floating"), (jnp.integer, "integer"), (jnp.bool_, "bool")):
        if jnp.issubdtype(dtype, kind):
            return name
    return "other"


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _shape_of(x, argument: str) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    if shape is None or not hasattr(x, "dtype"):
        raise TypeError(f"{argument}: expected an array, got {type(x).__name__}")
    return tuple(shape)


def check_net(net) -> None:
    if not isinstance(net, MLP):
        raise TypeError(f"net: expected an mbp.MLP, got {type(net).__name__}")


def check_params(net: MLP, params: Params) -> None:
    """params must be one (W, b) pair per layer l = 2..L with the net's shapes."""
    if not isinstance(params, (tuple, list)):
        raise TypeError(
            f"params: expected a tuple of layers (W, b) as net.init returns, "
            f"got {type(params).__name__}"
        )
    if len(params) != net.L - 1:
        raise ValueError(
            f"params: expected {net.L - 1} layers for sizes={net.sizes}, got {len(params)}"
        )
    if not isinstance(params, tuple):
        raise TypeError(
            "params: expected a tuple of mbp.Layer(W, b) as net.init returns, got a list; "
            "pass tuple(params)"
        )
    for k, layer in enumerate(params):
        l = k + 2
        if not isinstance(layer, Layer):
            raise TypeError(
                f"params[{k}] (layer l={l}): expected an mbp.Layer(W, b), got "
                f"{type(layer).__name__}; wrap a pair as mbp.Layer(W, b)"
            )
        W, b = layer
        expected_W = (net.sizes[k + 1], net.sizes[k])
        expected_b = (net.sizes[k + 1],)
        for name, x, expected in (("W", W, expected_W), ("b", b, expected_b)):
            shape = _shape_of(x, f"params[{k}].{name}")
            if shape != expected:
                raise ValueError(
                    f"params[{k}].{name} (layer l={l}): expected shape {expected} for "
                    f"sizes={net.sizes}, got {shape}"
                )
            if _kind(x.dtype) != "floating":
                raise TypeError(
                    f"params[{k}].{name} (layer l={l}): expected a floating dtype, got {x.dtype}"
                )
            check_x64(x.dtype, f"params[{k}].{name} (layer l={l})")


def check_inputs(net: MLP, X) -> None:
    """X must be (B, N_1) with B ≥ 1."""
    shape = _shape_of(X, "X")
    if len(shape) != 2 or shape[1] != net.sizes[0]:
        raise ValueError(
            f"X: expected shape (B, N_1) = (B, {net.sizes[0]}) for sizes={net.sizes}, got {shape}"
        )
    if shape[0] == 0:
        raise ValueError("X: the batch is empty (B = 0); expected at least one example")
    if _kind(X.dtype) not in ("floating", "integer"):
        raise TypeError(f"X: expected a numeric dtype, got {X.dtype}")


def check_targets(net: MLP, X, Y) -> None:
    """Y must be (B, N_L), integer labels (B,) when N_L > 1, or (B,) when N_L = 1."""
    shape = _shape_of(Y, "Y")
    B, N_L = X.shape[0], net.sizes[-1]
    if _kind(Y.dtype) == "other":
        raise TypeError(f"Y: expected integer, boolean or floating values, got {Y.dtype}")
    if len(shape) == 0 or shape[0] != B:
        raise ValueError(f"Y: expected {B} rows, as X has, got shape {shape}")
    integer = _kind(Y.dtype) == "integer"
    if len(shape) == 2:
        if shape[1] != N_L:
            raise ValueError(f"Y: expected shape (B, N_L) = ({B}, {N_L}), got {shape}")
        return
    if len(shape) != 1:
        raise ValueError(f"Y: expected shape (B, N_L) = ({B}, {N_L}), got {shape}")
    if N_L == 1:
        return  # documented: a vector (B,) is the column (B, 1)
    if not integer:
        raise ValueError(
            f"Y: got shape {shape} of {Y.dtype} for N_L = {N_L} outputs; expected targets of "
            f"shape ({B}, {N_L}), or integer class labels of shape ({B},)"
        )
    if _is_concrete(Y):
        labels = np.asarray(Y)
        if labels.min() >= 0 and labels.max() < N_L:
            return
        bad = (labels < 0) | (labels >= N_L)
        if bad.any():
            raise ValueError(
                f"Y: class labels must lie in 0..{N_L - 1} for N_L = {N_L} outputs; got "
                f"{labels[bad][0]} at row {int(np.flatnonzero(bad)[0])}"
            )


def check_batch(net: MLP, params: Params, X, Y=None) -> None:
    """Every static check for one call: net, params, X and (if given) Y."""
    check_net(net)
    check_params(net, params)
    check_inputs(net, X)
    if Y is not None:
        check_targets(net, X, Y)


def check_finite(X, Y=None) -> None:
    """Reject inf or NaN in concrete X or Y (an inf input gives NaN gradients)."""
    for name, x in (("X", X), ("Y", Y)):
        if x is None or not _is_concrete(x) or not jnp.issubdtype(x.dtype, jnp.floating):
            continue
        finite = np.isfinite(np.asarray(x))
        if not finite.all():
            row = int(np.argwhere(~finite)[0][0])
            raise ValueError(f"{name}: expected finite values, found inf or NaN in row {row}")
