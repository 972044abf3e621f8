"""Differential privacy for `train`, in one place: the settings, the sampler, ε, σ, the audit.

`mbp.privacy` is this module. DP-SGD's step is in `dpsgd` (equation (9′) of
docs/derivation.md), Poisson sampling in `poisson`, the accounting by
dp-accounting in `accounting` and the one-run audit in `audit`. Two data
sets are neighbours when one is the other plus one example
(add-or-remove-one adjacency), the relation every ε here is stated for.
"""

from __future__ import annotations

from manualbp.training import accounting
from manualbp.training.accounting import ADJACENCY, calibrate_noise
from manualbp.training.audit import AuditResult, AuditSettings, audit
from manualbp.training.dpsgd import DPSGD, MECHANISM, Mechanism, physical_size
from manualbp.training.poisson import drawn_rate, poisson_batches

__all__ = [
    "ADJACENCY",
    "DPSGD",
    "MECHANISM",
    "AuditResult",
    "AuditSettings",
    "Mechanism",
    "audit",
    "calibrate",
    "calibrate_noise",
    "drawn_rate",
    "epsilon",
    "physical_size",
    "poisson_batches",
]


def epsilon(privacy: DPSGD, *, steps: int, n: int, batch_size: int) -> float:
    """ε at ``privacy.delta`` after ``steps`` steps of expected batch B̄ from n examples,
    by ``privacy.accountant`` (add-or-remove-one adjacency)."""
    return accounting.epsilon(
        privacy.noise_multiplier, batch_size / n, steps, privacy.delta, privacy.accountant
    )


def calibrate(
    target_epsilon: float,
    *,
    delta: float,
    n: int,
    batch_size: int,
    epochs: int,
    accountant: str = "pld",
) -> float:
    """The noise multiplier σ that reaches ``target_epsilon`` at ``delta`` after ``epochs``
    epochs of ⌊n / B̄⌋ steps at rate q = B̄ / n (dp-accounting's calibration).

    Raises:
        ValueError: bad settings, or a target no σ reaches (one line each).
    """
    for name, value in (("n", n), ("batch_size", batch_size), ("epochs", epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if batch_size > n:
        raise ValueError(f"batch_size: expected at most the {n} examples, got {batch_size}")
    steps = epochs * (n // batch_size)
    return calibrate_noise(
        target_epsilon, delta, rate=batch_size / n, steps=steps, accountant=accountant
    )
