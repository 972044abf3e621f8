"""Test helpers: the one tolerance assertion, and the catalogue of nets under test."""

from __future__ import annotations

from manualbp import tolerance
from manualbp.losses import OUTPUT_LOSS_PAIRS  # noqa: F401  (re-exported for the tests)


def grad_errors(actual, reference, sizes, batch, dtype, magnitude=None):
    """The per-array errors and the tolerance of `manualbp.tolerance` for this net."""
    return (
        tolerance.tree_errors(actual, reference, magnitude),
        tolerance.net_rtol(dtype, sizes, batch),
    )


def assert_grads_close(actual, reference, sizes, batch, dtype, magnitude=None):
    """Assert the tolerance rule of `manualbp.tolerance` for every array of two pytrees.

    ``magnitude``: the size of the summed terms (`autodiff.gradient_magnitudes`),
    for gradients whose batch mean may cancel.
    """
    errors, rtol = grad_errors(actual, reference, sizes, batch, dtype, magnitude)
    bad = [(path, rel) for path, _, rel in errors if not rel <= rtol]
    assert not bad, f"relative errors above rtol={rtol:.3g}: {bad}"


def grads_close(actual, reference, sizes, batch, dtype, magnitude=None) -> bool:
    errors, rtol = grad_errors(actual, reference, sizes, batch, dtype, magnitude)
    return all(rel <= rtol for _, _, rel in errors)


def numpy_case(net, seed: int, batch: int, dtype):
    """Params, X and Y for ``net`` drawn with NumPy, so no JAX random kernel compiles.

    W ~ N(0, 1/N_{l-1}) and b ~ N(0, 1) (non-zero biases, so equation (3)
    matters); X and Y by `manualbp.data.random_batch` from the same generator.
    """
    import jax.numpy as jnp
    import numpy as np

    from manualbp.data import random_batch
    from manualbp.network import Layer

    rng = np.random.default_rng(seed)
    params = tuple(
        Layer(
            jnp.asarray(rng.normal(size=(n_out, n_in)) / np.sqrt(n_in), dtype),
            jnp.asarray(rng.normal(size=n_out), dtype),
        )
        for n_in, n_out in zip(net.sizes[:-1], net.sizes[1:], strict=True)
    )
    X, Y = random_batch(net, rng, batch, dtype)
    return params, X, Y


def trees_equal(a, b) -> bool:
    """Bit-for-bit equality of two pytrees of arrays with the same structure."""
    import jax
    import numpy as np

    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
