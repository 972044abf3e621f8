"""Verification: localize a wrong derivation to its equation, its layer and its building block.

`verify` runs the manual backward pass and checks it three ways against
autodiff, in the derivation's layer numbering (l = 2..L):

* Building blocks. Each σ^l' against autodiff of σ^l at the z^l the batch
  produced (and σ^l' written through a^l, where the activation has that form);
  ∂E/∂ŷ against autodiff of E at the batch's ŷ.
* Equations, one at a time. The true δ^l = ∂E/∂z^l of every example comes
  from autodiff (zero offsets added to each z^l, see `autodiff.deltas`).
  Equation (4) is checked against the true δ^L. Equations (1), (2) and (3) are
  checked given exactly the inputs the manual pass fed them: the true z^l, a^l
  and W^l, and the δ^{l+1} (or δ^l) the manual pass itself computed one step
  earlier, with σ^l' from autodiff. The equations are linear in δ, so a correct
  equation agrees with whatever δ it was given: a wrong equation fails at its
  own layer only and does not smear over every layer below it. Where the δ it
  was given is already wrong, the row "δ^l" (against the true δ^l) says so.
* End to end. Manual ∂E/∂W^l, ∂E/∂b^l and E against `jax.grad` of the same
  loss; optionally against central finite differences in float64 on a sample
  of coordinates (a third witness that does not trust autodiff either), and
  across devices.

Tolerances are `manualbp.tolerance`'s rule (per array, max|Δ| ≤ rtol ·
max|reference|), with bands of their own for 16-bit dtypes (see `row_rtol`).
A failing row is diagnosed where the error has a simple form: a constant
factor ("off by ×k", e.g. a sum where the mean was meant) or a flipped sign.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from manualbp import autodiff, tolerance, validation
from manualbp.activations import Activation, get_activation
from manualbp.backprop import (
    EQUATIONS,
    Equations,
    backward_batch,
    bias_grad_batch,
    hidden_delta_batch,
    weight_grad_batch,
)
from manualbp.losses import Loss, get_loss
from manualbp.network import MLP, Params, as_targets, forward_pass_batch

Array = jax.Array

OUTPUT_LOSS_PAIRS = (
    ("identity", "mse"),
    ("tanh", "mse"),
    ("sigmoid", "mse"),
    ("softmax", "mse"),
    ("softmax", "cross_entropy"),
    ("sigmoid", "binary_cross_entropy"),
    ("sigmoid", "cross_entropy"),
)
"""Output function and loss pairs that make sense together: the catalogue crosses them with
every hidden activation (`manualbp verify`, the tests)."""

LOW_PRECISION_C = 16
"""16-bit bands: rtol = 16 · eps · (L − 1), against a float32 reference (see `row_rtol`)."""

FD_RTOL = 1e-6
"""Finite differences: |fd − manual| ≤ 1e-6 · max|manual| of that array (see `_fd_rows`)."""


class Row(NamedTuple):
    """One check: what was compared, where, how far apart, and whether that is within tolerance."""

    check: str
    equation: int | None
    layer: int | None
    max_abs_err: float
    rel_err: float
    tol: float
    passed: bool
    diagnosis: str = ""
    device: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_number(v) for k, v in self._asdict().items()}


def _json_number(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


@dataclasses.dataclass(frozen=True)
class Report:
    """The rows of a verification and what they were run on.

    Attributes:
        rows: every check, in the order run.
        meta: what was verified and where: net, batch, dtype, devices, versions.
    """

    rows: tuple[Row, ...]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    @property
    def failures(self) -> tuple[Row, ...]:
        return tuple(row for row in self.rows if not row.passed)

    def verdict(self) -> str:
        subject = self.meta.get("subject", "derivation")
        if self.passed:
            return f"PASSED: {subject}: all {len(self.rows)} checks agree with autodiff"
        first = self.failures[0]
        where = _where(first)
        how = f" ({first.diagnosis})" if first.diagnosis else ""
        return (
            f"FAILED: {subject}: {len(self.failures)} of {len(self.rows)} checks disagree; "
            f"first: {first.check}{where}{how}"
        )

    def __str__(self) -> str:
        rows = self.failures + tuple(r for r in self.rows if r.passed)
        show_device = len({r.device for r in rows}) > 1
        header = ["", "check", "eq", "layer", "rel_err", "tol", "max_abs_err", "diagnosis"]
        if show_device:
            header.insert(4, "device")
        table = [header]
        for r in rows:
            line = [
                "ok" if r.passed else "FAIL",
                r.check,
                "" if r.equation is None else f"({r.equation})",
                "" if r.layer is None else str(r.layer),
                f"{r.rel_err:.2e}",
                f"{r.tol:.1e}",
                f"{r.max_abs_err:.2e}",
                r.diagnosis,
            ]
            if show_device:
                line.insert(4, r.device)
            table.append(line)
        widths = [max(len(line[i]) for line in table) for i in range(len(header))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            for line in table
        ]
        return "\n".join([self.verdict(), "", *lines])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: verdict, meta (dtype, devices, versions) and every row."""
        return {
            "passed": self.passed,
            "verdict": self.verdict(),
            **self.meta,
            "failures": [r.to_dict() for r in self.failures],
            "rows": [r.to_dict() for r in self.rows],
        }

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)


