"""The one way into the math: how every public numerical function is built.

`entry_point` turns a pure function of arrays in one dtype, ``math(net, params,
X, Y, *rest)``, into the function users call, in the same five steps for all
of them (as optax builds every transform from one pair of functions):

1. check the inputs, with one clear error line for a bad one (validation.py);
2. call one program jitted with the net static (`jax.jit` lives here and in
   training's compiled epoch only);
3. cast params, X, the targets Y and the floating arguments in ``rest`` into
   the parameters' promoted dtype (`in_compute_dtype`), so the math never
   mixes dtypes (it runs under strict dtype promotion);
4. run the math;
5. cast the result back like params (`like_params`), or as ``back`` says.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from manualbp.network import MLP, Params, as_targets
from manualbp.parameters import param_dtype

Array = jax.Array


def in_compute_dtype(net: MLP, params: Params, X: Array, Y: Array | None = None):
    """(params, X, Y) in one dtype, the parameters' `param_dtype`, Y as (B, N_L) targets.

    Y stays None when not given.
    """
    dtype = param_dtype(params)
    params = jax.tree.map(lambda p: p.astype(dtype), params)
    Y = None if Y is None else as_targets(net, Y, dtype)
    return params, X.astype(dtype), Y


def like_params(grads: Params, params: Params) -> Params:
    """Each gradient in its parameter's dtype."""
    return jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)


def value_like_params(result, params: Params):
    """(E, grads): E as the math computed it, the gradients in their parameters' dtypes."""
    E, grads = result
    return E, like_params(grads, params)


def as_computed(result, params: Params):
    """The result in the compute dtype, as the math gave it (ŷ, E)."""
    return result


def _cast_floating(tree, dtype):
    """Every floating leaf of ``tree`` (a direction v, a clip norm) in ``dtype``; keys stay."""
    return jax.tree.map(
        lambda t: t.astype(dtype) if jnp.issubdtype(jnp.result_type(t), jnp.floating) else t,
        tree,
    )


def entry_point(
    math: Callable,
    check: Callable,
    *,
    static: tuple[int, ...] = (),
    uncast: tuple[int, ...] = (),
    back: Callable = like_params,
) -> Callable:
    """A public numerical function ``(net, params, X, Y, *rest) -> result`` from its math.

    Args:
        math: ``math(net, params, X, Y, *rest)`` on arrays in one compute dtype.
        check: ``check(net, params, X, Y, *rest) -> (X, Y, *rest)``: every input
            check, raising one clear error; returns the arguments as the program
            takes them (X and Y as arrays).
        static: the positions in ``rest`` of static arguments (hashable: a form
            name, a sample count, a set of equations); the net is always static.
        uncast: the positions in ``rest`` passed to the math as they come (a clip
            norm the math widens itself, which a low-precision cast would round).
        back: ``back(result, params)``, the result in the parameters' dtypes.

    Returns:
        The checked function; its jitted program, without the checks, is its
        ``program`` attribute (the benchmarks time the two against each other).
    """
    static_argnums = (0, *(4 + i for i in static))
    as_given = set(static) | set(uncast)

    def program(net, params, X, Y, *rest):
        p, X, Y = in_compute_dtype(net, params, X, Y)
        rest = tuple(r if i in as_given else _cast_floating(r, X.dtype) for i, r in enumerate(rest))
        return back(math(net, p, X, Y, *rest), params)

    jitted = jax.jit(program, static_argnums=static_argnums)

    def checked(net, params, X, Y, *rest):
        return jitted(net, params, *check(net, params, X, Y, *rest))

    checked.program = jitted
    return checked
