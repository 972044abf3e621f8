"""Test helpers: the one tolerance assertion, and the catalogue of nets under test."""

from __future__ import annotations

from manualbp import tolerance

# Output function and loss pairs that make sense together; every hidden
# activation is tested with each of them.
OUTPUT_LOSS_PAIRS = (
    ("identity", "mse"),
    ("tanh", "mse"),
    ("sigmoid", "mse"),
    ("softmax", "mse"),
    ("softmax", "cross_entropy"),
    ("sigmoid", "binary_cross_entropy"),
    ("sigmoid", "cross_entropy"),
)


def grad_errors(actual, reference, sizes, batch, dtype):
    """The per-array errors and the tolerance of `manualbp.tolerance` for this net."""
    return tolerance.tree_errors(actual, reference), tolerance.net_rtol(dtype, sizes, batch)


def assert_grads_close(actual, reference, sizes, batch, dtype):
    """Assert the tolerance rule of `manualbp.tolerance` for every array of two pytrees."""
    errors, rtol = grad_errors(actual, reference, sizes, batch, dtype)
    bad = [(path, rel) for path, _, rel in errors if not rel <= rtol]
    assert not bad, f"relative errors above rtol={rtol:.3g}: {bad}"


def grads_close(actual, reference, sizes, batch, dtype) -> bool:
    errors, rtol = grad_errors(actual, reference, sizes, batch, dtype)
    return all(rel <= rtol for _, _, rel in errors)
