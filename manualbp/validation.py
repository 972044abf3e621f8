"""Checks at manualbp's public boundary: clear errors instead of silent broadcasts.

Shape and dtype checks read only static information, so they cost nothing
under `jax.jit` and also run when the arrays are tracers. Checks of values
(label range, target range, finiteness) need concrete arrays: they run on
concrete inputs and are skipped for tracers, i.e. inside a user's own `jit`.

Inputs: a JAX or NumPy array is used as it is; anything else that
`np.asarray` turns into a numeric array (a pandas Series or DataFrame, a
list, an object with ``__array__``) is converted once, here, so every entry
point accepts the same things.

Building blocks: `check_blocks`, `check_activation` and `check_loss` (written
in `manualbp._block_checks`, exported here with the rest) trace each σ, σ'
and the loss abstractly and check what they return.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from manualbp import losses
from manualbp._block_checks import check_activation, check_blocks, check_loss
from manualbp.parameters import Layer, Params, param_dtype

__all__ = [
    "as_array",
    "check_activation",
    "check_batch",
    "check_blocks",
    "check_finite",
    "check_inputs",
    "check_key",
    "check_loss",
    "check_params",
    "check_targets",
    "check_x64",
    "dtype_kind",
]


@functools.cache
def dtype_kind(dtype) -> str:
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


def as_array(x, argument: str):
    """``x`` itself if it is a JAX or NumPy array, else ``np.asarray(x)`` if that is numeric.

    Raises:
        TypeError: naming ``argument``, for anything without a numeric array form.
    """
    if isinstance(x, (jax.Array, np.ndarray)):  # tracers are jax.Arrays too
        return x
    try:
        array = np.asarray(x)
    except (TypeError, ValueError) as e:  # ragged lists, objects np.asarray refuses
        array, reason = None, str(e)
    else:
        reason = f"np.asarray gives dtype {array.dtype}"
    if array is None or dtype_kind(array.dtype) == "other":
        raise TypeError(
            f"{argument}: expected an array, or anything np.asarray turns into a numeric "
            f"array; got {type(x).__name__} ({reason})"
        )
    return array


def _shape_of(x, argument: str) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    if shape is None or not hasattr(x, "dtype"):
        raise TypeError(f"{argument}: expected an array, got {type(x).__name__}")
    return tuple(shape)


def check_net(net) -> None:
    """net must be an `mbp.MLP`, known here by its fields: this module sits below network.py,
    whose `MLP.init` uses `check_key`, so it cannot import the class."""
    if not all(hasattr(net, field) for field in _NET_FIELDS):
        raise TypeError(f"net: expected an mbp.MLP, got {type(net).__name__}")


_NET_FIELDS = ("sizes", "activations", "loss", "fused")


def check_x64(dtype, argument: str) -> None:
    """A 64-bit dtype needs JAX's x64 mode; without it JAX silently computes in 32 bits."""
    if np.dtype(dtype).itemsize == 8 and not jax.config.jax_enable_x64:
        raise TypeError(
            f"{argument}: got {np.dtype(dtype)}, but JAX's x64 mode is off, so it would "
            "silently become float32; enable it first with "
            'jax.config.update("jax_enable_x64", True) (or JAX_ENABLE_X64=1), or pass float32'
        )


def check_key(key) -> None:
    """One jax.random key: a typed key of shape () or a raw uint32 key of shape (2,)."""
    typed = isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    raw = isinstance(key, jax.Array) and key.dtype == jnp.uint32 and key.shape == (2,)
    if not ((typed and key.shape == ()) or raw):
        raise TypeError(
            f"key: expected one jax.random key such as jax.random.key(0), got "
            f"{type(key).__name__} {getattr(key, 'shape', '')}".rstrip()
        )


def check_params(net, params: Params) -> set:
    """params must be one (W, b) pair per layer l = 2..L with the net's shapes.

    Returns:
        The set of the parameters' dtypes.
    """
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
    # The checks run on every public call, and for a small net their cost is the
    # call's: each array's shape and dtype are read once, and no error text is
    # formatted unless there is an error.
    x64, dtypes = jax.config.jax_enable_x64, set()
    for k, layer in enumerate(params):
        l = k + 2
        if not isinstance(layer, Layer):
            raise TypeError(
                f"params[{k}] (layer l={l}): expected an mbp.Layer(W, b), got "
                f"{type(layer).__name__}; wrap a pair as mbp.Layer(W, b)"
            )
        n_out, n_in = net.sizes[k + 1], net.sizes[k]
        for name, x, expected in (("W", layer.W, (n_out, n_in)), ("b", layer.b, (n_out,))):
            shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
            if shape is None or dtype is None:
                raise TypeError(f"params[{k}].{name}: expected an array, got {type(x).__name__}")
            if tuple(shape) != expected:
                raise ValueError(
                    f"params[{k}].{name} (layer l={l}): expected shape {expected} for "
                    f"sizes={net.sizes}, got {tuple(shape)}"
                )
            if dtype_kind(dtype) != "floating":
                raise TypeError(
                    f"params[{k}].{name} (layer l={l}): expected a floating dtype, got {dtype}"
                )
            if dtype.itemsize == 8 and not x64:
                check_x64(dtype, f"params[{k}].{name} (layer l={l})")
            dtypes.add(dtype)
    return dtypes


