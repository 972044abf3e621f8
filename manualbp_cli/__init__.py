"""The `manualbp` command's launcher: it runs before JAX is imported.

It lives outside the manualbp package, whose import loads JAX, so that:

* Ctrl-C while manualbp and JAX load (seconds on a cold start) ends the command
  with one line and status 130, not a traceback or an interrupt swallowed inside
  an import;
* a JAX setting JAX cannot parse (``JAX_DEFAULT_PRNG_IMPL=bogus``) is one line
  and status 2;
* an interrupted run leaves without tearing down XLA's compiler threads, whose
  teardown mid-compile could crash the process instead of exiting 130.

Everything else is `manualbp.tools.cli`.
"""

from __future__ import annotations

import os
import signal
import sys

INTERRUPTED = 130
"""The shell's status for a process ended by SIGINT (128 + 2)."""


def _interrupted_while_starting(signum, frame) -> None:
    # Nothing has been written yet: leave at once, from wherever the import was.
    os.write(2, b"manualbp: interrupted while starting\n")
    os._exit(INTERRUPTED)


def _leave_interrupted() -> None:
    """Exit 130 without interpreter teardown, which would join XLA threads mid-compile."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(INTERRUPTED)


def main(argv: list[str] | None = None) -> int:
    """``manualbp ...``: load manualbp under a Ctrl-C guard, then run `manualbp.tools.cli`."""
    signal.signal(signal.SIGINT, _interrupted_while_starting)
    try:
        import jax  # noqa: F401  (first, alone: its settings are parsed on import)
    except ValueError as error:
        print(f"manualbp: error: JAX cannot start: {error}", file=sys.stderr)
        print("manualbp: check the JAX_* environment variables", file=sys.stderr)
        return 2
    from manualbp.tools import cli

    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        status = cli.main(argv)
    except KeyboardInterrupt:  # between the commands' own guards, e.g. while parsing
        print("manualbp: interrupted", file=sys.stderr)
        status = INTERRUPTED
    if status == INTERRUPTED:
        _leave_interrupted()
    return status
