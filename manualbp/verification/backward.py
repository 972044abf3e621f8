"""Verification: localize a wrong derivation to its equation, its layer and its building block.

`verify` runs the manual backward pass and checks it four ways, in the
derivation's layer numbering (l = 2..L):

* Building blocks (blocks.py). Each σ^l' and ∂E/∂ŷ at the z^l and ŷ the
  batch produced (and σ^l' written through a^l, where the activation has that form).
* Equations, one at a time (equations.py), each given exactly the inputs the
  manual pass fed it: a wrong equation fails at its own layer only.
* End to end (end_to_end.py). Manual δ^l, ∂E/∂W^l, ∂E/∂b^l and E against
  autodiff of the same loss.
* The program that trains (end_to_end.py). `backprop.fast_backprop`, which
  `manual_value_and_grad` and `train` run, end to end against autodiff.

Optionally also central finite differences in float64 (finite_differences.py),
a witness that does not trust autodiff either, and every device against the others.

The verdict (`manualbp.tolerance.judge`): every manual array is compared with
a reference computed in float64 from the same inputs cast up, and allowed K
times the error the same-dtype witness (autodiff) makes against that reference,
or a floor. A NaN or inf never passes. A failing row is diagnosed where the
error has a simple form: a named wrong form of the equation, a constant factor,
a flipped sign, a few wrong entries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from manualbp import validation
from manualbp._records import environment
from manualbp.backprop import EQUATIONS, Equations, backward_with_deltas
from manualbp.network import MLP, Layer, Params, as_targets
from manualbp.parameters import param_dtype
from manualbp.verification import kinks, witnesses
from manualbp.verification.blocks import block_rows
from manualbp.verification.compare import Rounding, Setting, Site, compare
from manualbp.verification.end_to_end import end_to_end_rows, fast_form_rows, forward_overflow
from manualbp.verification.equations import Given, equation_rows
from manualbp.verification.finite_differences import fd_rows
from manualbp.verification.grids import plug_in_rows
from manualbp.verification.report import Report, Row

Array = jax.Array


def verify(
    net: MLP,
    params: Params,
    X: Array,
    Y: Array,
    *,
    equations: Equations = EQUATIONS,
    backward: Callable | None = None,
    finite_differences: bool = False,
    fd_samples: int = 6,
    devices: str | Sequence | None = None,
    seed: int = 0,
) -> Report:
    """Check a manual backward pass equation by equation and layer by layer.

    The derivation under test is the net's own activations and loss (their
    σ' and ∂E/∂ŷ), the batched `equations` (default: manualbp's), or a whole
    ``backward`` function of one's own.

    Args:
        net, params, X, Y: the network, its parameters and a batch (as for
            `manual_value_and_grad`; X and Y must be finite).
        equations: the `backprop.Equations` the backward pass composes.
        backward: a whole backward pass ``(net, params, X, Y) -> (E, grads,
            deltas)`` with ``deltas[k]`` the per-example δ^{k+2} of shape
            (B, N_{k+2}), as `backprop.backward_with_deltas` returns; overrides
            ``equations``.
        finite_differences: add central differences in float64 on
            ``fd_samples`` coordinates of every W^l and b^l.
        devices: None for the default device; ``"all"`` for every device
            `jax.devices()` lists plus the CPU, with rows per device and the
            devices compared against each other; or a sequence of devices.
        seed: picks the finite-difference coordinates.

    Returns:
        A `Report`.
    """
    X, Y = validation.check_batch(net, params, X, Y)
    validation.check_finite(X, Y, dtypes=(param_dtype(params),))
    if finite_differences and (not isinstance(fd_samples, int) or fd_samples < 1):
        raise ValueError(f"fd_samples: expected a positive number of coordinates, got {fd_samples}")
    if backward is None:

        def backward(net, params, X, Y):
            return backward_with_deltas(net, params, X, Y, equations)

    dtype = param_dtype(params)
    device_list = _devices(devices)
    rows, grads_by_device = [], {}
    for device in device_list:
        name = str(device) if devices is not None else ""
        with jax.default_device(device):
            p, x, y = jax.device_put((params, X, Y), device)
            device_rows, grads, ref = _verify_on_device(
                net, p, (x, y), backward, Setting(dtype, name)
            )
        rows += device_rows
        grads_by_device[name] = grads
    if len(device_list) > 1:
        rows += _cross_device_rows(net, grads_by_device, ref, dtype)
    if finite_differences:
        rows += fd_rows(net, params, (X, Y), backward, (fd_samples, seed))
    meta = {
        "subject": repr(net),
        "net": {
            "sizes": list(net.sizes),
            "activations": [a.name for a in net.activations],
            "loss": net.loss.name,
            "fused": net.fused,
        },
        "batch": int(X.shape[0]),
        "dtype": str(jnp.dtype(dtype)),
        "devices": [str(d) for d in device_list],
        "finite_differences": finite_differences,
        "reference": witnesses.reference_note(dtype),
        **environment(),
    }
    return Report(tuple(rows), meta)


def _devices(devices):
    if devices is None:
        return [jax.devices()[0]]
    if devices == "all":
        found = list(jax.devices())
        if jax.default_backend() != "cpu":
            found.append(jax.devices("cpu")[0])
        return found
    if isinstance(devices, str):
        raise ValueError(f"devices: expected None, 'all' or a sequence of devices, got {devices!r}")
    return list(devices)


def _verify_on_device(net, params, batch, backward, setting: Setting):
    """(rows, manual grads, reference) on one device: witnesses, blocks, equations, end to end."""
    (X, Y), (dtype, device) = batch, setting
    X = X.astype(dtype)
    Y = as_targets(net, Y, dtype)
    manual = backward(net, params, X, Y)
    _check_backward_output(net, params, X, *manual[1:])
    wit, ref, params64 = _witnesses(net, params, X, Y, dtype)
    overflow = forward_overflow(wit, ref, dtype, device)
    if overflow is not None:
        return [overflow], manual[1], ref
    found = kinks.on_kinks(net, ref.z[1:])
    if found:  # the references take the hand's one-sided slope there (kinks.py)
        wit, ref, params64 = _witnesses(kinks.with_ties_broken(net, found), params, X, Y, dtype)
    given = wit if wit is not None else ref  # the forward pass the manual pass saw
    g = jax.vmap(net.loss.grad)(jnp.asarray(given.a[-1], dtype), Y)
    scales = [witnesses.sigma_scale(sigma) for sigma in net.activations]
    rows = _kink_notes(block_rows(net, (ref, wit), g, scales, setting), found)
    rows += plug_in_rows(net, given.z[1:], dtype)
    inherited, m_E = witnesses.inherited_output_error(net, ref, wit, Y, dtype)
    magnitudes = witnesses.chain_magnitudes(net, ref, params64, Y, scales, inherited)
    m_L = magnitudes[-1][0]
    failed = frozenset((row.check, row.layer) for row in rows if not row.passed)
    fed = Given(net, manual, ref, wit, params, params64, g, scales, m_L, failed)
    rows += equation_rows(fed, setting)
    rows += end_to_end_rows(net, manual, (ref, wit), (magnitudes, np.mean(m_E)), setting)
    rows += fast_form_rows(net, params, (X, Y), (ref, wit), (magnitudes, np.mean(m_E)), setting)
    return _forward_first(rows), manual[1], ref


def _forward_first(rows) -> list[Row]:
    """A wrong E from ``backward`` points at its forward pass, before any equation.

    The E a backward pass returns comes from its own forward pass: where it
    disagrees with the reference's, z^l or a^l are wrong (a bias left out),
    and every equation row after may only inherit that.
    """
    E_rows = [r for r in rows if r.check == "E vs autodiff" and r.judged and not r.passed]
    if not E_rows:
        return rows
    first = E_rows[0]._replace(
        check="E vs autodiff (the forward pass)",
        diagnosis="; ".join(
            p
            for p in (
                E_rows[0].diagnosis,
                "the forward pass inside backward disagrees with the reference's (a bias or "
                "an activation left out?): check it first; the rows below may only inherit it",
            )
            if p
        ),
    )
    return [first, *(r for r in rows if r is not E_rows[0])]


def _kink_notes(rows, found) -> list[Row]:
    """The σ' rows of layers whose z sit on kinks say so (`kinks.note`)."""
    return [
        row._replace(diagnosis="; ".join(p for p in (row.diagnosis, kinks.note(found[k])) if p))
        if row.check.startswith("σ'") and (k := (row.layer or 0) - 2) in found
        else row
        for row in rows
    ]