def check_inputs(net, X) -> None:
    """X must be (B, N_1) with B ≥ 1."""
    shape = _shape_of(X, "X")
    if len(shape) != 2 or shape[1] != net.sizes[0]:
        raise ValueError(
            f"X: expected shape (B, N_1) = (B, {net.sizes[0]}) for sizes={net.sizes}, got {shape}"
        )
    if shape[0] == 0:
        raise ValueError("X: the batch is empty (B = 0); expected at least one example")
    if dtype_kind(X.dtype) not in ("floating", "integer"):
        raise TypeError(f"X: expected a numeric dtype, got {X.dtype}")


def check_targets(net, X, Y) -> None:
    """Y must be (B, N_L), integer labels (B,) when N_L > 1, or (B,) when N_L = 1."""
    shape = _shape_of(Y, "Y")
    B, N_L = X.shape[0], net.sizes[-1]
    if dtype_kind(Y.dtype) == "other":
        raise TypeError(f"Y: expected integer, boolean or floating values, got {Y.dtype}")
    if len(shape) == 0 or shape[0] != B:
        raise ValueError(f"Y: expected {B} rows, as X has, got shape {shape}")
    integer = dtype_kind(Y.dtype) == "integer"
    if len(shape) == 2:
        if shape[1] != N_L:
            raise ValueError(f"Y: expected shape (B, N_L) = ({B}, {N_L}), got {shape}")
        _check_target_range(net, Y)
        return
    if len(shape) != 1:
        raise ValueError(f"Y: expected shape (B, N_L) = ({B}, {N_L}), got {shape}")
    if N_L == 1:
        _check_target_range(net, Y)  # documented: a vector (B,) is the column (B, 1)
        return
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


# The targets each loss is defined for: E of binary cross-entropy is a mean of
# log-likelihoods only for y in [0, 1] (labels {0, 2} train to a negative loss), and
# cross-entropy's −Σ y_j log ŷ_j is bounded below only for y_j ≥ 0.
_TARGET_RANGES = {
    losses.binary_cross_entropy: (
        0,
        1,
        "binary cross-entropy targets must lie in [0, 1] (0/1 labels or probabilities)",
    ),
    losses.cross_entropy: (
        0,
        np.inf,
        "cross-entropy targets must be non-negative (one-hot rows or class probabilities)",
    ),
}


def _check_target_range(net, Y) -> None:
    """Concrete targets (B, N_L) or (B,) must lie where the loss is defined; NaN is left
    to `check_finite`."""
    if net.loss not in _TARGET_RANGES or not _is_concrete(Y):
        return
    low, high, rule = _TARGET_RANGES[net.loss]
    y = np.asarray(Y)
    if y.min() >= low and y.max() <= high:
        return
    bad = (y < low) | (y > high)
    if bad.any():
        where = np.argwhere(bad)[0]
        raise ValueError(f"Y: {rule}; got {y[tuple(where)]} in row {int(where[0])}")


def check_batch(net, params: Params, X, Y=None):
    """Every static check for one call: net, params, X, (if given) Y, and the net's σ'
    and ∂E/∂ŷ in the parameters' dtype.

    Returns:
        (X, Y) as arrays (`as_array`); Y stays None when not given.
    """
    check_net(net)
    dtypes = check_params(net, params)
    X = as_array(X, "X")
    check_inputs(net, X)
    # One dtype, the common case, needs no promotion (param_dtype costs 15 µs a call).
    check_blocks(net, dtypes.pop() if len(dtypes) == 1 else param_dtype(params))
    if Y is not None:
        Y = as_array(Y, "Y")
        check_targets(net, X, Y)
    return X, Y


def check_finite(X, Y=None, dtypes=()) -> None:
    """Reject inf or NaN in concrete X or Y, as the math will see them.

    Args:
        X, Y: the batch (Y may be None).
        dtypes: the dtypes the values are cast to, in order (the parameters',
            then a compute dtype): 1e39 is finite in float64 but inf in
            float32, so the check runs after the casts. Integer X is checked
            only after a cast (float16 holds no more than 65504).
    """
    for name, x in (("X", X), ("Y", Y)):
        if x is None or not _is_concrete(x):
            continue
        kind = dtype_kind(x.dtype)
        if not (kind == "floating" or (kind == "integer" and name == "X" and dtypes)):
            continue
        values = cast = np.asarray(x)
        with np.errstate(over="ignore", invalid="ignore"):
            for dtype in dtypes:
                cast = cast.astype(dtype, copy=False)
        finite = np.isfinite(cast)
        if finite.all():
            continue
        where = tuple(np.argwhere(~finite)[0])
        value = values[where]
        if np.isfinite(value):
            chain = " then ".join(str(np.dtype(d)) for d in dtypes)
            raise ValueError(
                f"{name}: {value} in row {where[0]} is finite in {values.dtype} but becomes "
                f"{cast[where]} when cast to {chain}, the dtype the math runs in; rescale {name}"
            )
        raise ValueError(f"{name}: expected finite values, found inf or NaN in row {where[0]}")
