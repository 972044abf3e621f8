"""What makes two runs the same beyond their shapes: the data's content and the plug-ins' code.

A checkpoint records both (`manualbp.training.checkpoint`), so a run resumes only on
the data it started with and with the σ, σ' and E it was trained with, not
merely with arrays of the same shape or functions of the same name.

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

import jax
import numpy as np

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
