"""Manual and autodiff training side by side: the same net, params, key and optimizer, twice.

`train_side_by_side` runs `manualbp.train` once per gradient path into one run
folder; `curve_gap`, `split_epoch` and `summary_rows` compare the two histories.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax

from manualbp.tools.runs import Run


def train_side_by_side(
    run: Run,
    net,
    params,
    optimizer,
    train_data: tuple,
    *,
    epochs: int,
    batch_size: int,
    key: jax.Array,
    grads: Sequence[str] = ("manual", "autodiff"),
    eval_data: tuple | None = None,
    progress: bool = False,
    metrics: Sequence[str] = ("loss", "test_loss", "test_accuracy"),
    checkpoint_dir: str | None = None,
    check_every: int | None = None,
    privacy=None,
    resume: str = "same",
) -> dict[str, Any]:
    """`manualbp.training` once per gradient path, from the same params, key and optimizer.

    Every epoch's metrics go to ``metrics.jsonl`` with ``grad`` set; the curves
    of ``metrics`` (those the history has) go to ``curves.png``, one axis per
    metric with every path on it. With ``checkpoint_dir``, each path saves to
    and resumes from ``<checkpoint_dir>/<grad>/``; only the epochs trained now
    are logged. A resume is announced once it is accepted, never before: by
    `mbp.train` itself with ``progress``, else here after the path finished.
    ``check_every`` (the gradient check) and ``resume`` are `mbp.train`'s;
    ``privacy`` (an `mbp.DPSGD`) trains each path with DP-SGD.

    Returns:
        {grad: `TrainResult`}, plus ``"seconds"``: {grad: wall time}.
    """
    settings = dict(
        epochs=epochs,
        batch_size=batch_size,
        key=key,
        eval_data=eval_data,
        check_every=check_every,
        progress=progress,
        resume=resume,
        privacy=privacy,
    )
    results, seconds = {}, {}
    for grad in grads:
        directory = None if checkpoint_dir is None else str(Path(checkpoint_dir) / grad)
        started = time.perf_counter()
        results[grad], logged = _train_logged(
            run, (net, params, optimizer, *train_data), dict(settings, grad=grad), directory
        )
        seconds[grad] = time.perf_counter() - started
        if not progress and (not logged or logged[0] > 1):
            print(_resumed_line(grad, directory, logged, epochs), file=sys.stderr)
    _plot(run, results, grads, metrics)
    return {**results, "seconds": seconds}


def _train_logged(run: Run, args: tuple, settings: dict, directory: str | None):
    """`mbp.train(*args, **settings)` saving to ``directory``, each epoch logged with its
    path; returns the result and the epochs trained now."""
    import manualbp as mbp

    grad, logged = settings["grad"], []

    def log(record):
        logged.append(record["epoch"])
        run.log(grad=grad, **record)

    return mbp.train(*args, **settings, checkpoint_dir=directory, callback=log), logged


def _plot(run: Run, results: Mapping[str, Any], grads: Sequence[str], metrics: Sequence[str]):
    """``curves.png``: one axis per metric the history has, every gradient path on it."""
    metrics = [m for m in metrics if m in results[grads[0]].history[0]]
    panels = {
        metric: {grad: [h[metric] for h in results[grad].history] for grad in grads}
        for metric in metrics
    }
    run.plot("curves.png", panels, logy=[m for m in metrics if m.endswith("loss")])


def _resumed_line(grad: str, directory: str, logged: list[int], epochs: int) -> str:
    if not logged:
        return f"{grad}: the checkpoint in {directory} already held all {epochs} epochs"
    after = logged[0] - 1
    return f"{grad}: resumed from the checkpoint in {directory} after epoch {after} of {epochs}"


def completed_epochs(directory: str | Path) -> int:
    """The epoch count a manualbp checkpoint in ``directory`` records; 0 if none is readable."""
    from manualbp.training import checkpoint

    return checkpoint.completed_epochs(directory)  # never blocks on a FIFO, reads no arrays


def curve_gap(histories: Mapping[str, list[dict]], metric: str = "loss") -> float:
    """max over epochs of |manual − autodiff| for ``metric`` (0 when the curves coincide)."""
    manual, autodiff = histories["manual"], histories["autodiff"]
    return max(abs(a[metric] - b[metric]) for a, b in zip(manual, autodiff, strict=True))


def split_epoch(
    histories: Mapping[str, list[dict]], metric: str = "loss", rtol: float = 1e-3
) -> int | None:
    """The first epoch where manual and autodiff differ by more than ``rtol`` relatively.

    Rounding differs between the two paths, so on a chaotic trajectory (large
    steps, Adam near a minimum) they separate eventually; None if they never do.
    """
    manual, autodiff = histories["manual"], histories["autodiff"]
    for a, b in zip(manual, autodiff, strict=True):
        if abs(a[metric] - b[metric]) > rtol * abs(b[metric]):
            return a["epoch"]
    return None


def summary_rows(results: Mapping[str, Any], grads: Sequence[str]) -> list[dict[str, Any]]:
    """One row per gradient path: its last epoch's metrics and its wall time."""
    rows = []
    for grad in grads:
        last = results[grad].history[-1]
        row = {"grad": grad, **{k: v for k, v in last.items() if not isinstance(v, dict)}}
        row["seconds"] = results["seconds"][grad]
        rows.append(row)
    return rows
