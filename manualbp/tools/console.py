"""What the commands share with the person at the terminal: list flags, output paths, progress,
and the one place that turns an error into one line and an exit status.

Exit statuses, for every command (`manualbp verify|train|bench` and the experiments):
0 done; 1 a check failed or a run failed (it diverged, the disk filled, memory ran
out); 2 a usage error (a flag, a path, a plug-in, inputs that do not fit the net,
arguments refused before any work); 130 interrupted (Ctrl-C, at any phase: the
launcher `manualbp_cli` guards the start). A usage error is one line and a hint
to ``--help``. Never a traceback for any of these: a traceback means a bug in manualbp.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path

from manualbp.training import DivergenceError
from manualbp.training.checkpoint import CheckpointWriteError

OUT_OF_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
"""A full disk, a file over ``ulimit -f``, a quota: the run failed (1), the flags were fine."""


class UserError(Exception):
    """A mistake in the command line or the inputs: one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and a hint, not the usage block.

    Subcommand parsers made with ``add_subparsers`` are of this class too.
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n{self.prog}: see {self.prog} --help\n")


METAVARS = {int: "INT", float: "FLOAT", str: "NAME"}
"""One metavar style for every command: what the value is, in capitals; files are PATH."""


def metavar(kind: type, name: str = "") -> str:
    """The metavar of a flag called ``name`` taking ``kind``: INT, FLOAT, NAME or PATH."""
    if kind is str and (name.endswith(("_dir", "dir", "path")) or name in ("json", "markdown")):
        return "PATH"
    return METAVARS.get(kind, kind.__name__.upper())


def list_argument(kind: type) -> dict:
    """argparse keyword arguments for a list flag: ``--sizes 4,8,3``, ``4 8 3`` or ``4,8 3``.

    The parsed value is one tuple of ``kind``; an empty list (``--sizes ,``) is
    a usage error, never silently the default.
    """
    return {
        "type": _comma_separated(kind),
        "nargs": "+",
        "action": _Joined,
        "metavar": metavar(kind),
    }


def _comma_separated(kind: type) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            return [kind(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid {kind.__name__} value {text!r}: expected values separated by commas "
                "or spaces"
            ) from None

    return parse


class _Joined(argparse.Action):
    """Join the comma-separated pieces of a ``nargs="+"`` flag into one tuple."""

    def __call__(self, parser, namespace, values, option_string=None):
        joined = tuple(value for piece in values for value in piece)
        if not joined:
            parser.error(f"argument {option_string}: expected at least one value, got none")
        setattr(namespace, self.dest, joined)


def output_path(text: str) -> str:
    """An argparse ``type`` for a file the command will write: checked before any work.

    ``-`` is standard output. A directory, a missing parent folder or a path the
    process cannot write is refused at once, not after a long run; the check opens
    the file for appending and removes it again if it did not exist.
    """
    if text == "-":
        return text
    path = Path(text)
    shown = text if len(text) <= 80 else f"...{text[-60:]}"  # one line, not a whole path
    if os.path.isdir(path):  # os.path: False, not an error, for a name too long
        raise argparse.ArgumentTypeError(f"{shown} is a directory, expected a file path")
    existed = os.path.exists(path)
    try:
        with open(path, "a"):
            pass
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot write {shown}: {error.strerror}") from None
    if not existed:
        path.unlink()
    return text


class Progress:
    """Progress over ``total`` items on standard error.

    A tqdm bar when standard error is a terminal and tqdm is installed (the
    ``progress`` extra); otherwise one line per finished item, which also reads
    well in a log file.
    """

    def __init__(self, total: int, what: str, *, bar: bool | None = None, file=None):
        self.total, self.what, self.count = total, what, 0
        self.file = sys.stderr if file is None else file
        self._bar = None
        if self.file.isatty() if bar is None else bar:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self._bar = tqdm(total=total, desc=what, file=self.file, leave=True)

    def step(self, label: str) -> None:
        """One item done; ``label`` says which (and, where useful, how it went)."""
        self.count += 1
        if self._bar is not None:
            self._bar.set_postfix_str(label, refresh=False)
            self._bar.update()
        else:
            width = len(str(self.total))
            print(
                f"{self.what} {self.count:>{width}}/{self.total}  {label}",
                file=self.file,
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def guarded(prog: str, command: Callable[[], int]) -> int:
    """Run ``command``; an error becomes one line on standard error and its exit status."""
    try:
        return command()
    except CheckpointWriteError as error:
        cause = error.__cause__
        full = isinstance(cause, OSError) and cause.errno in OUT_OF_SPACE
        return _say(prog, error, 1 if full else 2, "the run failed: " if full else "")
    except (UserError, ValueError, TypeError) as error:
        return _say(prog, error, 2)
    except OSError as error:
        return _say(prog, _os_error(error), 1, "the run failed: ")
    except DivergenceError as error:
        return _say(prog, error, 1, "the run failed: ")
    except MemoryError:
        return _say(
            prog, "out of memory; choose smaller sizes, batches or data", 1, "the run failed: "
        )
    except RuntimeError as error:
        # XLA's allocator failing past the up-front memory check: still one line.
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise
        return _say(prog, _first_line(error), 1, "the run failed: out of memory: ")
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130  # the shell's status for a process ended by SIGINT


def _os_error(error: OSError) -> str:
    """An OS error in one short line: the reason and the file's last name, not a whole path."""
    if error.filename is None:
        return str(error)
    name = Path(os.fsdecode(error.filename)).name
    name = name if len(name) <= 40 else f"{name[:20]}...{name[-12:]}"
    return f"{error.strerror or error} ({name})"


def _first_line(error: Exception, limit: int = 200) -> str:
    line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return line if len(line) <= limit else line[:limit] + "..."


def _say(prog: str, error: Exception | str, status: int, lead: str = "") -> int:
    print(f"{prog}: error: {lead}{' '.join(str(error).split())}", file=sys.stderr)
    return status
