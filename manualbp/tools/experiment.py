"""Experiment plumbing: configs as command lines, run folders, metrics, plots, tables.

An experiment is a frozen dataclass of commented defaults (a subclass of
`RunConfig`, which adds ``seed``, ``runs_dir`` and ``run_name``) and a
``main(config) -> dict``. `parse_config` turns the dataclass into argparse
flags: ``batch_size: int = 32  # examples per step`` becomes ``--batch-size INT``
with that comment and the default as its help; bools become ``--flag/--no-flag``,
``Literal`` fields choices, ``tuple[int, ...]`` fields lists written ``4,8,3`` or
``4 8 3``. `start_run` makes ``<runs_dir>/<experiment>/<run_name or timestamp>/``
and writes ``config.json`` (the config and the environment: versions, backend,
devices, x64); `Run.log` appends to ``metrics.jsonl``; `Run.plot` writes PNGs
with matplotlib's Agg canvas (imported only then); `run_folder` marks a run that
fails. `manualbp train` is built from these in `manualbp.tools.train_cli`.

Orchestration only: the math lives in the other modules.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import inspect
import io
import json
import re
import shutil
import sys
import time
import tokenize
import types
import typing
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np

from manualbp.records import environment, to_json
from manualbp.table import format_table
from manualbp.tools.console import UserError, guarded, list_argument

# --- configs as command lines -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What every experiment has: the one seed and where its run folder goes."""

    seed: int = 0  # the one seed: data, initialization and shuffling all derive from it
    runs_dir: str = "runs"  # run folders go to <runs_dir>/<experiment>/<run name>/
    run_name: str | None = None  # the run folder's name (default: a timestamp)


_FIELD_LINE = re.compile(r"^\s+(\w+)\s*:")


def field_comments(cls: type) -> dict[str, str]:
    """Each field's trailing ``# comment`` in the class source (base classes included)."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        lines = source.splitlines()
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type != tokenize.COMMENT:
                continue
            match = _FIELD_LINE.match(lines[token.start[0] - 1])
            if match:
                comments[match.group(1)] = token.string.lstrip("#").strip()
    return comments


def _argument(name: str, hint: Any, default: Any) -> dict[str, Any]:
    """argparse keyword arguments for one field of type ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"{name}: unsupported type {hint} (only X | None unions)")
        return _argument(name, inner[0], default)
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        return {"type": type(args[0]), "choices": list(args), "metavar": None}
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return list_argument(args[0])
    if hint in (int, float, str):
        return {"type": hint, "metavar": hint.__name__.upper()}
    raise TypeError(f"{name}: unsupported config field type {hint}")


def _help(comment: str, default: Any) -> str:
    """The field's comment, and its default unless the comment already says it.

    A None default means something only the comment can say ("a timestamp"),
    so it is never shown as "None".
    """
    if "default" in comment or default is None:
        return comment
    if isinstance(default, tuple):
        default = " ".join(map(str, default))
    return f"{comment} (default: {default})".strip()


