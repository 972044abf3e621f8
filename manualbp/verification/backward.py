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

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from manualbp import autodiff, validation
from manualbp.backprop import (
    EQUATIONS,
    Equations,
    backward_with_deltas,
    bias_grad_batch,
    hidden_delta_batch,
    weight_grad_batch,
)
from manualbp.network import MLP, Params, as_targets, forward_pass_batch, mean_loss, param_dtype
from manualbp.records import environment
from manualbp.verification.compare import (
    FD_RTOL,
    compare,
    diagnose,
    low_precision,
    row_rtol,
)
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
            "loss": net.loss.name,
            "fused": net.fused,
        },
        "batch": int(X.shape[0]),
        "dtype": str(jnp.dtype(dtype)),
        "devices": [str(d) for d in device_list],
        "finite_differences": finite_differences,
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


def _verify_on_device(net, params, X, Y, dtype, backward, device) -> tuple[list[Row], Params]:
    B = X.shape[0]
    X = X.astype(dtype)
    Y = as_targets(net, Y, dtype)
    rtol = row_rtol(dtype, net.sizes, B)
    block_rtol = row_rtol(dtype, (1, 1), 1)

    E, grads, deltas = backward(net, params, X, Y)
    _check_backward_output(net, params, X, grads, deltas)

    # The witnesses, in float32 where the manual path runs in 16 bits.
    ref_dtype = jnp.float32 if low_precision(dtype) else dtype
    p_ref = jax.tree.map(lambda a: a.astype(ref_dtype), params)
    X_ref, Y_ref = X.astype(ref_dtype), Y.astype(ref_dtype)
    zs, as_ = forward_pass_batch(net, p_ref, X_ref)
    true_deltas = autodiff.deltas(net, p_ref, X_ref, Y_ref)
    E_ref, grads_ref = autodiff.value_and_grad(net, p_ref, X_ref, Y_ref)
    L = net.L

    rows = []
    # Building blocks: ∂E/∂ŷ and each σ^l'.
    dE_dyhat = jax.vmap(net.loss.grad)(as_[-1], Y_ref)
    if net.fused_loss is None or not net.fused:
        rows.append(
            compare(
                "dE/dŷ",
                None,
                L,
                dE_dyhat,
                autodiff.loss_grad(net.loss.fn, as_[-1], Y_ref),
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
            rows.append(compare("σ'", None, l, sigma.deriv(z), ref, block_rtol, device))
            if sigma.deriv_from_output is not None:
                rows.append(
                    compare("σ'(a)", None, l, sigma.deriv_from_output(a), ref, block_rtol, device)
                )
        else:
            sigma_refs.append(None)
            g = jnp.where(jnp.isfinite(dE_dyhat), dE_dyhat, 0)
            rows.append(
                compare(
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
                    compare(
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
        compare(
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
                compare("δ^l", 1, l, deltas[k], expected, rtol, device, wrong_forms, magnitude)
            )
        delta = deltas[k].astype(ref_dtype)
        wrong_forms = {
            "summed over the batch, not averaged": B * weight_grad_batch(delta, as_[k]),
            "a^l in place of a^{l-1} (one layer off)": weight_grad_batch(delta, as_[k + 1]),
        }
        expected = weight_grad_batch(delta, as_[k])
        magnitude = weight_grad_batch(abs(delta), abs(as_[k]))
        rows.append(
            compare("∂E/∂W", 2, l, grads[k].W, expected, rtol, device, wrong_forms, magnitude)
        )
        wrong_forms = {"summed over the batch, not averaged": B * bias_grad_batch(delta)}
        expected = bias_grad_batch(delta)
        magnitude = bias_grad_batch(abs(delta))
        rows.append(
            compare("∂E/∂b", 3, l, grads[k].b, expected, rtol, device, wrong_forms, magnitude)
        )

    # End to end, against autodiff.
    rows.append(compare("E vs autodiff", None, None, E, E_ref, rtol, device))
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
            compare(
                "δ vs autodiff", None, l, deltas[k], true_deltas[k], rtol, device, None, magnitude
            ),
            compare(
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
            compare(
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
            rows.append(compare(f"∂E/∂W vs {first}", None, k + 2, a.W, b.W, rtol, other))
            rows.append(compare(f"∂E/∂b vs {first}", None, k + 2, a.b, b.b, rtol, other))
    return rows


def _fd_rows(net, params, X, Y, backward, samples, seed) -> list[Row]:
    """Central differences in float64 on a sample of coordinates of every W^l and b^l.

    Step h = ∛eps · max(1, |θ|) ≈ 6e-6 balances truncation (h² |E'''| / 6)
    against rounding (eps |E| / h), both near 1e-11 for E and derivatives of
    order one; FD_RTOL = 1e-6 leaves a wide margin above that and still sees
    any error of 0.0001% of the array's largest entry.
    """
    rng = np.random.default_rng(seed)
    rows = []
    with jax.enable_x64():
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        X64 = jnp.asarray(X, jnp.float64)
        Y64 = as_targets(net, jnp.asarray(Y), jnp.float64)
        loss = jax.jit(mean_loss, static_argnums=0)
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
