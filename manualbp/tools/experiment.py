"""What an experiment script needs, from one import: `from manualbp.tools import experiment`.

An experiment is a frozen dataclass of commented defaults (a subclass of
`RunConfig`) and a ``main(config) -> dict``; its ``__main__`` is
``run_main(main, Config, __doc__)``. The pieces live in modules of one concept
each: configs as command lines (`manualbp.tools.configs`), run folders
(`manualbp.tools.runs`), plots and tables (`manualbp.tools.plots`), and manual
against autodiff training (`manualbp.tools.side_by_side`). `manualbp train` is
built from the same pieces in `manualbp.tools.train_cli`.
"""

from manualbp._records import to_json
from manualbp.tools.configs import RunConfig, build_parser, parse_config, run_main
from manualbp.tools.plots import plot_curves, print_table
from manualbp.tools.runs import Run, run_folder, start_run
from manualbp.tools.side_by_side import (
    completed_epochs,
    curve_gap,
    split_epoch,
    summary_rows,
    train_side_by_side,
)

__all__ = [
    "Run",
    "RunConfig",
    "build_parser",
    "completed_epochs",
    "curve_gap",
    "parse_config",
    "plot_curves",
    "print_table",
    "run_folder",
    "run_main",
    "split_epoch",
    "start_run",
    "summary_rows",
    "to_json",
    "train_side_by_side",
]
