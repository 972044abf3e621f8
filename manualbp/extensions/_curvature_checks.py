"""The curvature functions' input checks: the batch, the second derivatives each quantity
needs from the net's records, and the extra arguments (a key, a sample count, a direction v).

Each public function in curvature.py is built by `_entry.entry_point` with one of these.
"""

from __future__ import annotations

from manualbp import validation
from manualbp.extensions.curvature_equations import logits_are_f
from manualbp.network import MLP, Layer, Params


def quantity_checks(name: str, *rest_checks, factor=False, second=False):
    """``check(net, params, X, Y, *rest)`` for `entry_point`: the batch, the net's
    records (a Hessian and its factor S; σ''), then each rest argument in turn."""

    def check(net, params, X, Y, *rest):
        X, Y = check_quantity(net, params, X, Y, name, factor=factor, second=second)
        for check_one, argument in zip(rest_checks, rest, strict=True):
            check_one(net, params, argument)
        return (X, Y, *rest)

    return check


def check_quantity(net: MLP, params: Params, X, Y, name: str, *, factor=False, second=False):
    """The batch, and what quantity ``name`` needs from the net's records: the loss's
    Hessian (and its factor S, with ``factor``), every σ'' (with ``second``).

    Returns:
        (X, Y) as arrays (`validation.check_batch`).
    """
    X, Y = validation.check_batch(net, params, X, Y)
    _check_records(net, name, factor, second)
    return X, Y


def _check_records(net: MLP, name: str, factor: bool, second: bool) -> None:
    """The second derivatives this quantity needs from the net's records."""
    record = net.fused_loss if logits_are_f(net) else net.loss
    what = "the fused pair" if logits_are_f(net) else f"loss {net.loss.name!r}"
    if record.hessian is None or (factor and record.hessian_factor is None):
        raise ValueError(
            f"{name}: {what} has no hand-derived Hessian"
            + (" and factor S (hessian_factor)" if factor else "")
            + "; give the Loss its hessian and hessian_factor"
        )
    if second:
        needs = net.hidden if logits_are_f(net) else net.activations
        for k, sigma in enumerate(needs):
            if sigma.deriv2 is None:
                raise ValueError(
                    f"{name}: activation {sigma.name!r} (layer l={k + 2}) has no σ'' "
                    "(Activation.deriv2)"
                )


def key_check(net, params, key) -> None:
    validation.check_key(key)


def samples_check(net, params, samples) -> None:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples: expected a positive integer, got {samples!r}")


def check_direction(net: MLP, params: Params, v) -> None:
    """v must be a tuple of `Layer`s with the shapes of params and floating dtypes."""
    if not isinstance(v, tuple) or len(v) != len(params):
        raise ValueError(
            f"v: expected a tuple of {len(params)} mbp.Layer(W, b) shaped like params, "
            f"got {type(v).__name__}"
            + (f" of length {len(v)}" if isinstance(v, (tuple, list)) else "")
        )
    for k, (layer, p) in enumerate(zip(v, params, strict=True)):
        if not isinstance(layer, Layer):
            raise TypeError(f"v[{k}] (layer l={k + 2}): expected an mbp.Layer(W, b)")
        for name, x, ref in (("W", layer.W, p.W), ("b", layer.b, p.b)):
            shape = getattr(x, "shape", None)
            if shape is None or tuple(shape) != tuple(ref.shape):
                raise ValueError(
                    f"v[{k}].{name} (layer l={k + 2}): expected shape {tuple(ref.shape)}, "
                    f"got {shape}"
                )
            if validation.dtype_kind(x.dtype) != "floating":
                raise TypeError(f"v[{k}].{name}: expected a floating dtype, got {x.dtype}")
