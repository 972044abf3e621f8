"""`manualbp bench`: the core benchmark (bench.py) and its extra sections, as one command.

manualbp bench                 # everything, a few minutes
manualbp bench --quick         # a smoke test: small configurations, no extra sections
manualbp bench --sections curvature --no-training
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import jax

from manualbp._records import environment
from manualbp.tools import (
    bench_curvature,
    bench_extensions,
    bench_spectra,
    fashion_bench,
    limits,
    timing,
)
from manualbp.tools.bench import (
    CONFIGS_BY_NAME,
    QUICK_CONFIGS,
    bench_config,
    bench_training,
    markdown,
)
from manualbp.tools.console import Parser, UserError, list_argument, output_path


def _extensions(repeats):
    return bench_extensions.bench_per_example(repeats or 10)


def _curvature(repeats):
    return bench_curvature.bench_curvature(repeats or 30)


def _fashion(repeats):
    return fashion_bench.bench_fashion_epoch(repeats or 5)


def _spectra(repeats):
    repeats = repeats or 10
    return {
        "top1": bench_spectra.bench_top1(repeats),
        "split": bench_spectra.bench_split(max(3, repeats // 3), batch=128),
    }


SECTIONS = {
    "extensions": (_extensions, bench_extensions.markdown),
    "curvature": (_curvature, bench_curvature.markdown),
    "fashion-mnist": (_fashion, fashion_bench.markdown),
    "spectra": (_spectra, bench_spectra.markdown),
}
"""Extra sections: (run with the repeats, render as markdown)."""


def _parser() -> Parser:
    parser = Parser(prog="manualbp bench", description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument(
        "--configs",
        **list_argument(str),
        help=f"a subset of {', '.join(CONFIGS_BY_NAME)}, by commas or spaces "
        f"(default: all; with --quick: {' '.join(QUICK_CONFIGS)})",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        metavar="INT",
        help="timed repeats per variant (default: adaptive)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=15.0,
        metavar="FLOAT",
        help="seconds of timed calls per configuration when --repeats is not given (default 15)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="two repeats, the small configurations, small matmuls: a smoke test",
    )
    parser.add_argument("--no-training", action="store_true", help="skip the training rows")
    parser.add_argument(
        "--sections",
        **list_argument(str),
        help=f"extra sections, of {', '.join(SECTIONS)}, by commas or spaces "
        "(default: all; with --quick: none)",
    )
    parser.add_argument(
        "--per-example-limit-gib",
        type=float,
        default=2.0,
        metavar="FLOAT",
        help="skip per-example gradients that would take more memory than this (default 2)",
    )
    parser.add_argument(
        "--json", metavar="PATH", type=output_path, help="write the full report as JSON here"
    )
    parser.add_argument(
        "--markdown", metavar="PATH", type=output_path, help="write the markdown tables here"
    )
    return parser


def _choose(names, known, flag: str) -> list[str]:
    """The names of ``known`` given to ``flag``, each checked; a usage error names the rest."""
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UserError(
            f"{flag}: unknown {', '.join(unknown)}; expected some of {', '.join(known)}"
        )
    return list(dict.fromkeys(names))


def check_args(args) -> argparse.Namespace:
    """Every argument, resolved and checked before any timing: configs, sections, numbers."""
    default_configs = QUICK_CONFIGS if args.quick else tuple(CONFIGS_BY_NAME)
    args.configs = _choose(args.configs or default_configs, CONFIGS_BY_NAME, "--configs")
    default_sections = () if args.quick else tuple(SECTIONS)
    args.sections = _choose(
        default_sections if args.sections is None else args.sections, SECTIONS, "--sections"
    )
    if args.repeats is not None:
        limits.check_at_least(args.repeats, 1, "--repeats", "a repeat count")
    if not (math.isfinite(args.budget) and args.budget > 0):
        raise UserError(f"--budget: expected a positive number of seconds, got {args.budget}")
    if not args.per_example_limit_gib >= 0:
        raise UserError(
            f"--per-example-limit-gib: expected 0 or more, got {args.per_example_limit_gib}"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the markdown tables; return 0 (2 for a bad argument)."""
    args = check_args(_parser().parse_args(argv))
    names = args.configs
    repeats = 2 if args.quick and args.repeats is None else args.repeats
    budget = 0.5 if args.quick else args.budget
    on_cpu = jax.default_backend() == "cpu"

    report = {"environment": environment(machine=True)}
    print(f"# {report['environment']['device']}, load {os.getloadavg()[0]:.2f}", file=sys.stderr)
    if args.quick:
        matmul_sizes = (256, 512)
    else:
        matmul_sizes = (1024, 2048) if on_cpu else (4096, 8192)
    report["matmul"] = timing.matmul_peak(matmul_sizes, repeats or 10)
    report["flop_count"] = (
        "forward 2·B·N_l·N_{l-1} per layer; eq. (2) the same; eq. (1) the same for every "
        "layer but the first; elementwise work not counted (see manualbp/bench.py)"
    )
    report["configs"] = []
    for name in names:
        print(f"# {name} ...", file=sys.stderr, flush=True)
        report["configs"].append(
            bench_config(
                CONFIGS_BY_NAME[name],
                repeats=repeats,
                budget_s=budget,
                per_example_limit=args.per_example_limit_gib * 2**30,
                peak_sizes=matmul_sizes if CONFIGS_BY_NAME[name].paired_peak else (),
            )
        )
    if not args.no_training:
        print("# training ...", file=sys.stderr, flush=True)
        report["training"] = bench_training(
            n_train=1000 if args.quick else 10_000,
            n_numpy=100 if args.quick else 2000,
            repeats=repeats or 20,
        )
    report["sections"] = {}
    for name in args.sections:
        print(f"# {name} ...", file=sys.stderr, flush=True)
        report["sections"][name] = SECTIONS[name][0](repeats)
    report["loadavg_end"] = os.getloadavg()

    table = markdown(report) + "".join(
        f"\n\n### {name}\n\n{SECTIONS[name][1](result)}"
        for name, result in report["sections"].items()
    )
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    return 0