def _where(row: Row) -> str:
    parts = []
    if row.equation is not None:
        parts.append(f"eq. ({row.equation})")
    if row.layer is not None:
        parts.append(f"layer l={row.layer}")
    if row.device:
        parts.append(row.device)
    return f" [{', '.join(parts)}]" if parts else ""


# --- comparing two arrays ---------------------------------------------------------


def diagnose(actual, reference) -> str:
    """Name a simple form of disagreement: a sign flip, a constant factor, or none."""
    m = np.asarray(actual, np.float64).ravel()
    r = np.asarray(reference, np.float64).ravel()
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(r))):
        return "non-finite values"
    r2 = float(r @ r)
    if r2 == 0.0:
        return "should be zero"
    k = float(m @ r) / r2
    error = float(np.max(np.abs(m - r)))
    residual = float(np.max(np.abs(m - k * r)))
    # A factor must explain the error, not merely fit m: at most 1% of it left over.
    if k == 0.0 or residual > 0.01 * error:
        return "zero" if not np.any(m) else ""
    if abs(k + 1) < 1e-3:
        return "sign flipped"
    nearest = round(k)
    shown = f"{nearest}" if nearest != 0 and abs(k - nearest) < 1e-4 * abs(k) else f"{k:.4g}"
    return f"off by ×{shown}"


def _explain(actual, candidates, rtol) -> str:
    """The first named wrong form that ``actual`` matches, or ""."""
    for name, candidate in (candidates or {}).items():
        if candidate is None:
            continue
        candidate = np.asarray(candidate, np.float64)
        if candidate.shape == actual.shape and np.all(np.isfinite(candidate)):
            if tolerance.array_error(actual, candidate)[1] <= rtol:
                return name
    return ""


def _compare(
    check, equation, layer, actual, reference, rtol, device, candidates=None, magnitude=None
) -> Row:
    actual = np.asarray(actual, np.float64)
    reference = np.asarray(reference, np.float64)
    both_nonfinite = ~np.isfinite(actual) & ~np.isfinite(reference)
    same_nonfinite = both_nonfinite & (
        (actual == reference) | (np.isnan(actual) & np.isnan(reference))
    )
    mismatch_nonfinite = (~np.isfinite(actual) | ~np.isfinite(reference)) & ~same_nonfinite
    if mismatch_nonfinite.any():
        return Row(
            check, equation, layer, math.inf, math.inf, rtol, False, "non-finite values", device
        )
    keep = ~same_nonfinite
    if magnitude is not None:
        magnitude = np.asarray(magnitude, np.float64)[keep]
    max_abs, rel = tolerance.array_error(actual[keep], reference[keep], magnitude)
    passed = rel <= rtol
    diagnosis = ""
    if not passed:
        diagnosis = _explain(actual, candidates, rtol) or diagnose(actual[keep], reference[keep])
    return Row(check, equation, layer, max_abs, rel, rtol, passed, diagnosis, device)


