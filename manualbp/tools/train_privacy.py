"""``manualbp train``'s DP-SGD flags: checked together before any work, then `mbp.DPSGD`."""

from __future__ import annotations

from manualbp.tools.console import UserError
from manualbp.tools.train_config import TrainConfig


def check_privacy_flags(config: TrainConfig) -> None:
    """The --dp-* flags fit together, before any run folder is made (one line each)."""
    if config.dp_clip is None:
        given = [f for f in ("dp_noise", "dp_epsilon", "dp_physical_size") if getattr(config, f)]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise UserError(f"{flag}: needs --dp-clip C to train with DP-SGD")
        return
    if config.grad != "manual":
        raise UserError(
            f"--dp-clip: DP-SGD clips with the manual gradients only; got --grad {config.grad}, "
            "add --grad manual"
        )
    if (config.dp_noise is None) == (config.dp_epsilon is None):
        raise UserError("--dp-clip: give exactly one of --dp-noise σ or --dp-epsilon ε")


def privacy_settings(config: TrainConfig, n_train: int):
    """mbp.DPSGD from the flags, σ calibrated for --dp-epsilon; a line says what ε means.

    With privacy the inputs are not standardized: the training set's mean and standard
    deviation would leave the run unaccounted.
    """
    import manualbp as mbp

    if config.dp_clip is None:
        return None
    sigma = config.dp_noise
    if config.dp_epsilon is not None:
        sigma = mbp.privacy.calibrate(
            config.dp_epsilon,
            delta=config.dp_delta,
            n=n_train,
            batch_size=config.batch_size,
            epochs=config.epochs,
            accountant=config.dp_accountant,
        )
    privacy = mbp.DPSGD(
        config.dp_clip, sigma, config.dp_delta, config.dp_physical_size, config.dp_accountant
    )
    print(
        f"DP-SGD: C = {config.dp_clip:g}, σ = {sigma:.4g}, Poisson sampling at q = "
        f"{config.batch_size}/{n_train}, ε by {config.dp_accountant.upper()} at δ = "
        f"{config.dp_delta:g}, {mbp.privacy.ADJACENCY} adjacency; inputs not standardized, "
        "no training loss reported",
        flush=True,
    )
    return privacy
