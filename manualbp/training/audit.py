"""One-run privacy auditing: try to break the claimed ε with canaries (Steinke, Nasr and
Jagielski, 2023).

m white-box gradient canaries join a private run. Canary k is the gradient
L e_{j_k} (a norm L > C along one flattened parameter coordinate j_k, all
distinct); each is included in the run independently with probability ½,
and an included one is Poisson-sampled at rate q in every step like any
example, clipped by the same equation (8) and added to the clipped sum
before the noise (`programs.private_epoch`). An adversary who sees every
noised sum, which the accounting covers, scores canary k by the sum over the
steps of the noised sum's coordinate j_k: included canaries score higher.

From the scores of the included and the excluded canaries, jax-privacy's
`CanaryScoreAuditor.epsilon_one_run` (the optional extra ``manualbp[audit]``)
gives the paper's ε lower bound at the chosen confidence: if the run were
(ε, δ)-DP for the claimed ε, a bound above it would occur with probability
at most 1 − confidence. So a lower bound above the claim is a bug found; one
below it proves nothing beyond "not caught".
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from manualbp import validation
from manualbp.network import MLP, Params, as_targets
from manualbp.parameters import param_dtype
from manualbp.training import accounting, dpsgd, programs
from manualbp.training.checkpoint import to_host

Array = jax.Array


class AuditResult(NamedTuple):
    """What `audit` returns.

    Attributes:
        epsilon_lower: the empirical ε lower bound at ``confidence``.
        epsilon_claimed: the accountant's ε for the run, at the same δ.
        delta: δ of both.
        confidence: e.g. 0.95.
        scores: (m,) one score per canary.
        included: (m,) bool, which canaries were in the run.
        steps: the private steps run.
    """

    epsilon_lower: float
    epsilon_claimed: float
    delta: float
    confidence: float
    scores: np.ndarray
    included: np.ndarray
    steps: int

    @property
    def caught(self) -> bool:
        """The lower bound exceeds the claim: the run is not as private as claimed."""
        return self.epsilon_lower > self.epsilon_claimed

    def line(self) -> str:
        verdict = "CLAIM BROKEN" if self.caught else "claim not broken"
        return (
            f"audit: empirical ε ≥ {self.epsilon_lower:.3f} ({self.confidence:.0%} confidence, "
            f"{self.scores.size} canaries, one run) beside claimed ε = "
            f"{self.epsilon_claimed:.3f} at δ = {self.delta:g} ({accounting.ADJACENCY}, "
            f"{self.steps} steps): {verdict}"
        )


class AuditSettings(NamedTuple):
    """The canaries and the confidence of an audit.

    Attributes:
        canaries: m, the number of canaries (at most the number of parameters).
        canary_norm: L, each canary gradient's norm; default 10 C, so that a
            step that fails to clip lets it through at ten times the allowed norm.
        confidence: of the lower bound, in (0, 1).
    """

    canaries: int = 1000
    canary_norm: float | None = None
    confidence: float = 0.95


def audit(
    net: MLP,
    params: Params,
    optimizer: optax.GradientTransformation,
    data: tuple,
    privacy: dpsgd.DPSGD,
    *,
    batch_size: int,
    epochs: int,
    key: Array,
    settings: AuditSettings | None = None,
    mechanism: dpsgd.Mechanism = dpsgd.MECHANISM,
) -> AuditResult:
    """Run DP-SGD on ``data`` = (X, Y) with canaries, and bound its ε from below.

    The run is the private epoch `train` runs (same sampler, clipping, noise),
    for ``epochs`` epochs of ⌊n / B̄⌋ steps. ``mechanism`` swaps the clip
    factors or the noise scale; it exists so that tests can show that broken
    variants are caught. Needs dp-accounting and jax-privacy
    (``pip install 'manualbp[privacy,audit]'``).

    Returns:
        `AuditResult`; ``result.line()`` prints the bound beside the claim.
    """
    auditor = _auditor_package()
    settings = AuditSettings() if settings is None else settings
    X, Y, m, norm = _check(net, params, data, privacy, batch_size, epochs, settings)
    dtype = param_dtype(params)
    X, Y = X.astype(dtype), as_targets(net, jnp.asarray(Y), dtype)
    key_canaries, key_in, key = jax.random.split(key, 3)
    size = sum(p.size for p in jax.tree.leaves(params))
    coordinates = jax.random.permutation(key_canaries, size)[:m]
    included = jax.random.bernoulli(key_in, 0.5, (m,))
    canaries = (coordinates, jnp.asarray(norm, jnp.float32), included)
    scores = jnp.zeros((m,), dtype)
    params, opt_state = jax.tree.map(jnp.array, params), optimizer.init(params)
    for _ in range(epochs):
        params, opt_state, key, _, epoch_scores = programs.private_epoch(
            params, opt_state, key, X, Y, canaries, net=net, optimizer=optimizer,
            batch_size=batch_size, compute_dtype=jnp.dtype(dtype), batch_sharding=None,
            privacy=privacy, mechanism=mechanism,
        )  # fmt: skip
        scores = scores + epoch_scores
    scores, included = to_host(scores).astype(np.float64), to_host(included)
    steps = epochs * (X.shape[0] // batch_size)
    claimed = accounting.epsilon(
        privacy.noise_multiplier, batch_size / X.shape[0], steps, privacy.delta, privacy.accountant
    )
    lower = _lower_bound(auditor, scores, included, privacy.delta, settings.confidence)
    return AuditResult(lower, claimed, privacy.delta, settings.confidence, scores, included, steps)


def _lower_bound(auditor, scores, included, delta: float, confidence: float) -> float:
    if included.all() or not included.any():  # one side empty: nothing to compare
        return 0.0
    found = auditor.CanaryScoreAuditor(scores[included], scores[~included])
    return float(found.epsilon_one_run(significance=1 - confidence, delta=delta))


def _check(net, params, data, privacy, batch_size, epochs, settings: AuditSettings):
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError("data: expected a pair (X, Y)")
    X, Y = validation.check_batch(net, params, *data)
    dpsgd.check(privacy, "manual", True)
    if privacy is None:
        raise ValueError("privacy: expected mbp.DPSGD(...) settings to audit, got None")
    for name, value in (("batch_size", batch_size), ("epochs", epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if batch_size > X.shape[0]:
        raise ValueError(
            f"batch_size: expected at most the {X.shape[0]} examples, got {batch_size}"
        )
    size = sum(p.size for p in jax.tree.leaves(params))
    m = settings.canaries
    if isinstance(m, bool) or not isinstance(m, int) or not 2 <= m <= size:
        raise ValueError(
            f"canaries: expected an integer in [2, {size}] (one per parameter), got {m!r}"
        )
    norm = 10 * privacy.l2_clip if settings.canary_norm is None else settings.canary_norm
    if not (isinstance(norm, (int, float)) and 0 < norm < math.inf):
        raise ValueError(f"canary_norm: expected a finite number > 0, got {norm!r}")
    if not 0 < settings.confidence < 1:
        raise ValueError(f"confidence: expected a number in (0, 1), got {settings.confidence!r}")
    accounting.check_installed()
    return X, Y, m, float(norm)


def _auditor_package():
    try:
        from jax_privacy import auditing
    except ImportError as error:
        raise ImportError(
            "audit: the ε lower bound comes from jax-privacy's CanaryScoreAuditor: "
            "pip install 'manualbp[audit]' (or pip install jax-privacy)"
        ) from error
    return auditing