def row_rtol(dtype, sizes: Sequence[int], batch: int) -> float:
    """The tolerance for a net's rows in ``dtype``.

    float32 and float64: `tolerance.net_rtol`. float16 and bfloat16: the manual
    path runs in the 16-bit dtype while the reference runs in float32 on the
    same values, so the error is the 16-bit rounding of every stored z^l, a^l
    and δ^l, compounding once per layer: rtol = 16 · eps · (L − 1). That is
    loose (0.25 for a 3-layer bfloat16 net) but still sees a flipped sign, a
    dropped σ' or a factor of 2.
    """
    if _low_precision(dtype):
        return LOW_PRECISION_C * tolerance.eps(dtype) * (len(sizes) - 1)
    return tolerance.net_rtol(dtype, sizes, batch)


def _low_precision(dtype) -> bool:
    return jnp.dtype(dtype).itemsize <= 2


# --- verify -------------------------------------------------------------------


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
            (B, N_{k+2}), as `backprop.backward_batch` returns; overrides
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
    validation.check_batch(net, params, X, Y)
    validation.check_finite(X, Y)
    if finite_differences and (not isinstance(fd_samples, int) or fd_samples < 1):
        raise ValueError(f"fd_samples: expected a positive number of coordinates, got {fd_samples}")
    if backward is None:

        def backward(net, params, X, Y):
            return backward_batch(net, params, X, Y, equations)

    dtype = jnp.result_type(*jax.tree.leaves(params))
    device_list = _devices(devices)
    rows, grads_by_device = [], {}
    for device in device_list:
        name = str(device) if devices is not None else ""
        with jax.default_device(device):
            p, x, y = jax.device_put((params, X, Y), device)
            device_rows, grads = _verify_on_device(net, p, x, y, dtype, backward, name)
        rows += device_rows
        grads_by_device[name] = grads
    if len(device_list) > 1:
        rows += _cross_device_rows(net, grads_by_device, dtype, X.shape[0])
    if finite_differences:
        rows += _fd_rows(net, params, X, Y, backward, fd_samples, seed)
    meta = {
        "subject": repr(net),
        "net": {
            "sizes": list(net.sizes),
            "activations": [a.name for a in net.activations],
            "loss": net.cost.name,
            "fused": net.fused,
        },
        "batch": int(X.shape[0]),
        "dtype": str(jnp.dtype(dtype)),
        "devices": [str(d) for d in device_list],
        "finite_differences": finite_differences,
        **environment(),
    }
    return Report(tuple(rows), meta)


def environment() -> dict[str, Any]:
    """Backend, x64 flag and versions, for reports (`experiment.environment` has the rest)."""
    from manualbp.experiment import environment as run_environment

    env = run_environment()
    names = ("manualbp", "jax", "jaxlib", "numpy", "optax", "python")
    return {
        "backend": env["backend"],
        "x64": env["x64"],
        "versions": {name: env[name] for name in names},
    }


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


