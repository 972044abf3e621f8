"""Run folders: ``<runs_dir>/<experiment>/<run name>/`` with its config, metrics and plots.

`start_run` makes the folder and writes ``config.json`` (the config and the
environment: versions, backend, devices, x64); `Run.log` appends to
``metrics.jsonl``; `run_folder` marks a run that fails, or removes a folder
that holds nothing but its config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from manualbp._records import environment, to_json
from manualbp.tools.configs import RunConfig
from manualbp.tools.console import UserError
from manualbp.tools.plots import plot_curves


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
