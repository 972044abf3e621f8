"""Shared fixtures and strict JAX settings for the whole suite."""

import jax
import pytest

# No silent broadcasting anywhere: (B,) against (B, 1) must raise, not make (B, B).
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    """Each dtype in turn; float64 runs inside `jax.enable_x64`."""
    if request.param == "float64":
        with jax.enable_x64():
            yield jax.numpy.float64
    else:
        yield jax.numpy.float32
