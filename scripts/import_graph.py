"""Print manualbp's import graph, layer by layer, and fail on a cycle or an upward import.

    python scripts/import_graph.py

Every import counts, also one inside a function: an import that dodges a
cycle by running late is still a cycle. The layers, lowest first:

* math: the equations and what they are written with (activations, losses,
  parameters, network, backprop, autodiff, tolerance), the argument checks (validation)
  and the plain helpers (_names, _records, _table; _block_checks);
* gradients: the checked, jitted entry points (_entry builds them; gradients) and the data
  (data, with the synthetic sets in _data_synthetic and the IDX files in _data_idx);
* extensions: the per-example and curvature math (manualbp.extensions);
* verification: every verifier, core, extensions and curvature (manualbp.verification);
* training: the training loop, privacy, checkpoints and run identity (manualbp.training);
* package: manualbp's ``__init__``, the curated surface;
* tools: the command line, run folders, plots and the benchmark (manualbp.tools).

A module may import its own layer or the ones below, never above.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "manualbp"
MATH = {
    "activations",
    "losses",
    "network",
    "parameters",
    "validation",
    "_block_checks",
    "_initialization",
    "backprop",
    "autodiff",
    "tolerance",
    "_names",
    "_records",
    "_table",
}
GRADIENTS = {"_entry", "gradients", "data", "_data_synthetic", "_data_idx"}
SUBPACKAGES = ("extensions", "verification", "training", "tools")
LAYERS = ("math", "gradients", "extensions", "verification", "training", "package", "tools")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "package"
    if parts[1] in SUBPACKAGES:
        return parts[1]
    if parts[1] in MATH:
        return "math"
    if parts[1] in GRADIENTS:
        return "gradients"
    raise ValueError(f"{module}: no layer; add it to scripts/import_graph.py")


def imports(path: Path, modules: set[str]) -> set[str]:
    """The manualbp modules ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    modules = set(paths)
    edges = {}
    for name, path in paths.items():
        found = imports(path, modules) - {name}
        # A submodule's own package is imported first by Python; that is not a dependency.
        edges[name] = {m for m in found if not name.startswith(m + ".") or m == "manualbp"}
    return edges


def problems(edges: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in sorted(edges.items()):
        for target in sorted(targets):
            if LAYERS.index(layer(target)) > LAYERS.index(layer(module)):
                found.append(f"{module} ({layer(module)}) imports {target} ({layer(target)})")
    found += [f"cycle: {' -> '.join(cycle)}" for cycle in cycles(edges)]
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules, by depth-first search."""
    found, done = [], set()

    def visit(module, path):
        if module in path:
            found.append([*path[path.index(module) :], module])
            return
        if module in done:
            return
        for target in sorted(edges.get(module, ())):
            if target != "manualbp":
                visit(target, [*path, module])
        done.add(module)

    for module in sorted(edges):
        visit(module, [])
    return found


def main() -> int:
    edges = graph()
    for name in LAYERS:
        print(f"[{name}]")
        for module in sorted(m for m in edges if layer(m) == name):
            targets = ", ".join(t.removeprefix("manualbp.") for t in sorted(edges[module]))
            print(f"  {module.removeprefix('manualbp.') or 'manualbp'} -> {targets or '-'}")
    found = problems(edges)
    for problem in found:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    print("no cycles, no upward imports" if not found else f"{len(found)} problems")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
