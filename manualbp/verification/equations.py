"""Rows for equations (1)–(4) one at a time, each given exactly the inputs the manual pass fed it.

For each equation at each layer: the reference is the equation as the
derivation writes it, in float64 (NumPy), on the manual pass's own inputs cast
up (its Δ^{l+1} or Δ^l, its A^{l-1}, W^{l+1}) with autodiff's σ' in float64;
the witness is the same equation in the net's dtype with autodiff's σ' in that
dtype. The equations are linear in Δ, so a correct equation agrees with
whatever Δ it was given, and a wrong one fails at its own layer only. Each
row names the wrong forms a reader is likely to have written (see
`candidates`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from manualbp import autodiff
from manualbp.backprop import bias_grad_batch, hidden_delta_batch, weight_grad_batch
from manualbp.verification.compare import Clues, Rounding, Setting, Site, compare
from manualbp.verification.witnesses import sequential_mean, sigma_terms


class Given(NamedTuple):
    """What the equation rows are fed: the manual pass, both sides, and what the blocks found.

    Attributes:
        net: the network.
        manual: (E, grads, deltas) of the manual pass, in the net's dtype.
        ref, wit: `witnesses.Side` in float64 and in the net's dtype (wit None
            for a float64 net: the reference has no higher precision).
        params, params64: the parameters in the net's dtype and in float64 (NumPy).
        g: the manual ∂E/∂ŷ (B, N_L), which the general (4) multiplies.
        scales: `witnesses.sigma_scale` of each σ^l.
        m_L: the size of the terms δ^L is formed from (`witnesses.output_magnitude`).
        failed: (check, layer) of the building-block rows that failed: a row
            that only inherits one of them says so, and none points at a row
            that passed.
    """

    net: object
    manual: tuple
    ref: object
    wit: object
    params: tuple
    params64: tuple
    g: object
    scales: list
    m_L: object
    failed: frozenset


def equation_rows(given_: Given, setting: Setting) -> list:
    """Rows for (4) at layer L, then (1), (2), (3) from layer L down to 2."""
    net, manual, ref, wit, params, params64, g, scales, m_L, failed = given_
    _, grads, deltas = manual
    given = wit if wit is not None else ref  # the forward pass the manual pass saw
    dtype, device = setting
    rows = [
        compare(
            Site("δ^L", 4, net.L, device),
            deltas[-1],
            ref.delta_L,
            None if wit is None else wit.delta_L,
            Rounding(dtype, magnitude=m_L),
            Clues(candidates=_output_forms(net, ref, g, ("dE/dŷ", net.L) in failed)),
        )
    ]
    for k in reversed(range(len(params64))):
        l, delta = k + 2, np.asarray(deltas[k], np.float64)
        if k < len(params64) - 1 and net.activations[k].elementwise:
            sigma = net.activations[k]
            inherited = ("σ'", k + 2) in failed
            rows.append(_hidden_row(k, given_, sigma, inherited, setting))
        A = np.asarray(given.a[k], np.float64)
        rows.append(
            compare(
                Site("∂E/∂W", 2, l, device),
                grads[k].W,
                delta.T @ A / len(A),
                (
                    None if wit is None else weight_grad_batch(deltas[k], wit.a[k]),
                    sequential_mean(delta, A, dtype),
                ),
                Rounding(dtype, magnitude=np.abs(delta).T @ np.abs(A) / len(A), reduced=len(delta)),
                Clues(
                    candidates=_weight_forms(delta, A, np.asarray(given.a[k + 1], np.float64)),
                    inputs={"δ^l": delta},
                ),
            )
        )
        rows.append(
            compare(
                Site("∂E/∂b", 3, l, device),
                grads[k].b,
                delta.mean(axis=0),
                (
                    None if wit is None else bias_grad_batch(deltas[k]),
                    sequential_mean(delta, None, dtype),
                ),
                Rounding(dtype, magnitude=np.abs(delta).mean(axis=0), reduced=len(delta)),
                Clues(
                    candidates={"summed over the batch, not averaged": delta.sum(axis=0)},
                    inputs={"δ^l": delta},
                ),
            )
        )
    return rows


def _hidden_row(k, given_: Given, sigma, inherited: bool, setting: Setting):
    """Eq. (1) at layer l = k + 2, fed the manual Δ^{l+1}.

    ``inherited``: the hand σ^l' failed its own row; (1) applied right to it
    is that row's error carried along, said so, not a second root cause.
    """
    deltas, ref, wit, params = given_.manual[2], given_.ref, given_.wit, given_.params
    delta_next, W_next = np.asarray(deltas[k + 1], np.float64), given_.params64[k + 1].W
    back = delta_next @ W_next
    sigma_prime = ref.sigma_primes[k]
    forms = {}
    if inherited:
        z = (wit if wit is not None else ref).z[k + 1]
        hand = np.asarray(sigma.deriv(jnp.asarray(z, setting.dtype)), np.float64)
        forms["inherited: (1) applied right to the hand σ' (see the σ' row at this layer)"] = (
            back * hand
        )
    forms |= {
        "σ' missing": back,
        "σ' taken at a^l, not z^l": lambda: back * _sigma_prime_at(ref.a[k + 1], sigma),
        "W^{l+1} not transposed": (delta_next @ W_next.T) * sigma_prime
        if W_next.shape[0] == W_next.shape[1]
        else None,
    }
    witness = None
    if wit is not None:
        witness = hidden_delta_batch(deltas[k + 1], params[k + 1].W, wit.sigma_primes[k])
    magnitude = (np.abs(delta_next) @ np.abs(W_next)) * sigma_terms(sigma_prime, given_.scales[k])
    return compare(
        Site("δ^l", 1, k + 2, setting.device),
        deltas[k],
        back * sigma_prime,
        witness,
        Rounding(setting.dtype, magnitude=magnitude),
        Clues(candidates=forms, inputs={"δ^{l+1}": delta_next}),
    )


def _output_forms(net, ref, g, loss_failed: bool):
    """Wrong forms of δ^L: (4) applied right to a wrong ∂E/∂ŷ (only where the dE/dŷ row
    failed: a diagnosis never points at a row that passed); σ^L' left out."""
    if net.fused and net.fused_loss is not None:
        return {}
    g = np.asarray(g, np.float64)
    g = np.where(np.isfinite(g), g, 0)
    sigma_prime = ref.sigma_primes[-1]
    if net.output.elementwise:
        applied = g * sigma_prime
        identity = np.all(sigma_prime == 1)
    else:
        applied = np.einsum("bij,bi->bj", sigma_prime, g)
        identity = False
    forms = {}
    if loss_failed:
        forms["inherited: (4) applied right to a wrong ∂E/∂ŷ (see the dE/dŷ row)"] = applied
    if not identity:  # with σ^L the identity, δ^L = ∂E/∂ŷ is right, not a σ' left out
        forms["σ^L' missing: δ^L = ∂E/∂ŷ"] = g
    return forms


def _weight_forms(delta, A, A_next):
    forms = {"summed over the batch, not averaged": delta.T @ A}
    if A_next.shape == A.shape:
        forms["a^l in place of a^{l-1} (one layer off)"] = delta.T @ A_next / len(A)
    if delta.shape[1] == A.shape[1]:
        forms["transposed: a^{l-1} (δ^l)ᵀ in place of δ^l (a^{l-1})ᵀ"] = (delta.T @ A / len(A)).T
    return forms


def _sigma_prime_at(a, sigma):
    """σ' taken at a^l, by autodiff in float64: a wrong form, formed only for a miss."""
    with jax.enable_x64():
        return np.asarray(autodiff.elementwise_derivative(sigma.fn, jnp.asarray(a)))
