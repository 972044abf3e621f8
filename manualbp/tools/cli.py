"""The `manualbp` command: verify, train, bench.

    manualbp verify                       # the whole built-in catalogue, summary table
    manualbp verify --sizes 4,8,3 --hidden mymodule:my_tanh --loss mse --fd
    manualbp train --help
    manualbp bench --quick

`verify` exits 1 when any check fails; every command exits 2 with one line on
standard error for a usage or input error, and 1 for a run that fails
(`manualbp.tools.console` maps each error to its status).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import sys
import time

from manualbp.activations import ACTIVATIONS, HIDDEN_ACTIVATIONS, Activation
from manualbp.losses import LOSSES, OUTPUT_LOSS_PAIRS, Loss
from manualbp.tools.console import (
    Progress,
    UserError,
    guarded,
    list_argument,
    output_path,
)

CATALOGUE_SIZES = (5, 7, 6, 3)
"""Two hidden layers, so equation (1) is checked at a layer fed by another hidden layer."""


def _plugin(spec: str, kind: type, builtins: dict, what: str):
    """A built-in name, or ``module:attribute`` naming an `Activation` / `Loss` object."""
    if ":" not in spec:
        if spec not in builtins:
            raise UserError(
                f"unknown {what} {spec!r}; expected one of {', '.join(builtins)} "
                "or module:attribute"
            )
        return spec
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # a plug-in may raise anything on import: SyntaxError, ...
        raise UserError(
            f"cannot import {module_name!r} for {what} {spec!r}: {type(error).__name__}: {error}"
        ) from None
    obj = getattr(module, attribute, None)
    if not isinstance(obj, kind):
        raise UserError(f"{spec!r} is {type(obj).__name__}, expected an mbp.{kind.__name__} object")
    return obj


def _verify_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Check manual backprop against autodiff, equation by equation and layer by layer. "
        "With no net flags, verify the whole built-in catalogue."
    )
    parser.add_argument(
        "--sizes", **list_argument(int, metavar="N"), help="layer widths: 4,8,3 or 4 8 3"
    )
    parser.add_argument(
        "--hidden",
        help="hidden activation(s): a name, module:attribute, or a comma-separated list",
    )
    parser.add_argument("--output", help="output function: a name or module:attribute")
    parser.add_argument("--loss", help="loss: a name or module:attribute")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "float64", "bfloat16", "float16"),
        help="parameter and compute dtype (default float32)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for params and data")
    parser.add_argument("--fd", action="store_true", help="add float64 finite differences")
    parser.add_argument(
        "--devices",
        choices=("default", "all"),
        default="default",
        help="'all': every device JAX lists plus the CPU, compared against each other",
    )
    parser.add_argument(
        "--json",
        metavar="PATH",
        type=output_path,
        help="also write the report as JSON ('-': stdout); checked before verifying",
    )
    parser.add_argument(
        "--extensions",
        action="store_true",
        help="verify the per-example extensions, equations (5)-(9), over the catalogue",
    )


def _run_verify(args) -> int:
    import jax
    import jax.numpy as jnp

    from manualbp.data import random_batch
    from manualbp.network import MLP
    from manualbp.verification import verify, verify_activation, verify_loss

    if args.batch < 1:
        raise UserError(f"--batch: expected a positive batch size, got {args.batch}")
    if args.extensions:
        return _extensions(args)
    single = any(v is not None for v in (args.sizes, args.hidden, args.output, args.loss))
    dtype = jnp.dtype(args.dtype)
    devices = None if args.devices == "default" else "all"

    def check(net):
        key_params, key_data = jax.random.split(jax.random.key(args.seed))
        params = net.init(key_params, dtype, scheme="nielsen_scaled")
        X, Y = random_batch(net, key_data, args.batch, dtype)
        return verify(
            net, params, X, Y, finite_differences=args.fd, devices=devices, seed=args.seed
        )

    with jax.enable_x64(args.dtype == "float64" or args.fd):
        if single:
            hidden = args.hidden or "tanh"
            hidden = [_plugin(h, Activation, ACTIVATIONS, "activation") for h in hidden.split(",")]
            net = MLP(
                args.sizes or CATALOGUE_SIZES,
                hidden=hidden[0] if len(hidden) == 1 else hidden,
                output=_plugin(args.output or "identity", Activation, ACTIVATIONS, "activation"),
                loss=_plugin(args.loss or "mse", Loss, LOSSES, "loss"),
            )
            reports = [
                verify_activation(sigma, dtype)
                for sigma in dict.fromkeys(net.activations)  # each once, in layer order
                if sigma.name not in ACTIVATIONS or sigma is not ACTIVATIONS[sigma.name]
            ]
            if net.loss.name not in LOSSES or net.loss is not LOSSES[net.loss.name]:
                reports.append(verify_loss(net.loss, dtype))
            reports.append(check(net))
            print("\n\n".join(str(report) for report in reports))
            passed = all(report.passed for report in reports)
            _write_json(
                args.json,
                reports[-1].to_dict()
                if len(reports) == 1
                else {"passed": passed, "subjects": [r.to_dict() for r in reports]},
            )
            return 0 if passed else 1
        return _catalogue(args, dtype, check)


def _catalogue(args, dtype, check) -> int:
    from manualbp.table import format_table

    subjects = _catalogue_subjects(dtype, check)
    n_nets = len(HIDDEN_ACTIVATIONS) * len(OUTPUT_LOSS_PAIRS)
    print(
        f"manualbp verify: {len(subjects)} subjects: {len(ACTIVATIONS)} activations and "
        f"{len(LOSSES)} losses on their grids, then {n_nets} nets of sizes {CATALOGUE_SIZES} "
        f"(each hidden activation × (output, loss) pair), batch {args.batch}, {dtype}",
        file=sys.stderr,
        flush=True,
    )
    start = time.perf_counter()
    summary, reports = [], []
    with Progress(len(subjects), "verify") as progress:
        for subject, run in subjects:
            report = run()
            reports.append(report)
            summary.append(_summary_row(subject, report))
            progress.step(f"{'ok' if report.passed else 'FAIL':<4} {subject}")
    failed = [r for r in reports if not r.passed]
    print(format_table(summary, ["", "subject", "checks", "worst rel_err/tol", "first failure"]))
    print()
    for report in failed:
        print(report, end="\n\n")
    n_checks = sum(len(r.rows) for r in reports)
    verdict = "PASSED" if not failed else "FAILED"
    print(
        f"{verdict}: {len(reports) - len(failed)} of {len(reports)} subjects, {n_checks} checks, "
        f"sizes {CATALOGUE_SIZES}, batch {args.batch}, {dtype}, "
        f"{time.perf_counter() - start:.1f} s"
    )
    _write_json(
        args.json,
        {"passed": not failed, "subjects": [r.to_dict() for r in reports]},
    )
    return 0 if not failed else 1


def _catalogue_subjects(dtype, check) -> list[tuple[str, object]]:
    """(subject, a call that verifies it): the blocks on their grids, then every pair's net."""
    from manualbp.network import MLP
    from manualbp.verification import verify_activation, verify_loss

    blocks = [
        (f"activation {name!r}", functools.partial(verify_activation, name, dtype))
        for name in ACTIVATIONS
    ] + [(f"loss {name!r}", functools.partial(verify_loss, name, dtype)) for name in LOSSES]
    nets = [
        (
            f"{hidden} → {output} + {loss}",
            functools.partial(check, MLP(CATALOGUE_SIZES, hidden=hidden, output=output, loss=loss)),
        )
        for hidden in HIDDEN_ACTIVATIONS
        for output, loss in OUTPUT_LOSS_PAIRS
    ]
    return blocks + nets


