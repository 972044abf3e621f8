"""The values a checkpoint may hold: finite parameters, an optimizer state without NaN.

A run never saves others: `nan_leaves` finds a NaN in the optimizer state
before a save (`train` then stops with `DivergenceError`), and `check_values`
refuses a file that holds one, or a non-finite parameter, after a load (such a
file is damaged or hand-made). An inf in the optimizer state may be a start
value, so it passes.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from manualbp.training.checkpoint_directory import CheckpointError
from manualbp.training.identity import to_host


def nan_leaves(tree) -> list[str]:
    """The paths of the leaves of ``tree`` that hold a NaN (one reduction per leaf, compiled)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    floating = [(p, x) for p, x in flat if jnp.issubdtype(x.dtype, jnp.inexact)]
    found = to_host(_any_nan([x for _, x in floating])) if floating else []
    return [jax.tree_util.keystr(p) for (p, _), nan in zip(floating, found, strict=True) if nan]


@jax.jit
def _any_nan(leaves: list) -> jax.Array:
    return jnp.stack([jnp.any(jnp.isnan(x)) for x in leaves])


def check_values(path: Path, arrays: dict) -> None:
    """Parameters finite and no NaN in the optimizer state (its inf may be a start value)."""
    for name, values in arrays.items():
        if name == "key" or values.dtype.kind not in "fcV":
            continue
        floats = values.astype(np.float32) if values.dtype.kind == "V" else values  # bfloat16
        params = name.startswith("params/")
        bad = ~np.isfinite(floats) if params else np.isnan(floats)
        if bad.any():
            raise CheckpointError(
                f"checkpoint_dir: {path} holds {'non-finite' if params else 'NaN'} values in "
                f"{name} ({int(bad.sum())} of {values.size}); a run never saves those, so the "
                "file is damaged or hand-made. It is left untouched: move it away to start the "
                "run afresh"
            )
