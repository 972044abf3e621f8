"""What the commands share with the person at the terminal: list flags, output paths, progress,
and the one place that turns an error into one line and an exit status.

Exit statuses, for every command (`manualbp verify|train|bench` and the experiments):
0 done; 1 a check failed or a run failed (it diverged, the disk filled); 2 a usage
error (a flag, a path, a plug-in, inputs that do not fit the net); 130 interrupted
(Ctrl-C). Never a traceback for any of these; a traceback means a bug in manualbp.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from manualbp.training import DivergenceError


class UserError(Exception):
    """A mistake in the command line or the inputs: one line, exit status 2."""


def list_argument(kind: type, metavar: str | None = None) -> dict:
    """argparse keyword arguments for a list flag: ``--sizes 4,8,3``, ``4 8 3`` or ``4,8 3``.

    The parsed value is one tuple of ``kind``.
    """
    return {
        "type": _comma_separated(kind),
        "nargs": "+",
        "action": _Joined,
        "metavar": metavar or kind.__name__.upper(),
    }


def _comma_separated(kind: type) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid {kind.__name__} value {text!r}: expected values separated by commas "
                "or spaces"
            ) from None

    return parse


class _Joined(argparse.Action):
    """Join the comma-separated pieces of a ``nargs="+"`` flag into one tuple."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, tuple(value for piece in values for value in piece))


def output_path(text: str) -> str:
    """An argparse ``type`` for a file the command will write: checked before any work.

    ``-`` is standard output. A directory, a missing parent folder or a path the
    process cannot write is refused at once, not after a long run; the check opens
    the file for appending and removes it again if it did not exist.
    """
    if text == "-":
        return text
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory, expected a file path")
    existed = path.exists()
    try:
        with open(path, "a"):
            pass
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot write {text}: {error.strerror}") from None
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
    except (UserError, ValueError, TypeError) as error:
        return _say(prog, error, 2)
    except (DivergenceError, OSError) as error:
        return _say(prog, error, 1, "the run failed: ")
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130  # the shell's status for a process ended by SIGINT


def _say(prog: str, error: Exception, status: int, lead: str = "") -> int:
    print(f"{prog}: error: {lead}{' '.join(str(error).split())}", file=sys.stderr)
    return status
