"""``python -m manualbp_cli``: the `manualbp` command, for a checkout that is not installed."""

import sys

from manualbp_cli import main

sys.exit(main())
