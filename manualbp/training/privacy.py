"""DP-SGD for `train`: the settings, each step's clipped and noised gradient, the accounting.

A step (docs/derivation.md, equation (9)): the clipped mean gradient
(1/B) Σ_b min(1, C / ‖g_b‖) g_b by `extensions.per_example` (ghost clipping,
one backward pass, no per-example gradient formed), plus Gaussian noise of
standard deviation σ C / B on every coordinate, i.e. the Gaussian mechanism
with noise σ C on the clipped sum, whose sensitivity to one example is C. The
noise is drawn from a key split per step inside the compiled epoch from the
run's key, so a checkpointed run resumes bit-identically.

Sampling, stated honestly: `train` takes fixed-size batches of a shuffled
epoch (every step the same shape, one compiled program), while the accountant
assumes Poisson sampling with rate q = B / n. The reported ε is therefore the
usual approximation DP-SGD libraries report for shuffled batches, not a proven
bound for the sampling actually done.

Accounting: the `dp-accounting` package's RDP accountant (the optional extra
``manualbp[privacy]``), never a formula of our own: after each epoch, ε at
the given δ for all steps so far, each a `PoissonSampledDpEvent(q,
GaussianDpEvent(σ))`, under add-or-remove-one neighbouring (see `epsilon`).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from manualbp.extensions.per_example import check_l2_clip, clipped_mean_grad
from manualbp.network import MLP, Params

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class DPSGD:
    """Differentially private training: clip each example's gradient, add Gaussian noise.

    Frozen and hashable: it is a static setting of the compiled epoch.

    Args:
        l2_clip: C > 0, the largest norm of one example's gradient (all layers together).
        noise_multiplier: σ > 0; the noise on the mean gradient has standard deviation σ C / B.
        delta: the δ at which the history reports ε, 0 < δ < 1 (usually below 1/n).
    """

    l2_clip: float
    noise_multiplier: float
    delta: float = 1e-5

    def __post_init__(self):
        object.__setattr__(self, "l2_clip", check_l2_clip(self.l2_clip))
        for name, low_open in (("noise_multiplier", 0.0), ("delta", 0.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name}: expected a number, got {value!r}")
            if not low_open < value < math.inf:
                raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.delta >= 1:
            raise ValueError(f"delta: expected 0 < delta < 1, got {self.delta!r}")


def check(privacy, grad: str, shuffle: bool) -> None:
    """privacy must be None or a `DPSGD` with manual gradients, shuffled batches, dp-accounting."""
    if privacy is None:
        return
    if not isinstance(privacy, DPSGD):
        raise TypeError(
            f"privacy: expected mbp.DPSGD(l2_clip=..., noise_multiplier=...), "
            f"got {type(privacy).__name__}"
        )
    if grad != "manual":
        raise ValueError(
            f"privacy: DP-SGD clips each example's gradient by equations (5), (8), (9), which "
            f"the manual path computes; grad={grad!r} is not supported, use grad='manual'"
        )
    if not shuffle:
        raise ValueError(
            "privacy: the accounting assumes randomly drawn batches; shuffle=False is not allowed"
        )
    _accounting_package()


def _accounting_package():
    try:
        import dp_accounting
    except ImportError as error:
        raise ImportError(
            "privacy: the accounting needs the dp-accounting package: "
            "pip install 'manualbp[privacy]' (or pip install dp-accounting)"
        ) from error
    return dp_accounting


def clipped_value_and_grad(
    privacy: DPSGD, net: MLP, params: Params, X: Array, Y: Array
) -> tuple[Array, Params]:
    """(Ē, (1/B) Σ_b c_b g_b) by equations (5), (8) and (9), in the batch's dtype."""
    return clipped_mean_grad(net, params, X, Y, jnp.asarray(privacy.l2_clip, X.dtype))


def add_noise(privacy: DPSGD, grads: Params, key: Array, batch_size: int) -> Params:
    """Eq. (9): each coordinate plus N(0, (σ C / B)²), drawn in the gradient's dtype."""
    leaves, tree = jax.tree.flatten(grads)
    std = privacy.noise_multiplier * privacy.l2_clip / batch_size
    noisy = [
        g + jnp.asarray(std, g.dtype) * jax.random.normal(k, g.shape, g.dtype)
        for g, k in zip(leaves, jax.random.split(key, len(leaves)), strict=True)
    ]
    return jax.tree.unflatten(tree, noisy)


def epsilon(privacy: DPSGD, *, steps: int, n: int, batch_size: int) -> float:
    """ε at ``privacy.delta`` after ``steps`` steps of batches of B from n examples (RDP).

    The accountant's RDP curve of one step is computed once per (σ, q) and
    kept (about 0.3 s on a 2-core CPU, far more than a small epoch); ``steps``
    steps compose to ``steps`` times it, as `RdpAccountant` composes a
    `SelfComposedDpEvent`, and dp-accounting's `compute_epsilon` turns that
    into ε. Equal to a fresh accountant composing all the steps (tested).
    """
    dp = _accounting_package()
    orders, rdp_one_step = _step_rdp(privacy.noise_multiplier, batch_size / n)
    eps, _ = dp.rdp.rdp_privacy_accountant.compute_epsilon(
        orders, steps * rdp_one_step, privacy.delta
    )
    return float(eps)


@functools.lru_cache(maxsize=64)
def _step_rdp(noise_multiplier: float, q: float) -> tuple:
    """(orders, RDP at each order) of one Poisson-sampled Gaussian step, by `RdpAccountant`."""
    dp = _accounting_package()
    accountant = dp.rdp.RdpAccountant()
    accountant.compose(dp.PoissonSampledDpEvent(q, dp.GaussianDpEvent(noise_multiplier)))
    return accountant.orders, accountant.rdp


def accounting(privacy: DPSGD | None, *, epoch: int, n: int, batch_size: int) -> dict:
    """The history's privacy entries after ``epoch`` epochs: ε and δ; {} without privacy."""
    if privacy is None:
        return {}
    steps = epoch * (n // batch_size)
    return {
        "epsilon": epsilon(privacy, steps=steps, n=n, batch_size=batch_size),
        "delta": privacy.delta,
    }
