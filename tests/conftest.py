"""Shared fixtures and strict JAX settings for the whole suite."""

import atexit
import os
import shutil
import tempfile

# One compilation cache for the whole run: the two xdist workers and the commands the tests
# start in subprocesses inherit its folder through the environment, so a program one of them
# compiled is loaded, not compiled again, by the others. It holds XLA's executables keyed by
# the lowered program: every test still traces (the autodiff guard below still fires), and
# only identical compilations are shared. A cache folder the caller set is used as it is.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="manualbp-tests-jax-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402  (after the cache settings, which JAX reads on import)
import pytest  # noqa: E402
from jax._src.interpreters import ad  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])

# No silent broadcasting anywhere: (B,) against (B, 1) must raise, not make (B, B).
jax.config.update("jax_numpy_rank_promotion", "raise")
# No silent dtype widening either: float32 with float64, or int with float, must be explicit.
jax.config.update("jax_numpy_dtype_promotion", "strict")


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


class AutodiffCalled(Exception):
    pass


@pytest.fixture
def autodiff_forbidden(monkeypatch):
    """Make every JAX differentiation transform raise `AutodiffCalled` while active.

    The fixture's value is the exception class, for ``pytest.raises``.

    grad, value_and_grad, vjp, jvp, linearize, jacfwd and jacrev all build a
    JVPTrace or a LinearizeTrace; forbidding those catches them however they
    are imported.
    """

    def forbid(*args, **kwargs):
        raise AutodiffCalled("an autodiff trace was started")

    monkeypatch.setattr(ad.JVPTrace, "__init__", forbid)
    monkeypatch.setattr(ad.LinearizeTrace, "__init__", forbid)
    jax.clear_caches()  # so nothing compiled earlier is reused untraced
    yield AutodiffCalled
    jax.clear_caches()


# Rough seconds of each file's tests on one core, longest first: with whole files sent to
# one worker (pyproject's --dist loadfile), the long files start first and the short ones
# fill in at the end, so neither worker is left running a long file alone. A file not
# listed runs after these, in the order pytest collects it.
FILE_SECONDS = {
    "test_curvature.py": 180,
    "test_verdict.py": 105,
    "test_verify.py": 75,
    "test_privacy.py": 70,
    "test_cli.py": 50,
    "test_spectra.py": 42,
    "test_agreement.py": 31,
    "test_extensions.py": 29,
    "test_fashion_bench.py": 25,
    "test_multiprocess.py": 25,
    "test_reliability.py": 20,
    "test_properties.py": 19,
    "test_experiments.py": 16,
    "test_regression.py": 14,
    "test_train.py": 14,
    "test_api.py": 13,
    "test_bench.py": 11,
    "test_no_autodiff.py": 8,
    "test_fashion_mlp.py": 8,
    "test_data.py": 6,
    "test_fast_form.py": 5,
    "test_equations.py": 3,
    "test_fashion_mnist.py": 3,
}


def pytest_collection_modifyitems(items):
    """Files longest first (`FILE_SECONDS`); the tests of each file keep their order."""
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.name, 0))