def _verify_on_device(net, params, X, Y, dtype, backward, device) -> tuple[list[Row], Params]:
    B = X.shape[0]
    X = X.astype(dtype)
    Y = as_targets(net, Y, dtype)
    rtol = row_rtol(dtype, net.sizes, B)
    block_rtol = row_rtol(dtype, (1, 1), 1)

    E, grads, deltas = backward(net, params, X, Y)
    _check_backward_output(net, params, X, grads, deltas)

    # The witnesses, in float32 where the manual path runs in 16 bits.
    ref_dtype = jnp.float32 if _low_precision(dtype) else dtype
    p_ref = jax.tree.map(lambda a: a.astype(ref_dtype), params)
    X_ref, Y_ref = X.astype(ref_dtype), Y.astype(ref_dtype)
    zs, as_ = forward_pass_batch(net, p_ref, X_ref)
    true_deltas = autodiff.deltas(net, p_ref, X_ref, Y_ref)
    E_ref, grads_ref = autodiff.value_and_grad(net, p_ref, X_ref, Y_ref)
    L = net.L

    rows = []
    # Building blocks: ∂E/∂ŷ and each σ^l'.
    dE_dyhat = jax.vmap(net.cost.grad)(as_[-1], Y_ref)
    if net.fused_loss is None or not net.fused:
        rows.append(
            _compare(
                "dE/dŷ",
                None,
                L,
                dE_dyhat,
                autodiff.loss_grad(net.cost.fn, as_[-1], Y_ref),
                block_rtol,
                device,
            )
        )
    sigma_refs = []
    for k, sigma in enumerate(net.activations):
        l, z, a = k + 2, zs[k], as_[k + 1]
        if sigma.elementwise:
            ref = autodiff.elementwise_derivative(sigma.fn, z)
            sigma_refs.append(ref)
            rows.append(_compare("σ'", None, l, sigma.deriv(z), ref, block_rtol, device))
            if sigma.deriv_from_output is not None:
                rows.append(
                    _compare("σ'(a)", None, l, sigma.deriv_from_output(a), ref, block_rtol, device)
                )
        else:
            sigma_refs.append(None)
            g = jnp.where(jnp.isfinite(dE_dyhat), dE_dyhat, 0)
            rows.append(
                _compare(
                    "J_σ",
                    None,
                    l,
                    jax.vmap(sigma.deriv)(z),
                    autodiff.jacobian(sigma.fn, z),
                    block_rtol,
                    device,
                )
            )
            if sigma.jac_t_dot is not None:
                rows.append(
                    _compare(
                        "J_σᵀg",
                        None,
                        l,
                        sigma.jac_t_dot(z, g),
                        autodiff.jacobian_t_dot(sigma.fn, z, g),
                        block_rtol,
                        device,
                    )
                )

    # Equations, each given the inputs the manual pass fed it.
    rows.append(
        _compare(
            "δ^L",
            4,
            L,
            deltas[-1],
            true_deltas[-1],
            rtol,
            device,
            {"σ^L' missing: δ^L = ∂E/∂ŷ": dE_dyhat},
        )
    )
    for k in reversed(range(len(params))):
        l = k + 2
        if k < len(params) - 1 and sigma_refs[k] is not None:
            delta_next, W_next = deltas[k + 1].astype(ref_dtype), p_ref[k + 1].W
            sigma_at_a = autodiff.elementwise_derivative(net.activations[k].fn, as_[k + 1])
            wrong_forms = {
                "σ' missing": delta_next @ W_next,
                "σ' taken at a^l, not z^l": hidden_delta_batch(delta_next, W_next, sigma_at_a),
                "W^{l+1} not transposed": (delta_next @ W_next.T) * sigma_refs[k]
                if W_next.shape[0] == W_next.shape[1]
                else None,
            }
            expected = hidden_delta_batch(delta_next, W_next, sigma_refs[k])
            magnitude = hidden_delta_batch(abs(delta_next), abs(W_next), abs(sigma_refs[k]))
            rows.append(
                _compare("δ^l", 1, l, deltas[k], expected, rtol, device, wrong_forms, magnitude)
            )
        delta = deltas[k].astype(ref_dtype)
        wrong_forms = {
            "summed over the batch, not averaged": B * weight_grad_batch(delta, as_[k]),
            "a^l in place of a^{l-1} (one layer off)": weight_grad_batch(delta, as_[k + 1]),
        }
        expected = weight_grad_batch(delta, as_[k])
        magnitude = weight_grad_batch(abs(delta), abs(as_[k]))
        rows.append(
            _compare("∂E/∂W", 2, l, grads[k].W, expected, rtol, device, wrong_forms, magnitude)
        )
        wrong_forms = {"summed over the batch, not averaged": B * bias_grad_batch(delta)}
        expected = bias_grad_batch(delta)
        magnitude = bias_grad_batch(abs(delta))
        rows.append(
            _compare("∂E/∂b", 3, l, grads[k].b, expected, rtol, device, wrong_forms, magnitude)
        )

    # End to end, against autodiff.
    rows.append(_compare("E vs autodiff", None, None, E, E_ref, rtol, device))
    # The size of the terms each gradient entry sums (autodiff.gradient_magnitudes),
    # from the true δ^l and a^{l-1} already at hand.
    magnitudes = [
        (weight_grad_batch(abs(delta), abs(a_prev)), bias_grad_batch(abs(delta)))
        for delta, a_prev in zip(true_deltas, as_[:-1], strict=True)
    ]
    for k in reversed(range(len(params))):
        l = k + 2
        magnitude = None
        if k < len(params) - 1 and sigma_refs[k] is not None:
            magnitude = hidden_delta_batch(
                abs(true_deltas[k + 1]), abs(p_ref[k + 1].W), abs(sigma_refs[k])
            )
        rows += [
            _compare(
                "δ vs autodiff", None, l, deltas[k], true_deltas[k], rtol, device, None, magnitude
            ),
            _compare(
                "∂E/∂W vs autodiff",
                None,
                l,
                grads[k].W,
                grads_ref[k].W,
                rtol,
                device,
                None,
                magnitudes[k][0],
            ),
            _compare(
                "∂E/∂b vs autodiff",
                None,
                l,
                grads[k].b,
                grads_ref[k].b,
                rtol,
                device,
                None,
                magnitudes[k][1],
            ),
        ]
    return rows, grads


