"""The `manualbp` command: verify, train, bench.

    manualbp verify                       # the whole built-in catalogue, summary table
    manualbp verify --sizes 4,8,3 --hidden mymodule:my_tanh --loss mse --fd
    manualbp train --help
    manualbp bench --quick

`verify` exits 1 when any check fails; every command exits 2 with one line on
standard error for a usage or input error, and 1 for a run that fails
(`manualbp.tools.console` maps each error to its status). Every argument is
checked before any work.
"""

from __future__ import annotations

import importlib
import sys

from manualbp.tools import verify_cli
from manualbp.tools.console import Parser, guarded


def _parser() -> Parser:
    from importlib.metadata import PackageNotFoundError, version

    try:
        number = version("manualbp")
    except PackageNotFoundError:  # run from a clone that was never installed
        number = "unknown (not installed)"
    parser = Parser(prog="manualbp", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"manualbp {number}")
    commands = parser.add_subparsers(dest="command", metavar="{verify,train,bench}")
    verify_cli.add_arguments(
        commands.add_parser("verify", help="check manual backprop against autodiff")
    )
    commands.add_parser("train", help="train on a data set (see manualbp train -h)", add_help=False)
    commands.add_parser(
        "bench", help="benchmark manual vs autodiff (see manualbp bench -h)", add_help=False
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("train", "bench"):
        module = importlib.import_module(
            "manualbp.tools.train_cli" if argv[0] == "train" else "manualbp.tools.bench_cli"
        )
        return guarded(f"manualbp {argv[0]}", lambda: module.main(argv[1:]))
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return guarded("manualbp verify", lambda: verify_cli.run(args))


if __name__ == "__main__":
    sys.exit(main())
