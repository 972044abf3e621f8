"""What a run reports: the gradient check's entry, the progress and resume lines, divergence."""

from __future__ import annotations

import jax
import numpy as np

from manualbp import tolerance
from manualbp.parameters import param_dtype
from manualbp.training import programs
from manualbp.training.checkpoint import to_host


class DivergenceError(FloatingPointError):
    """Training produced a non-finite loss (or parameters); ``epoch`` names the epoch.

    Attributes:
        epoch: the 1-based epoch in which it happened; nothing of it was kept.
        history: the history of the epochs before it.
    """

    def __init__(self, message: str, epoch: int, history: list[dict]):
        super().__init__(message)
        self.epoch = epoch
        self.history = history


def grad_check(net, params, X, Y) -> dict:
    """The history's ``grad_check`` entry: manual against autodiff on (X, Y), by the
    tolerance rule."""
    manual, auto, magnitude = jax.tree.map(to_host, programs.both_grads(params, X, Y, net=net))
    errors = tolerance.tree_errors(manual, auto, magnitude)
    rtol = tolerance.net_rtol(param_dtype(params), net.sizes, X.shape[0])
    worst = max(rel for _, _, rel in errors)
    return {"max_rel_error": worst, "rtol": rtol, "passed": bool(worst <= rtol)}


def divergence_message(epoch, losses, checkpoint_dir) -> str:
    """Where the epoch went non-finite; ``losses`` is None for a private epoch (no loss)."""
    bad = np.flatnonzero(~np.isfinite(losses)) if losses is not None else np.array([])
    if bad.size:
        where = f"loss {losses[bad[0]]} at step {bad[0] + 1} of {losses.size}"
    elif losses is not None:
        where = f"non-finite parameters after step {losses.size} of {losses.size}"
    else:
        where = "non-finite parameters"
    kept = (
        f"; the checkpoint of epoch {epoch - 1} in {checkpoint_dir} is kept"
        if checkpoint_dir is not None and epoch > 1
        else ""
    )
    return (
        f"training diverged in epoch {epoch}: {where}{kept}. Try a smaller learning rate "
        "or check the data's scale"
    )


def resume_line(start: int, epochs: int, checkpoint_dir) -> str:
    if start == epochs:
        return f"checkpoint in {checkpoint_dir} already holds all {epochs} epochs: nothing to train"
    return f"resuming from the checkpoint in {checkpoint_dir} after epoch {start} of {epochs}"


def progress_line(record: dict, epochs: int, grad: str, seconds: float) -> str:
    """One epoch's line; a private run's has no training loss, and states ε, δ and the
    adjacency they hold for."""
    width = len(str(epochs))
    parts = [f"{grad:<8} epoch {record['epoch']:>{width}}/{epochs}"]
    for name in ("loss", "test_loss", "test_accuracy"):
        if name in record:
            parts.append(f"{name} {record[name]:.6g}")
    if "epsilon" in record:
        parts.append(
            f"ε {record['epsilon']:.4g} at δ {record['delta']:g} ({record['accountant']}, "
            f"{record['adjacency']}, {record['steps']} steps)"
        )
    if "grad_check" in record:
        check = record["grad_check"]
        verdict = "ok" if check["passed"] else "FAILED"
        parts.append(
            f"grad_check {verdict} ({check['max_rel_error']:.2e} vs rtol {check['rtol']:.2e})"
        )
    parts.append(f"{seconds:.2f}s")
    return "  ".join(parts)
