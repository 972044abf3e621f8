"""``manualbp verify``: manual backprop against autodiff, from the command line.

With no net flags, the whole built-in catalogue: every activation and loss on
its grid, then every hidden activation × (output, loss) pair on a small net,
with progress. With ``--sizes``, ``--hidden``, ``--output`` or ``--loss``, the one
net they describe (plug-ins verified on their own grids first). With
``--extensions``, the per-example extensions instead. Every argument is checked
before any work (`_check_verify`).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time

from manualbp.activations import ACTIVATIONS, HIDDEN_ACTIVATIONS
from manualbp.losses import LOSSES, OUTPUT_LOSS_PAIRS
from manualbp.tools import limits, plugins
from manualbp.tools.console import Progress, UserError, list_argument, output_path

CATALOGUE_SIZES = (5, 7, 6, 3)
"""Two hidden layers, so equation (1) is checked at a layer fed by another hidden layer."""

NET_FLAGS = ("sizes", "hidden", "output", "loss")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Check manual backprop against autodiff, equation by equation and layer by layer. "
        "With no net flags, verify the whole built-in catalogue."
    )
    parser.add_argument("--sizes", **list_argument(int), help="layer widths: 4,8,3 or 4 8 3")
    parser.add_argument(
        "--hidden",
        **list_argument(str),
        help="hidden activation(s): a name or module:attribute, one for every hidden layer "
        "or one each (commas or spaces)",
    )
    parser.add_argument(
        "--output", metavar="NAME", help="output function: a name or module:attribute"
    )
    parser.add_argument("--loss", metavar="NAME", help="loss: a name or module:attribute")
    parser.add_argument(
        "--batch-size", type=int, default=8, metavar="INT", help="examples in the batch (default 8)"
    )
    # The flag's earlier name, kept working; --batch-size is the one name for every command.
    parser.add_argument("--batch", dest="batch_size", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "float64", "bfloat16", "float16"),
        help="parameter and compute dtype (default float32)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="INT", help="seed for params and data"
    )
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
        help="verify the per-example extensions, equations (5)-(9): over the catalogue, "
        "or on the net the net flags describe",
    )


def _check_verify(args) -> None:
    """Every argument of ``manualbp verify``, before any work."""
    if args.batch_size < 1:
        raise UserError(f"--batch-size: expected a positive batch size, got {args.batch_size}")
    limits.check_seed(args.seed)
    if args.sizes is not None:
        limits.check_sizes(args.sizes)
    if args.extensions:
        refused = [
            flag for flag, on in (("--fd", args.fd), ("--devices all", args.devices == "all")) if on
        ]
        if refused:
            raise UserError(
                f"--extensions: {' and '.join(refused)} "
                f"{'does' if len(refused) == 1 else 'do'} not apply to the extensions "
                "(their witness is vmap of jax.grad on the default device); drop them"
            )
        if args.dtype not in ("float32", "float64"):
            raise UserError(f"--extensions: expected --dtype float32 or float64, got {args.dtype}")
    # The float64 witness and the finite differences hold copies of their own.
    sizes = args.sizes or CATALOGUE_SIZES
    limits.check_fits(
        limits.net_bytes(sizes, args.batch_size),
        f"a net of sizes {tuple(sizes)} on a batch of {args.batch_size}",
        "--sizes/--batch-size",
    )


def _single_net(args):
    """The net the net flags describe (defaults: tanh, identity, mse on the catalogue sizes)."""
    from manualbp.network import MLP

    hidden = plugins.hidden_activations(args.hidden or ("tanh",))
    return MLP(
        args.sizes or CATALOGUE_SIZES,
        hidden=hidden[0] if len(hidden) == 1 else hidden,
        output=plugins.output_activation(args.output or "identity"),
        loss=plugins.loss_function(args.loss or "mse"),
    )


def run(args) -> int:
    import jax
    import jax.numpy as jnp

    from manualbp.data import random_batch
    from manualbp.verification import verify

    _check_verify(args)
    single = any(getattr(args, flag) is not None for flag in NET_FLAGS)
    dtype = jnp.dtype(args.dtype)
    devices = None if args.devices == "default" else "all"

    def check(net):
        key_params, key_data = jax.random.split(jax.random.key(args.seed))
        params = net.init(key_params, dtype, scheme="nielsen_scaled")
        X, Y = random_batch(net, key_data, args.batch_size, dtype)
        return verify(
            net, params, X, Y, finite_differences=args.fd, devices=devices, seed=args.seed
        )

    if args.extensions:
        return _extensions(args, single)
    with jax.enable_x64(args.dtype == "float64" or args.fd):
        if single:
            return _verify_one(args, _single_net(args), dtype, check)
        return _catalogue(args, dtype, check)


def _verify_one(args, net, dtype, check) -> int:
    """A plug-in's own grid first (activation, loss), then the net, equation by equation."""
    from manualbp.verification import verify_activation, verify_loss

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


