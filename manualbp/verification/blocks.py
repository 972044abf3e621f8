"""Building blocks: a hand-derived σ' or ∂E/∂ŷ at the batch's own points (the grid: grids.py).

Each is judged as everything in verification is (`tolerance.judge`): its
distance to autodiff in float64 at the same points cast up, against the
distance of autodiff in the same dtype. A σ' more accurate than autodiff's
(1/cosh²z where autodiff takes 1 − tanh²z, which is 0 at z = 10 in float32)
therefore passes. A σ' is judged on the size σ' has where σ moves
(`witnesses.sigma_scale`): formulas such as 1 − a² round at that size, also
where σ saturates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from manualbp import autodiff
from manualbp.activations import Activation
from manualbp.verification import witnesses
from manualbp.verification.compare import NO_CLUES, Clues, Rounding, Setting, Site, compare
from manualbp.verification.report import Row

NULL_DIRECTION = (
    "wrong by c·1 per example, a direction J_σ^L removes: δ^L and the gradients are unaffected"
)


def block_rows(net, sides, g, scales, setting: Setting) -> list[Row]:
    """∂E/∂ŷ and each σ^l' (or J_σ) at the z^l and ŷ of the manual pass's forward pass.

    Args:
        sides: (ref, wit), `witnesses.Side` in float64 and the net's dtype (wit
            None for float64); the manual pass computed with the witness's
            forward pass (the reference's for float64).
        g: the manual ∂E/∂ŷ at that forward pass's ŷ.
        scales: `witnesses.sigma_scale` of each σ^l.
        setting: the dtype and device of the rows.
    """
    ref, wit = sides
    given = wit if wit is not None else ref
    dtype = setting.dtype
    rows = []
    if net.fused_loss is None or not net.fused:
        clues = Clues(candidates=_null_direction(net, g, ref), inputs={"ŷ": given.a[-1]})
        arrays = (g, ref.dE_dyhat, None if wit is None else wit.dE_dyhat)
        site = Site("dE/dŷ", None, net.L, setting.device)
        rows.append(compare(site, *arrays, Rounding(dtype), clues))
    for k, sigma in enumerate(net.activations):
        z = jnp.asarray(given.z[k + 1], dtype)  # z^l of layer l = k + 2
        reference = ref.sigma_primes[k]
        witness = None if wit is None else wit.sigma_primes[k]
        if sigma.elementwise:
            slips = Clues(candidates=sigma_slips(sigma, z), points=("z", z))
            arrays = (sigma.deriv(z), reference, witness)
            rows.append(sigma_row(Site("σ'", None, k + 2), arrays, scales[k], setting, slips))
            if sigma.deriv_from_output is not None:
                a = jnp.asarray(given.a[k + 1], dtype)
                arrays = (sigma.deriv_from_output(a), reference, witness)
                site = Site("σ'(a)", None, k + 2)
                rows.append(sigma_row(site, arrays, scales[k], setting, slips))
            continue
        arrays = (jax.vmap(sigma.deriv)(z), reference, witness)
        terms = witnesses.jacobian_terms(np.asarray(sigma.fn(z), np.float64))
        rows.append(sigma_row(Site("J_σ", None, k + 2), arrays, terms, setting))
        if sigma.jac_t_dot is not None:
            site = Site("J_σᵀg", None, k + 2)
            rows.append(jac_t_dot_row(sigma, site, (z, g), reference, setting))
    return rows


def sigma_row(site: Site, arrays, scale, setting: Setting, clues=NO_CLUES) -> Row:
    """σ' (or J_σ): ``arrays`` = (manual, float64 reference, witness), judged at size ``scale``."""
    site = site._replace(device=setting.device)
    return compare(site, *arrays, Rounding(setting.dtype, magnitude=scale), clues)


def sigma_slips(sigma: Activation, z) -> dict:
    """The σ' slips a reader is likely to make, as autodiff forms them in float64 (for a miss).

    σ'(−z), the sign of z flipped; σ' taken at a = σ(z), not at z (as σ(1 − σ)
    applied to a). A missing or doubled chain factor is a constant factor,
    which `diagnosis.diagnose` names.
    """
    z64 = np.asarray(z, np.float64)

    def at(points):
        with jax.enable_x64():
            return np.asarray(autodiff.elementwise_derivative(sigma.fn, jnp.asarray(points)))

    def at_a():
        with jax.enable_x64():
            return at(np.asarray(sigma.fn(jnp.asarray(z64))))

    return {"σ'(−z): taken at −z": lambda: at(-z64), "σ' taken at a = σ(z), not at z": at_a}


def jac_t_dot_row(sigma, site: Site, point, J64, setting: Setting) -> Row:
    """J_σᵀg at ``point`` = (z, g) against the float64 Jacobian times g.

    The witness is autodiff's vjp; none in float64, where the reference has no
    higher precision.
    """
    z, g = point
    g = jnp.where(jnp.isfinite(g), g, 0)
    g64 = np.asarray(g, np.float64)
    with_witness = jnp.dtype(setting.dtype) != witnesses.REFERENCE_DTYPE
    witness = autodiff.jacobian_t_dot(sigma.fn, z, g) if with_witness else None
    magnitude = witnesses.jacobian_t_terms(np.asarray(sigma.fn(z), np.float64), g64)
    return compare(
        site._replace(device=setting.device),
        sigma.jac_t_dot(z, g),
        np.einsum("bij,bi->bj", J64, g64),
        witness,
        Rounding(setting.dtype, magnitude=magnitude),
    )


def _null_direction(net, g, ref) -> dict:
    """∂E/∂ŷ + c·1 per example, where σ^L's Jacobian removes the direction 1 (softmax)."""
    if net.output.elementwise:
        return {}
    J = ref.sigma_primes[-1]
    if np.max(np.abs(J.sum(axis=-2))) > 1e-6 * np.max(np.abs(J), initial=1e-300):
        return {}
    g = np.asarray(g, np.float64)
    shift = np.mean(g - ref.dE_dyhat, axis=-1, keepdims=True)
    return {NULL_DIRECTION: ref.dE_dyhat + shift}