def build_parser(
    cls: type, description: str | None = None, prog: str | None = None
) -> argparse.ArgumentParser:
    """An argparse parser with one ``--flag`` per field of the frozen dataclass ``cls``.

    Args:
        cls: a dataclass; each field needs a default, and a type among int,
            float, str, bool, ``Literal[...]``, ``tuple[T, ...]`` and ``T | None``.
        description: shown by ``-h`` (an experiment passes its module docstring).
        prog: the program name shown in usage lines.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"expected a dataclass, got {cls!r}")
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description and inspect.cleandoc(description),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    for field in dataclasses.fields(cls):
        if field.default is dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{field.name}: every config field needs a default")
        kwargs = _argument(field.name, hints[field.name], field.default)
        action = parser.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            default=field.default,
            **{k: v for k, v in kwargs.items() if v is not None},
        )
        # Set after: BooleanOptionalAction appends a default of its own before Python 3.13.
        action.help = _help(comments.get(field.name, ""), field.default)
    return parser


def parse_config(
    cls: type, argv: Sequence[str] | None = None, description: str | None = None, prog=None
):
    """The config ``cls(**flags)`` from the command line (``sys.argv[1:]`` by default).

    ``-h`` prints the flags and exits 0; a wrong type or choice exits 2.
    """
    return cls(**vars(build_parser(cls, description, prog).parse_args(argv)))


def run_main(main, cls: type, description: str | None = None) -> int:
    """The ``__main__`` entry of an experiment: parse ``sys.argv``, run ``main``.

    Returns 0; an error is one line and status 2 or 1 (`console.guarded`).
    """
    config = parse_config(cls, description=description)

    def run() -> int:
        main(config)
        return 0

    return guarded(Path(sys.argv[0]).name, run)


# --- run folders ----------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """One run folder: ``config.json``, ``metrics.jsonl`` and plots."""

    path: Path

    def log(self, **record: Any) -> None:
        """Append one JSON object to ``metrics.jsonl``."""
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(to_json(record), allow_nan=False) + "\n")

    def write_json(self, name: str, value: Any) -> Path:
        """Write ``value`` as indented JSON to ``<run>/<name>``."""
        path = self.path / name
        path.write_text(json.dumps(to_json(value), indent=2, allow_nan=False) + "\n")
        return path

    def plot(self, name: str, panels: Mapping[str, Mapping[str, Sequence]], **kwargs) -> Path:
        """`plot_curves` into ``<run>/<name>``."""
        return plot_curves(self.path / name, panels, **kwargs)

    def fail(self, error: BaseException) -> None:
        """Say in the folder that the run failed; remove it when it holds nothing but its config.

        With logged epochs, ``summary.json`` gets ``status: failed`` and the
        error, beside the metrics; without, no folder is left that looks like
        a run.
        """
        if not (self.path / "metrics.jsonl").exists():
            shutil.rmtree(self.path, ignore_errors=True)
            return
        message = " ".join(str(error).split())
        self.write_json("summary.json", {"status": "failed", "error": message})


@contextlib.contextmanager
def run_folder(experiment: str, config: RunConfig) -> Iterator[Run]:
    """`start_run`, and on any error or interrupt inside the block, `Run.fail`."""
    run = start_run(experiment, config)
    try:
        yield run
    except BaseException as error:
        run.fail(error)
        raise


def start_run(experiment: str, config: RunConfig) -> Run:
    """Make ``<runs_dir>/<experiment>/<run_name or timestamp>/`` and write ``config.json``.

    A timestamped folder that already exists gets a ``-2``, ``-3``, ... suffix;
    a named one is an error, so a run never overwrites another.

    Raises:
        UserError: the folder exists (``--run-name``) or cannot be made or
            written (``--runs-dir``).
    """
    parent = Path(config.runs_dir) / experiment
    try:
        path = _new_folder(parent, config.run_name)
        run = Run(path)
        run.write_json(
            "config.json",
            {"experiment": experiment, "config": config, "environment": environment(machine=True)},
        )
    except OSError as error:
        raise UserError(
            f"--runs-dir: cannot write a run folder in {parent}: {error.strerror or error}"
        ) from None
    return run


def _new_folder(parent: Path, name: str | None) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    if name is not None:
        path = parent / name
        if path.exists():
            raise UserError(f"--run-name: the run folder {path} exists; choose another name")
        path.mkdir()
        return path
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path, suffix = parent / stamp, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            suffix += 1
            path = parent / f"{stamp}-{suffix}"


# --- plots and tables --------------------------------------------------------------------

# Line styles per series, so coinciding curves (manual under autodiff) both stay visible.
_STYLES = (
    {"linestyle": "-", "linewidth": 2.5, "alpha": 0.6},
    {"linestyle": "--", "linewidth": 1.2},
    {"linestyle": ":", "linewidth": 1.5},
    {"linestyle": "-.", "linewidth": 1.2},
)


def plot_curves(
    path: str | Path,
    panels: Mapping[str, Mapping[str, Sequence]],
    *,
    x: Sequence | None = None,
    xlabel: str = "epoch",
    title: str | None = None,
    logy: Sequence[str] = (),
) -> Path:
    """One PNG with one axis per panel, every series of a panel on that axis.

    Args:
        path: the PNG to write.
        panels: {y label: {series label: y values}}, e.g.
            {"loss": {"manual": [...], "autodiff": [...]}}.
        x: the shared x values (default 1, 2, ...).
        xlabel: the x axis label.
        title: the figure title.
        logy: the panels drawn with a logarithmic y axis.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install manualbp[experiments]") from error
    figure = Figure(figsize=(4.2 * len(panels), 3.4), dpi=80, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (ylabel, series) in zip(axes, panels.items(), strict=True):
        for (label, ys), style in zip(series.items(), _cycle(_STYLES, len(series)), strict=True):
            xs = x if x is not None else range(1, len(ys) + 1)
            ys = [np.nan if v is None else v for v in ys]
            ax.plot(list(xs), ys, label=label, **style)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if ylabel in logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    path = Path(path)
    figure.savefig(path)
    return path


def _cycle(items, n):
    return [items[i % len(items)] for i in range(n)]


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
    print(format_table(rows, columns))


# --- manual vs autodiff training, side by side ------------------------------------------


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
    resume: str = "same",
) -> dict[str, Any]:
    """`manualbp.training` once per gradient path, from the same params, key and optimizer.

    Every epoch's metrics go to ``metrics.jsonl`` with ``grad`` set; the curves
    of ``metrics`` (those the history has) go to ``curves.png``, one axis per
    metric with every path on it. With ``checkpoint_dir``, each path saves to
    and resumes from ``<checkpoint_dir>/<grad>/``, and a resumed or already
    finished checkpoint is announced on stderr (only the epochs trained now
    are logged); ``resume`` is `mbp.train`'s.

    Returns:
        {grad: `TrainResult`}, plus ``"seconds"``: {grad: wall time}.
    """
    import manualbp as mbp

    results, seconds = {}, {}
    for grad in grads:
        directory = None if checkpoint_dir is None else str(Path(checkpoint_dir) / grad)
        if directory is not None:
            announce_checkpoint(directory, epochs, grad)
        started = time.perf_counter()
        results[grad] = mbp.train(
            net,
            params,
            optimizer,
            *train_data,
            epochs=epochs,
            batch_size=batch_size,
            key=key,
            grad=grad,
            eval_data=eval_data,
            progress=progress,
            checkpoint_dir=directory,
            resume=resume,
            callback=lambda record, grad=grad: run.log(grad=grad, **record),
        )
        seconds[grad] = time.perf_counter() - started
    metrics = [m for m in metrics if m in results[grads[0]].history[0]]
    panels = {
        metric: {grad: [h[metric] for h in results[grad].history] for grad in grads}
        for metric in metrics
    }
    run.plot("curves.png", panels, logy=[m for m in metrics if m.endswith("loss")])
    return {**results, "seconds": seconds}


def announce_checkpoint(directory: str, epochs: int, grad: str) -> int:
    """Say on stderr that ``mbp.train`` will resume the checkpoint in ``directory``, if any.

    Returns the epochs it has completed (0 for none). An unreadable checkpoint
    is not judged here: ``mbp.train`` refuses it with the reason.
    """
    done = completed_epochs(directory)
    if done >= epochs:
        print(
            f"{grad}: the checkpoint in {directory} has completed {done} of {epochs} epochs; "
            "nothing to train (move it away, or raise --epochs, to train more)",
            file=sys.stderr,
        )
    elif done:
        print(
            f"{grad}: resuming the checkpoint in {directory} after epoch {done} of {epochs}",
            file=sys.stderr,
        )
    return done


def completed_epochs(directory: str | Path) -> int:
    """The epoch count a manualbp checkpoint in ``directory`` records; 0 if none is readable."""
    from manualbp.training import checkpoint

    try:
        with np.load(checkpoint.path_in(directory), allow_pickle=False) as stored:
            epoch = json.loads(stored["meta"].tobytes().decode())["epoch"]
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return 0
    return epoch if isinstance(epoch, int) and epoch > 0 else 0


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