def _witnesses(net, params, X, Y, dtype):
    """The witness in the net's dtype (None for a float64 net) and the float64 reference.

    The reference's building blocks are taken at the witness's z^l and a^l,
    the values the manual pass computed with, cast up.
    """
    params64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    if jnp.dtype(dtype) == witnesses.REFERENCE_DTYPE:
        return None, witnesses.compute(net, params, X, Y, dtype), params64
    wit = witnesses.compute(net, params, X, Y, dtype)
    ref = witnesses.compute(net, params, X, Y, witnesses.REFERENCE_DTYPE, (wit.z, wit.a))
    return wit, ref, params64


def _check_backward_output(net, params, X, grads, deltas) -> None:
    """The shapes a backward pass must return; a transposed ∂E/∂W^l is left to its row."""
    B = X.shape[0]
    if isinstance(grads, tuple) and len(grads) == len(params):
        grads = tuple(
            g._replace(W=g.W.T)
            if isinstance(g, Layer) and g.W.ndim == 2 and g.W.shape[::-1] == p.W.shape != g.W.shape
            else g
            for g, p in zip(grads, params, strict=True)
        )
    validation.check_params(net, grads)
    if len(deltas) != len(params):
        raise ValueError(
            f"backward: expected {len(params)} deltas (one per layer l = 2..{net.L}), "
            f"got {len(deltas)}"
        )
    for k, delta in enumerate(deltas):
        if tuple(delta.shape) != (B, net.sizes[k + 1]):
            raise ValueError(
                f"backward: deltas[{k}] (δ^{k + 2}) has shape {tuple(delta.shape)}, expected "
                f"(B, N_{k + 2}) = {(B, net.sizes[k + 1])}"
            )


def _cross_device_rows(net, grads_by_device, ref, dtype) -> list[Row]:
    """Each device's gradients against the first's: as far apart as two correct results may be.

    Both are judged against the float64 reference; the first device's error
    is the witness, so another device passes when it rounds like the first.
    """
    names = list(grads_by_device)
    first, rows = names[0], []
    for other in names[1:]:
        for k in range(len(net.sizes) - 1):
            a, b = grads_by_device[other][k], grads_by_device[first][k]
            for field in ("W", "b"):
                rows.append(
                    compare(
                        Site(f"∂E/∂{field} vs {first}", None, k + 2, other),
                        getattr(a, field),
                        getattr(ref.grads[k], field),
                        getattr(b, field),
                        Rounding(dtype, net.L - 1),
                    )
                )
    return rows
