"""What makes two runs the same: their fingerprint, down to the data's content and the code.

A run's `fingerprint` records the net (widths, σ names, loss, fusion) and its
plug-ins' code (`code_identity` of every σ, σ', E and ∂E/∂ŷ), every parameter's
path, shape and dtype, the optimizer state's tree structure with its leaves'
shapes and dtypes, the run's settings (batch size, gradient path, compute dtype,
the starting key), the data's shapes, dtypes and content hashes
(`data_identity`), and what the caller passed (`caller_identity`): the starting
parameters' content and the optimizer's behaviour, seen through its updates on
two fixed probe gradients (another learning rate, β or weight decay changes
them; two optimizers whose updates agree on the probe cannot be told apart).

A checkpoint stores the fingerprint (`manualbp.training.checkpoint`), so a run
resumes only on the data it started with, with the σ, σ' and E it was trained
with and with the settings the caller passes now; `differences` names what
differs. With several processes, `check_processes_agree` gathers a hash of each
part from every process once, before training, and names the first part on
which they disagree.

Data: the shape, the dtype and a SHA-1 of every byte (a content hash, not a
security measure). Hashing all of it, not a sample, catches a change to one
example; on 60000 × 784 float32 (MNIST, 188 MB) it took 0.1 to 0.25 s on one
CPU core, once per `train` call with a ``checkpoint_dir``.

Code: a function is identified by what it computes as far as Python can
tell without running it: its bytecode, constants, the global names it reads
and the values it closes over (recursively for nested functions), its
defaults, and for a `functools.partial` its arguments. Functions of JAX,
NumPy and manualbp itself (``jnp.tanh``, ``jax.nn.sigmoid``, the built-in
σ') are identified by their qualified names, so a resume never depends on
those libraries' internals; so are callable objects other than functions (by
their type). Not seen: a change to a global the function
reads (its name is recorded, not its value), and bytecode changes between
Python versions read as different code.
"""

from __future__ import annotations

import functools
import hashlib
import math
import types
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

LIBRARIES = ("jax", "jaxlib", "numpy", "manualbp")
"""Modules whose functions are identified by name (see the module docstring)."""

_DEPTH = 8  # closures nested deeper than this (or recursive ones) are named, not read


def data_identity(x: np.ndarray) -> dict:
    """Shape, dtype and SHA-1 of a NumPy array's bytes."""
    values = np.ascontiguousarray(x)
    return {
        "shape": list(values.shape),
        "dtype": str(values.dtype),
        "sha1": hashlib.sha1(memoryview(values).cast("B"), usedforsecurity=False).hexdigest(),
    }


def code_identity(fn) -> str | None:
    """A short hash of what ``fn`` computes (None for None); see the module docstring."""
    if fn is None:
        return None
    return hashlib.sha1(_describe(fn, 0).encode(), usedforsecurity=False).hexdigest()[:16]


def _describe(value, depth: int) -> str:
    """A text that is the same in every process for the same code and values."""
    if depth > _DEPTH:
        return f"<{type(value).__qualname__}>"
    if isinstance(value, functools.partial):
        args = ",".join(_describe(a, depth + 1) for a in value.args)
        keywords = ",".join(f"{k}={_describe(v, depth + 1)}" for k, v in value.keywords.items())
        return f"partial({_describe(value.func, depth + 1)};{args};{keywords})"
    if isinstance(value, types.MethodType):
        return f"method({_describe(value.__func__, depth + 1)})"
    if callable(value) and not isinstance(value, type):
        module = getattr(value, "__module__", None) or ""
        name = (
            getattr(value, "__qualname__", None)
            or getattr(value, "__name__", None)
            or type(value).__qualname__
        )
        if module.split(".")[0] in LIBRARIES or not hasattr(value, "__code__"):
            return f"{module}.{name}"
        return _describe_function(value, depth)
    return _describe_value(value, depth)


def _describe_function(fn, depth: int) -> str:
    cells = [cell.cell_contents for cell in fn.__closure__ or ()]
    parts = [
        _describe_code(fn.__code__, fn.__doc__),
        ",".join(_describe(c, depth + 1) for c in cells),
        ",".join(_describe(d, depth + 1) for d in fn.__defaults__ or ()),
        ",".join(f"{k}={_describe(v, depth + 1)}" for k, v in (fn.__kwdefaults__ or {}).items()),
    ]
    return "function(" + ";".join(parts) + ")"


def _describe_code(code: types.CodeType, doc: str | None) -> str:
    consts = [
        _describe_code(c, None) if isinstance(c, types.CodeType) else _describe_value(c, 0)
        for c in code.co_consts
        if doc is None or c is not doc  # a docstring is not behaviour
    ]
    return f"code({code.co_code.hex()};{','.join(consts)};{','.join(code.co_names)})"