def _check_backward_output(net, params, X, grads, deltas) -> None:
    B = X.shape[0]
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


def _cross_device_rows(net, grads_by_device, dtype, B) -> list[Row]:
    names = list(grads_by_device)
    first = names[0]
    rtol = row_rtol(dtype, net.sizes, B)
    rows = []
    for other in names[1:]:
        for k in range(len(net.sizes) - 1):
            a, b = grads_by_device[other][k], grads_by_device[first][k]
            rows.append(_compare(f"∂E/∂W vs {first}", None, k + 2, a.W, b.W, rtol, other))
            rows.append(_compare(f"∂E/∂b vs {first}", None, k + 2, a.b, b.b, rtol, other))
    return rows


def _fd_rows(net, params, X, Y, backward, samples, seed) -> list[Row]:
    """Central differences in float64 on a sample of coordinates of every W^l and b^l.

    Step h = ∛eps · max(1, |θ|) ≈ 6e-6 balances truncation (h² |E'''| / 6)
    against rounding (eps |E| / h), both near 1e-11 for E and derivatives of
    order one; FD_RTOL = 1e-6 leaves a wide margin above that and still sees
    any error of 0.0001% of the array's largest entry.
    """
    from manualbp.network import batch_loss

    rng = np.random.default_rng(seed)
    rows = []
    with jax.enable_x64():
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        X64 = jnp.asarray(X, jnp.float64)
        Y64 = as_targets(net, jnp.asarray(Y), jnp.float64)
        loss = jax.jit(batch_loss, static_argnums=0)
        _, grads, _ = backward(net, p64, X64, Y64)
        h_base = float(np.finfo(np.float64).eps) ** (1 / 3)
        for k in range(len(params)):
            for field in ("W", "b"):
                theta = np.asarray(getattr(p64[k], field))
                manual = np.asarray(getattr(grads[k], field), np.float64)
                flat = rng.choice(theta.size, size=min(samples, theta.size), replace=False)
                fd = []
                for i in flat:
                    idx = np.unravel_index(i, theta.shape)
                    h = h_base * max(1.0, abs(float(theta[idx])))
                    values = []
                    for sign in (1, -1):
                        shifted = theta.copy()
                        shifted[idx] += sign * h
                        p = list(p64)
                        p[k] = p[k]._replace(**{field: jnp.asarray(shifted)})
                        values.append(float(loss(net, tuple(p), X64, Y64)))
                    fd.append((values[0] - values[1]) / (2 * h))
                fd = np.array(fd)
                manual_sample = manual.ravel()[flat]
                scale = max(float(np.max(np.abs(manual))), float(np.max(np.abs(fd))), 1e-300)
                max_abs = float(np.max(np.abs(manual_sample - fd)))
                passed = max_abs <= FD_RTOL * scale
                rows.append(
                    Row(
                        f"∂E/∂{field} vs finite diff.",
                        None,
                        k + 2,
                        max_abs,
                        max_abs / scale,
                        FD_RTOL,
                        passed,
                        "" if passed else diagnose(manual_sample, fd),
                        "",
                    )
                )
    return rows


# --- building blocks on their own -----------------------------------------------

SPECIAL_Z = {
    "at 0": [0.0],
    "near 0": [-1e-6, 1e-6, -1e-3, 1e-3],
    "moderate": [-3.0, -1.0, -0.5, 0.5, 1.0, 3.0],
    "saturation": [-1e4, -100.0, -30.0, -10.0, 10.0, 30.0, 100.0, 1e4],
}


