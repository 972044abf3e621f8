"""The privacy accounting of DP-SGD, by dp-accounting, never by a formula of our own.

Each step is the event the sampler and the noise make (`dpsgd`, `poisson`):
`PoissonSampledDpEvent(q, GaussianDpEvent(σ))`, with q the rate actually
drawn (`poisson.drawn_rate`), under add-or-remove-one adjacency (two data
sets are neighbours when one is the other plus one example). T steps are
`SelfComposedDpEvent(step, T)`. The accountant is dp-accounting's PLD
(privacy loss distributions, a tight numerical bound) by default, or its RDP
(Rényi DP, looser) on request. `calibrate_noise` finds the σ that reaches a
target (ε, δ) with dp-accounting's own calibration.
"""

from __future__ import annotations

import functools
import logging
import math

from manualbp.training import poisson

ADJACENCY = "add-or-remove-one"

# The σ range calibration searches: a target that needs more noise is refused; one
# that less would reach gets the least (the PLD of weaker noise is costly to build,
# and the guarantee is too weak to want).
MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER = 0.3, 1e3


def _package():
    try:
        import dp_accounting
    except ImportError as error:
        raise ImportError(
            "privacy: the accounting needs the dp-accounting package: "
            "pip install 'manualbp[privacy]' (or pip install dp-accounting)"
        ) from error
    return dp_accounting


def check_installed() -> None:
    """dp-accounting must be importable before a private run starts."""
    _package()


def dp_event(noise_multiplier: float, rate: float, steps: int):
    """The DpEvent of ``steps`` Poisson-sampled Gaussian steps at the drawn rate."""
    dp = _package()
    step = dp.PoissonSampledDpEvent(poisson.drawn_rate(rate), dp.GaussianDpEvent(noise_multiplier))
    return dp.SelfComposedDpEvent(step, steps)


def _accountant(name: str):
    dp = _package()
    relation = dp.NeighboringRelation.ADD_OR_REMOVE_ONE
    if name == "rdp":
        return dp.rdp.RdpAccountant(neighboring_relation=relation)
    return dp.pld.PLDAccountant(neighboring_relation=relation)


@functools.lru_cache(maxsize=256)
def epsilon(
    noise_multiplier: float, rate: float, steps: int, delta: float, accountant: str = "pld"
) -> float:
    """ε at δ after ``steps`` DP-SGD steps of noise σ at sampling rate q (add-or-remove-one)."""
    if steps == 0:
        return 0.0
    fresh = _accountant(accountant)
    with _quiet():
        fresh.compose(dp_event(noise_multiplier, rate, steps))
        return float(fresh.get_epsilon(delta))


def calibrate_noise(
    target_epsilon: float, delta: float, *, rate: float, steps: int, accountant: str = "pld"
) -> float:
    """The least σ (within dp-accounting's tolerance) whose T steps at rate q give ε ≤ target,
    searched in [MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER].

    Raises:
        ValueError: the target is not a finite ε > 0, or no σ ≤ MAX_NOISE_MULTIPLIER
            reaches it.
    """
    dp = _package()
    target = _check_target(target_epsilon, delta, rate, steps)
    if epsilon(MAX_NOISE_MULTIPLIER, rate, steps, delta, accountant) > target:
        raise ValueError(
            f"target_epsilon: no noise multiplier σ ≤ {MAX_NOISE_MULTIPLIER:g} reaches "
            f"ε = {target:g} at δ = {delta:g} for q = {rate:g} and {steps} steps; allow a "
            "larger ε or δ, or fewer steps"
        )
    if epsilon(MIN_NOISE_MULTIPLIER, rate, steps, delta, accountant) <= target:
        return MIN_NOISE_MULTIPLIER
    with _quiet():
        sigma = dp.calibrate_dp_mechanism(
            lambda: _accountant(accountant),
            lambda s: dp_event(s, rate, steps),
            target,
            delta,
            dp.ExplicitBracketInterval(MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER),
            tol=1e-4,
        )
    return float(sigma)


def _check_target(target_epsilon, delta, rate, steps) -> float:
    if isinstance(target_epsilon, bool) or not isinstance(target_epsilon, (int, float)):
        raise TypeError(f"target_epsilon: expected a number, got {target_epsilon!r}")
    if not 0 < target_epsilon < math.inf:
        raise ValueError(f"target_epsilon: expected a finite ε > 0, got {target_epsilon!r}")
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
        raise ValueError(f"delta: expected 0 < delta < 1, got {delta!r}")
    poisson.check_rate(rate)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive integer, got {steps!r}")
    return float(target_epsilon)


class _quiet:
    """Keeps dp-accounting's absl "failed to converge" warnings off the terminal.

    The RDP accountant logs one when its series for one fractional order does
    not converge; it then sets that order's RDP to ∞, so ε comes from the
    other orders and is still an upper bound. Nothing for the caller to act on.
    """

    def __enter__(self):
        self._logger = logging.getLogger("absl")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)


def entries(privacy, *, epoch: int, n: int, batch_size: int) -> dict:
    """The history's privacy entries after ``epoch`` epochs: ε, δ, steps and the adjacency."""
    if privacy is None:
        return {}
    steps = epoch * (n // batch_size)
    eps = epsilon(
        privacy.noise_multiplier, batch_size / n, steps, privacy.delta, privacy.accountant
    )
    return {
        "epsilon": eps,
        "delta": privacy.delta,
        "steps": steps,
        "accountant": privacy.accountant,
        "adjacency": ADJACENCY,
    }