def _describe_value(value, depth: int) -> str:
    if value is None or isinstance(value, (bool, int, str, bytes, complex)):
        return repr(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(_describe(v, depth + 1) for v in value) + "]"
    if isinstance(value, frozenset | set):  # set order follows string hashing, which varies
        return "{" + ",".join(sorted(_describe(v, depth + 1) for v in value)) + "}"
    if isinstance(value, dict):
        items = sorted(
            f"{_describe(k, depth + 1)}:{_describe(v, depth + 1)}" for k, v in value.items()
        )
        return "{" + ",".join(items) + "}"
    if isinstance(value, (np.ndarray, np.generic, jax.Array)) and not isinstance(
        value, jax.core.Tracer
    ):
        return f"array({data_identity(np.asarray(value))})"
    # Anything else by its type alone: a repr may hold a memory address.
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


# --- the fingerprint of a run ------------------------------------------------------------


def dtype_of(x) -> np.dtype:
    return np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype


def describe_leaves(tree) -> list[list]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [[jax.tree_util.keystr(path), list(np.shape(x)), str(dtype_of(x))] for path, x in flat]


PARTS = ("net", "code", "params", "opt_state", "run", "data")


def fingerprint(
    net, params, opt_state, run: dict, data: dict | None = None, *, optimizer=None
) -> dict:
    """A JSON-able description of what a checkpoint must match to be resumed.

    Args:
        net: the `MLP`.
        params, opt_state: the run's parameters and optimizer state (only their
            structure, shapes and dtypes are recorded here).
        run: JSON-able settings that must also match (batch size, the key, ...).
        data: named arrays whose content must match (X, Y, the test set).
        optimizer: with it, the part ``caller``: `caller_identity` of the
            optimizer and of ``params``, the starting parameters.
    """
    printed = {
        "net": {
            "sizes": list(net.sizes),
            "activations": [sigma.name for sigma in net.activations],
            "loss": net.loss.name,
            "fused": net.fused,
        },
        "code": _code_of(net),
        "params": describe_leaves(params),
        "opt_state": {
            "structure": str(jax.tree.structure(opt_state)),
            "leaves": describe_leaves(opt_state),
        },
        "run": run,
        "data": {name: data_identity(to_host(x)) for name, x in (data or {}).items()},
    }
    if optimizer is not None:
        printed["caller"] = caller_identity(optimizer, params)
    return printed


def caller_identity(optimizer, params) -> dict:
    """What a caller passes that the other parts do not see: the starting parameters'
    content (a SHA-1 per leaf) and the optimizer's behaviour (`optimizer_probe`)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return {
        "params": {
            jax.tree_util.keystr(path): data_identity(to_host(x))["sha1"] for path, x in flat
        },
        "optimizer": optimizer_probe(optimizer, params),
    }


PROBE_SCALES = (1.0, -0.5)
"""s_k of the probe gradients, one optimizer step each (`optimizer_probe`)."""


def optimizer_probe(optimizer, params) -> str:
    """SHA-1 of the updates ``optimizer`` makes from ``params`` on two fixed probe gradients.

    Probe k gives entry i of every leaf the gradient g_i = s_k (1 + (i mod 7)) / 8,
    s_k from `PROBE_SCALES`: several magnitudes, and a sign change between the
    steps, so that a learning rate, a momentum or a second-moment decay each
    change some update. One compiled program per optimizer and shapes, run on
    a copy of ``params`` on the default device.
    """
    params = jax.tree.map(lambda x: jnp.asarray(to_host(x)), params)
    probes = [
        jax.tree.map(
            lambda x, s=scale: (
                (s * (1 + np.arange(x.size) % 7) / 8).astype(x.dtype).reshape(x.shape)
            ),
            params,
        )
        for scale in PROBE_SCALES
    ]
    digest = hashlib.sha1(usedforsecurity=False)
    for u in jax.tree.leaves(_probe_updates(optimizer, params, probes)):
        digest.update(np.ascontiguousarray(to_host(u)).tobytes())
    return digest.hexdigest()


@functools.partial(jax.jit, static_argnums=0)
def _probe_updates(optimizer, params, probes: list) -> list:
    """The updates of one optimizer step per probe gradient, from ``params``."""
    state, seen = optimizer.init(params), []
    for probe in probes:
        with jax.numpy_dtype_promotion("standard"):  # as in the epoch: the user's code
            updates, state = optimizer.update(probe, state, params)
        params = jax.tree.map(lambda p, u: (p + u).astype(p.dtype), params, updates)
        seen.append(updates)
    return seen


def _code_of(net) -> dict:
    """The code identity of every σ^l, σ^l' (l = 2..L) and of E and ∂E/∂ŷ."""
    fields = ("fn", "deriv", "deriv_from_output", "jac_t_dot")
    return {
        "activations": {
            f"layer l={k + 2} ({sigma.name})": {f: code_identity(getattr(sigma, f)) for f in fields}
            for k, sigma in enumerate(net.activations)
        },
        "loss": {f: code_identity(getattr(net.loss, f)) for f in ("fn", "grad")},
    }


def key_arrays(key) -> tuple[np.ndarray, str | None]:
    """The raw data of a PRNG key and its implementation name (None for a raw uint32 key)."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return to_host(jax.random.key_data(key)), str(jax.random.key_impl(key))
    return to_host(key), None


def key_description(key) -> dict:
    """The key's data and implementation, as JSON (for a run's fingerprint)."""
    data, impl = key_arrays(key)
    return {"data": data.tolist(), "impl": impl}


def to_host(x) -> np.ndarray:
    """A NumPy copy of ``x``, also of an array that spans several processes.

    Replicated (parameters, losses): the local copy, which holds every value.
    Sharded across processes: gathered, a collective every process must join.
    """
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.sharding.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def differences(stored, current, where: str) -> list[tuple[str, Any, Any]]:
    """(path, stored, current) of every leaf that differs, e.g. ``data.X.sha1``."""
    if isinstance(stored, dict) and isinstance(current, dict):
        keys = list(current) + [k for k in stored if k not in current]
        return [d for k in keys for d in differences(stored.get(k), current.get(k), f"{where}.{k}")]
    if isinstance(stored, list) and isinstance(current, list) and len(stored) == len(current):
        return [
            d
            for i, (a, b) in enumerate(zip(stored, current, strict=True))
            for d in differences(a, b, f"{where}[{i}]")
        ]
    return [] if stored == current else [(where, stored, current)]
