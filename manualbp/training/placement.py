"""Where a run's arrays live: one device, or replicated over a data-parallel mesh.

The epoch donates its params and opt_state, so the run places copies and
never the caller's arrays; the key is placed like the arrays, since an input
placed unlike the epoch's own outputs would compile a second epoch program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from manualbp.network import MLP, as_targets

Array = jax.Array


def data_parallel_mesh(devices=None) -> Mesh:
    """A one-axis mesh ``("batch",)`` over ``devices`` (default: all), with Auto axis types."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh(
        (len(devices),), ("batch",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


def shardings(mesh: Mesh | None) -> tuple[NamedSharding | None, NamedSharding | None]:
    """(replicated, batch-sharded) over ``mesh``, or (None, None) on one device."""
    if mesh is None:
        return None, None
    return NamedSharding(mesh, PartitionSpec()), NamedSharding(
        mesh, PartitionSpec(mesh.axis_names, None)
    )


def place_data(net: MLP, X, Y, dtype, sharding) -> tuple[Array, Array]:
    """Inputs in the parameters' dtype and targets in the loss's form, placed by ``sharding``."""
    return place(X, sharding, dtype=dtype), place(as_targets(net, jnp.asarray(Y), dtype), sharding)


def place(tree, sharding, *, dtype=None, copy=False):
    """Every leaf on the default device, or laid out by ``sharding``; cast to ``dtype`` if given.

    On one device a leaf already there, in its dtype, is used as it is unless
    ``copy`` (no trip through host memory); from a mesh's process-local data
    every leaf is a new array.
    """
    if dtype is not None:
        tree = jax.tree.map(lambda x: x.astype(dtype, copy=False), tree)
    if sharding is None:
        device = default_device()
        return jax.tree.map(lambda x: jax.device_put(x, device, may_alias=not copy), tree)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x)),
        tree,
    )


def place_key(key, sharding):
    """The key on the default device, or replicated over the mesh (of one or more processes)."""
    if sharding is None:
        return jax.device_put(key, default_device())
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):  # a raw uint32 key
        return place(key, sharding)
    # device_put refuses a sharding over other processes' devices: place the key's data
    # the way the arrays are placed, then view it as a key again.
    data = place(jax.random.key_data(key), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(key))


def default_device():
    """Where JAX puts new arrays: ``jax_default_device`` if set, else the first device."""
    default = jax.config.jax_default_device
    if isinstance(default, str):  # a platform name
        return jax.devices(default)[0]
    return default if default is not None else jax.devices()[0]