def _extensions(args) -> int:
    from manualbp.table import format_table
    from manualbp.verification.extensions import catalogue_extensions

    if args.dtype not in ("float32", "float64"):
        raise UserError(f"--extensions: expected --dtype float32 or float64, got {args.dtype}")
    reports = catalogue_extensions(args.dtype)
    summary = [_summary_row(r.meta["subject"], r) for r in reports]
    print(format_table(summary, ["", "subject", "checks", "worst rel_err/tol", "first failure"]))
    failed = [r for r in reports if not r.passed]
    for report in failed:
        print(report, end="\n\n")
    print(f"{'FAILED' if failed else 'PASSED'}: {len(reports) - len(failed)} of {len(reports)}")
    _write_json(args.json, {"passed": not failed, "subjects": [r.to_dict() for r in reports]})
    return 1 if failed else 0


def _summary_row(subject, report):
    worst = max(report.rows, key=lambda r: r.rel_err / r.tol)
    first = report.failures[0] if report.failures else None
    return {
        "": "ok" if report.passed else "FAIL",
        "subject": subject,
        "checks": len(report.rows),
        "worst rel_err/tol": f"{worst.rel_err / worst.tol:.3f}",
        "first failure": ""
        if first is None
        else f"{first.check} l={first.layer} {first.diagnosis}",
    }


def _write_json(path, payload) -> None:
    if path is None:
        return
    text = json.dumps(payload, indent=2)
    if path == "-":
        print(text)
    else:
        with open(path, "w") as f:
            f.write(text + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="manualbp", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", metavar="{verify,train,bench}")
    _verify_parser(commands.add_parser("verify", help="check manual backprop against autodiff"))
    commands.add_parser("train", help="train on a data set (see manualbp train -h)", add_help=False)
    commands.add_parser(
        "bench", help="benchmark manual vs autodiff (see manualbp bench -h)", add_help=False
    )
    if argv and argv[0] in ("train", "bench"):
        module = importlib.import_module(
            "manualbp.tools.train_cli" if argv[0] == "train" else "manualbp.tools.bench_cli"
        )
        return guarded(f"manualbp {argv[0]}", lambda: module.main(argv[1:]))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return guarded("manualbp verify", lambda: _run_verify(args))


if __name__ == "__main__":
    sys.exit(main())
