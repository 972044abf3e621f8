"""The manual path computes gradients without any autodiff: autodiff is the witness only."""

import ast
import pathlib

import jax
import jax.numpy as jnp
import pytest

import manualbp as mbp
from manualbp.data import random_batch

AUTODIFF_NAMES = {
    "grad",
    "value_and_grad",
    "vjp",
    "jvp",
    "linearize",
    "jacfwd",
    "jacrev",
    "hessian",
    "custom_vjp",
    "custom_jvp",
}
MANUAL_MODULES = ("activations.py", "losses.py", "network.py", "backprop.py")


@pytest.mark.parametrize(
    "hidden, output, loss, fused",
    [
        ("sigmoid", "softmax", "cross_entropy", True),
        ("tanh", "softmax", "cross_entropy", False),
        ("gelu", "sigmoid", "binary_cross_entropy", True),
        ("relu", "identity", "mse", True),
    ],
)
def test_manual_path_runs_with_autodiff_forbidden(autodiff_forbidden, hidden, output, loss, fused):
    net = mbp.MLP((4, 5, 3, 2), hidden=hidden, output=output, loss=loss, fused=fused)
    params = net.init(jax.random.key(0))
    X, Y = random_batch(net, jax.random.key(1), 6)
    E, grads = mbp.manual_value_and_grad(net, params, X, Y)
    E_vmap, grads_vmap = mbp.manual_value_and_grad(net, params, X, Y, form="vmap")
    per_example = mbp.per_example_grads(net, params, X, Y)
    assert jnp.isfinite(E) and jnp.isfinite(E_vmap)
    assert all(jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves((grads, grads_vmap, per_example)))


def test_the_guard_catches_autodiff(autodiff_forbidden):
    """Proof the fixture can fail: the autodiff witness itself must trip it."""
    net = mbp.MLP((4, 3, 2))
    params = net.init(jax.random.key(0))
    X, Y = random_batch(net, jax.random.key(1), 6)
    with pytest.raises(autodiff_forbidden):
        mbp.autodiff_value_and_grad(net, params, X, Y)
    with pytest.raises(autodiff_forbidden):
        jax.jvp(jnp.sin, (1.0,), (1.0,))


def _jax_names(source: str) -> set[str]:
    """Names taken from jax: ``jax.NAME`` attributes and ``from jax... import NAME``."""
    tree = ast.parse(source)
    names = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "jax"
    }
    names |= {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jax")
        for alias in node.names
    }
    return names


def test_manual_modules_name_no_autodiff_function():
    """The manual path's source takes no differentiation function from jax."""
    package = pathlib.Path(mbp.__file__).parent
    for module in MANUAL_MODULES:
        found = _jax_names((package / module).read_text()) & AUTODIFF_NAMES
        assert not found, f"{module} uses {found}"


def test_the_source_scan_catches_autodiff():
    assert _jax_names("import jax\ng = jax.grad(f)") == {"grad"}
    assert _jax_names("from jax import vjp as v") == {"vjp"}
