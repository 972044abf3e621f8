"""`train`'s arguments: the settings record, and every check made before anything runs.

Each check raises one clear error (what was expected, what came) and returns
the value normalized (Python ints, a numpy dtype), so the loop never sees a
raw argument.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from manualbp import validation
from manualbp.parameters import param_dtype
from manualbp.training import accounting, dpsgd

GRAD_PATHS = ("manual", "autodiff")


class Settings(NamedTuple):
    """`train`'s keyword settings that shape the run (see `train` for each)."""

    epochs: int
    batch_size: int
    grad: str
    check_every: int | None
    mesh: Mesh | None
    compute_dtype: Any
    shuffle: bool
    eval_data: tuple | None
    privacy: Any


def check_arguments(net, params, optimizer, X, Y, key, settings: Settings):
    """(X, Y) as the math will see them, and the settings checked and normalized."""
    X, Y = validation.check_batch(net, params, X, Y)
    validation.check_key(key)
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            "optimizer: expected an optax GradientTransformation such as optax.sgd(0.1), got "
            f"{type(optimizer).__name__}"
        )
    settings = check_settings(settings, X.shape[0])
    dtype = param_dtype(params)
    compute_dtype = check_compute_dtype(settings.compute_dtype, dtype)
    validation.check_blocks(net, compute_dtype)
    validation.check_finite(X, Y, dtypes=(dtype, compute_dtype))
    return X, Y, settings._replace(compute_dtype=compute_dtype)


def check_settings(settings: Settings, n: int) -> Settings:
    """The integer settings as Python ints, the gradient path, the mesh and privacy checked."""
    if settings.grad not in GRAD_PATHS:
        raise ValueError(f"grad: expected one of {', '.join(GRAD_PATHS)}, got {settings.grad!r}")
    epochs = _check_integer("epochs", settings.epochs, 0)
    batch_size = _check_integer("batch_size", settings.batch_size, 1)
    if batch_size > n:
        raise ValueError(
            f"batch_size: expected at most the {n} training examples, got {batch_size}"
        )
    check_every = settings.check_every
    if check_every is not None:
        check_every = _check_integer("check_every", check_every, 1, "a positive integer or None")
    _check_mesh(settings.mesh, batch_size)
    dpsgd.check(settings.privacy, settings.grad, settings.shuffle)
    dpsgd.check_held_out(settings.privacy, check_every, settings.eval_data)
    dpsgd.check_mesh(settings.privacy, batch_size, settings.mesh)
    if settings.privacy is not None:
        accounting.check_installed()
    return settings._replace(epochs=epochs, batch_size=batch_size, check_every=check_every)


def _check_integer(name: str, value, low: int, expected: str | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}: expected {expected or f'an integer ≥ {low}'}, got {value!r}")
    return int(value)


def _check_mesh(mesh, batch_size: int) -> None:
    if mesh is None:
        return
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh: expected a jax.sharding.Mesh, got {type(mesh).__name__}")
    if any(t != jax.sharding.AxisType.Auto for t in mesh.axis_types):
        raise ValueError(
            f"mesh: expected Auto axis types, got {mesh.axis_types}; build it with "
            "mbp.data_parallel_mesh() or jax.make_mesh(..., "
            "axis_types=(jax.sharding.AxisType.Auto,))"
        )
    if batch_size % mesh.size:
        raise ValueError(
            f"batch_size: expected a multiple of the mesh's {mesh.size} devices, got {batch_size}"
        )


def check_compute_dtype(compute_dtype, param_dtype):
    """The compute dtype as a numpy dtype; None means the parameters' own."""
    if compute_dtype is None:
        return jnp.dtype(param_dtype)
    try:
        compute_dtype = jnp.dtype(compute_dtype)
    except TypeError as e:
        raise TypeError(f"compute_dtype: expected a floating dtype, got {compute_dtype!r}") from e
    if not jnp.issubdtype(compute_dtype, jnp.floating):
        raise TypeError(f"compute_dtype: expected a floating dtype, got {compute_dtype}")
    return compute_dtype


def check_eval_data(net, params, eval_data):
    """(X_test, Y_test) checked like the training data; errors name ``eval_data``."""
    if not (isinstance(eval_data, (tuple, list)) and len(eval_data) == 2):
        raise TypeError("eval_data: expected a pair (X_test, Y_test)")
    X_test, Y_test = eval_data
    try:
        X_test, Y_test = validation.check_batch(net, params, X_test, Y_test)
        validation.check_finite(X_test, Y_test, dtypes=(param_dtype(params),))
    except (ValueError, TypeError) as e:
        raise type(e)(f"eval_data: {e}") from e
    return X_test, Y_test
