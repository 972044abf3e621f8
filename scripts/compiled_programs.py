"""A fingerprint of each benchmark program as XLA compiles it, to hold a refactor to the same code.

For every program `manualbp.tools.bench_curvature` times (the manual ones), the
optimized HLO's instructions with the source metadata and debug tables
removed, hashed. Run it on two checkouts and compare: equal lines mean the
same compiled program, so the same speed, whatever the Python around it.

    python scripts/compiled_programs.py > after.txt   # then diff against a run before
"""

from __future__ import annotations

import hashlib
import re

import jax
import jax.numpy as jnp

from manualbp.data import random_batch
from manualbp.network import as_targets
from manualbp.tools.bench_curvature import CONFIGS, programs

INSTRUCTION = re.compile(r"^\s*(ROOT |%|ENTRY|\})")
ANNOTATIONS = re.compile(r", (metadata|frontend_attributes|backend_config)=\{[^}]*\}")


def fingerprint(compiled_text: str) -> tuple[int, str]:
    """(instruction count, hash) of an optimized HLO module without its source annotations."""
    lines = [ANNOTATIONS.sub("", line) for line in compiled_text.splitlines()]
    lines = [line for line in lines if INSTRUCTION.match(line)]
    return len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def main() -> int:
    for config in CONFIGS:
        net = config.net()
        params = net.init(jax.random.key(0))
        X, Y = random_batch(net, jax.random.key(1), config.batch)
        Y = as_targets(net, Y, jnp.float32)
        v = jax.tree.map(lambda t: 0.5 * t, params)
        for name, program in programs(net, X, Y).items():
            if name.endswith("_autodiff"):
                continue
            count, digest = fingerprint(program.lower(params, v).compile().as_text())
            print(f"{config.name} {name} {count} {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
