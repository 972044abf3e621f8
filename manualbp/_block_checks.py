"""The building blocks' shapes and dtypes: σ, σ', E and ∂E/∂ŷ as the backward pass calls them.

The first call with a net and a dtype traces each σ, σ' and the loss's E and
∂E/∂ŷ abstractly (`jax.eval_shape`, no computation) and checks the shapes and
dtypes they return, naming the activation or loss whose derivative is off;
the answer is cached per (net, dtype). `manualbp.validation` exports these
checks with the others.
"""

from __future__ import annotations

import functools

import jax

from manualbp.activations import Activation
from manualbp.losses import Loss


@functools.lru_cache(maxsize=256)
def check_blocks(net, dtype) -> None:
    """Check every σ^l, σ^l' and the loss of ``net`` in ``dtype`` (once per pair)."""
    for k, sigma in enumerate(net.activations):
        check_activation(sigma, dtype, net.sizes[k + 1], where=f"layer l={k + 2}, ")
    check_loss(net.loss, dtype, net.sizes[-1])


def check_activation(act: Activation, dtype, width: int = 3, where: str = "") -> None:
    """σ, σ' (and σ'(a), Jᵀg) must return z's shape and dtype (the Jacobian: (N, N)).

    A componentwise σ' is called on one example (N,) and on a batch (B, N)
    with B ≠ N, so a σ' that returns zᵀ or drops an axis is caught.

    Raises:
        ValueError: a wrong shape; TypeError: a wrong dtype, or a function
            JAX cannot trace (NumPy on a traced array, a Python branch on a value).
    """
    what = f"{where}activation {act.name!r}"
    z = jax.ShapeDtypeStruct((width,), dtype)
    for z_in in (z, jax.ShapeDtypeStruct((width + 1, width), dtype)):
        _expect(what, "σ", act.fn, (z_in,), z_in)
        if act.elementwise:
            _expect(what, "σ'", act.deriv, (z_in,), z_in)
            if act.deriv_from_output is not None:
                _expect(what, "σ'(a)", act.deriv_from_output, (z_in,), z_in)
    if not act.elementwise:
        jacobian = jax.ShapeDtypeStruct((width, width), dtype)
        _expect(what, "σ' (its Jacobian)", act.deriv, (z,), jacobian)
        if act.jac_t_dot is not None:
            _expect(what, "Jᵀg (jac_t_dot)", act.jac_t_dot, (z, z), z)


def check_loss(loss: Loss, dtype, width: int = 3) -> None:
    """E(ŷ, y) must return a scalar and ∂E/∂ŷ ŷ's shape (N_L,), both in ŷ's dtype."""
    what = f"loss {loss.name!r}"
    y = jax.ShapeDtypeStruct((width,), dtype)
    _expect(what, "E", loss.fn, (y, y), jax.ShapeDtypeStruct((), dtype))
    _expect(what, "∂E/∂ŷ", loss.grad, (y, y), y)


_UNTRACEABLE = (
    jax.errors.TracerArrayConversionError,
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerIntegerConversionError,
)


def _expect(what: str, name: str, fn, args, expected) -> None:
    inputs = " and ".join(_describe(a) for a in args)
    try:
        out = jax.eval_shape(fn, *args)
    except _UNTRACEABLE as e:
        raise TypeError(
            f"{what}: {name} cannot be traced by JAX ({type(e).__name__}) on {inputs}. It "
            "must use jax.numpy, not NumPy (jnp.tanh, not np.tanh), and jnp.where, not a "
            "Python if on values"
        ) from e
    if getattr(out, "shape", None) != expected.shape:
        raise ValueError(
            f"{what}: {name} returned {_describe(out)} for {inputs}; expected shape "
            f"{expected.shape}"
        )
    if out.dtype != expected.dtype:
        raise TypeError(
            f"{what}: {name} returned {_describe(out)} for {inputs}; expected "
            f"{expected.dtype} (cast with .astype(z.dtype))"
        )


def _describe(x) -> str:
    if isinstance(x, jax.ShapeDtypeStruct):
        return f"shape {x.shape} {x.dtype}"
    return f"{type(x).__name__} {x!r:.60}"