def verify_activation(act: str | Activation, dtype=jnp.float32, seed: int = 0) -> Report:
    """Check a hand-derived σ' against autodiff of σ over a grid with the hard places.

    The grid: 0 (kinks), ±1e-6 and ±1e-3 (either side of a kink), moderate
    values, large |z| up to 1e4 (saturation and overflow), and 64 random
    N(0, 2²) points. Componentwise σ compare σ'(z) (and σ'(a) where the
    activation has it); a softmax-like σ compares its Jacobian on vectors
    drawn from the same grid.
    """
    act = get_activation(act)
    rtol = row_rtol(dtype, (1, 1), 1)
    rng = np.random.default_rng(seed)
    groups = dict(SPECIAL_Z, random=list(2 * rng.standard_normal(64)))
    rows = []
    for group, values in groups.items():
        z = jnp.asarray(values, dtype)
        if act.elementwise:
            ref = autodiff.elementwise_derivative(act.fn, z)
            rows.append(_compare(f"σ' {group}", None, None, act.deriv(z), ref, rtol, ""))
            if act.deriv_from_output is not None:
                rows.append(
                    _compare(
                        f"σ'(a) {group}",
                        None,
                        None,
                        act.deriv_from_output(act.fn(z)),
                        ref,
                        rtol,
                        "",
                    )
                )
        else:
            vectors = jnp.asarray(rng.choice(values, size=(4, 3)), dtype)
            rows.append(
                _compare(
                    f"J_σ {group}",
                    None,
                    None,
                    jax.vmap(act.deriv)(vectors),
                    autodiff.jacobian(act.fn, vectors),
                    rtol,
                    "",
                )
            )
            if act.jac_t_dot is not None:
                g = jnp.asarray(rng.standard_normal((4, 3)), dtype)
                rows.append(
                    _compare(
                        f"J_σᵀg {group}",
                        None,
                        None,
                        act.jac_t_dot(vectors, g),
                        autodiff.jacobian_t_dot(act.fn, vectors, g),
                        rtol,
                        "",
                    )
                )
    return Report(
        tuple(rows),
        {"subject": f"activation {act.name!r}", "dtype": str(jnp.dtype(dtype)), **environment()},
    )


def verify_loss(loss: str | Loss, dtype=jnp.float32, seed: int = 0, width: int = 3) -> Report:
    """Check a hand-derived ∂E/∂ŷ against autodiff of E over a spread of (ŷ, y).

    ŷ: probabilities inside (0, 1), near 0 and 1 (1e-4 and 1 − 1e-4), and
    random; y: one-hot rows, 0/1 rows and random probability rows. These suit
    every built-in loss (mse is defined everywhere; the cross-entropies need
    ŷ in (0, 1)).
    """
    loss = get_loss(loss)
    rtol = row_rtol(dtype, (1, 1), 1)
    rng = np.random.default_rng(seed)
    n = 16
    y_hats = {
        "interior": rng.uniform(0.05, 0.95, (n, width)),
        "near 0 and 1": rng.choice([1e-4, 1e-3, 1 - 1e-3, 1 - 1e-4], (n, width)),
        "random": rng.uniform(1e-3, 1 - 1e-3, (n, width)),
    }
    ys = {
        "one-hot": np.eye(width)[rng.integers(0, width, n)],
        "0/1": rng.integers(0, 2, (n, width)).astype(float),
        "probabilities": rng.dirichlet(np.ones(width), n),
    }
    rows = []
    for y_name, y in ys.items():
        for y_hat_name, y_hat in y_hats.items():
            y_hat_, y_ = jnp.asarray(y_hat, dtype), jnp.asarray(y, dtype)
            rows.append(
                _compare(
                    f"dE/dŷ ŷ {y_hat_name}, y {y_name}",
                    None,
                    None,
                    jax.vmap(loss.grad)(y_hat_, y_),
                    autodiff.loss_grad(loss.fn, y_hat_, y_),
                    rtol,
                    "",
                )
            )
    return Report(
        tuple(rows),
        {"subject": f"loss {loss.name!r}", "dtype": str(jnp.dtype(dtype)), **environment()},
    )
