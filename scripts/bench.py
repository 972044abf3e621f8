"""Benchmark manual gradients against jax.grad; see manualbp/bench.py for the method.

python scripts/bench.py [--configs small,medium] [--repeats INT] [--quick] [--json PATH]

The same as `manualbp bench`, with its one-line errors and exit statuses.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from manualbp.tools.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