def _catalogue(args, dtype, check) -> int:
    from manualbp._table import format_table

    subjects = _catalogue_subjects(dtype, check)
    n_nets = len(HIDDEN_ACTIVATIONS) * len(OUTPUT_LOSS_PAIRS)
    print(
        f"manualbp verify: {len(subjects)} subjects: {len(ACTIVATIONS)} activations and "
        f"{len(LOSSES)} losses on their grids, then {n_nets} nets of sizes {CATALOGUE_SIZES} "
        f"(each hidden activation × (output, loss) pair), batch {args.batch_size}, {dtype}",
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
        f"sizes {CATALOGUE_SIZES}, batch {args.batch_size}, {dtype}, "
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


def _extensions(args, single: bool) -> int:
    """`verify_extensions` on the net the flags describe, or over the catalogue with progress."""
    import jax

    from manualbp._table import format_table
    from manualbp.data import random_batch
    from manualbp.network import MLP
    from manualbp.verification import verify_extensions

    float64 = args.dtype == "float64"
    if single:
        nets = [_single_net(args)]
    else:
        nets = [
            MLP(CATALOGUE_SIZES, hidden=hidden, output=output, loss=loss)
            for hidden in HIDDEN_ACTIVATIONS
            for output, loss in OUTPUT_LOSS_PAIRS
        ]
        print(
            f"manualbp verify --extensions: {len(nets)} nets of sizes {CATALOGUE_SIZES} (each "
            f"hidden activation × (output, loss) pair), batch {args.batch_size}, {args.dtype}",
            file=sys.stderr,
            flush=True,
        )
    reports = []
    with jax.enable_x64(float64), Progress(len(nets), "verify --extensions") as progress:
        for net in nets:
            key_params, key_data = jax.random.split(jax.random.key(args.seed))
            params = net.init(key_params, args.dtype, scheme="nielsen_scaled")
            X, Y = random_batch(net, key_data, args.batch_size, args.dtype)
            reports.append(verify_extensions(net, params, X, Y, float64=float64))
            progress.step(f"{'ok' if reports[-1].passed else 'FAIL':<4} {_subject(net)}")
    summary = [_summary_row(_subject(net), r) for net, r in zip(nets, reports, strict=True)]
    print(format_table(summary, ["", "subject", "checks", "worst rel_err/tol", "first failure"]))
    failed = [r for r in reports if not r.passed]
    for report in failed:
        print(report, end="\n\n")
    print(f"{'FAILED' if failed else 'PASSED'}: {len(reports) - len(failed)} of {len(reports)}")
    _write_json(args.json, {"passed": not failed, "subjects": [r.to_dict() for r in reports]})
    return 1 if failed else 0


def _subject(net) -> str:
    hidden = dict.fromkeys(a.name for a in net.activations[:-1])
    return f"{','.join(hidden)} → {net.activations[-1].name} + {net.loss.name}"


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
