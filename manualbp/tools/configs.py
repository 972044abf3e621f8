"""Configs as command lines: a frozen dataclass of commented defaults becomes argparse flags.

An experiment's config is a subclass of `RunConfig` (which adds ``seed``,
``runs_dir`` and ``run_name``). `parse_config` turns it into flags:
``batch_size: int = 32  # examples per step`` becomes ``--batch-size INT`` with
that comment and the default as its help; bools become ``--flag/--no-flag``,
``Literal`` fields choices, ``tuple[T, ...]`` fields lists written ``4,8,3`` or
``4 8 3``. `run_main` is an experiment's ``__main__``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import re
import sys
import tokenize
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from manualbp.tools import limits
from manualbp.tools.console import Parser, guarded, list_argument, metavar


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
        return {"type": hint, "metavar": metavar(hint, name)}
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
    parser = Parser(
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

    Returns 0; an error is one line and status 2 or 1 (`console.guarded`). The
    one seed every experiment has is checked before ``main`` starts.
    """
    config = parse_config(cls, description=description)

    def run() -> int:
        limits.check_seed(config.seed)
        main(config)
        return 0

    return guarded(Path(sys.argv[0]).name, run)
