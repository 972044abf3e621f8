"""The layout: an acyclic import graph, a core that never imports the tools, a light import."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import import_graph  # noqa: E402


def test_the_import_graph_has_no_cycle_and_no_upward_import():
    assert import_graph.problems(import_graph.graph()) == []


def test_the_checker_sees_a_cycle_and_an_upward_import():
    edges = {
        "manualbp.network": {"manualbp.gradients"},  # math importing gradients
        "manualbp.gradients": {"manualbp.network"},
        "manualbp.backprop": {"manualbp.tools.cli"},  # math importing tools
        "manualbp.tools.cli": set(),
        "manualbp.data": {"manualbp"},  # the package itself, below it
        "manualbp.extensions.curvature": {"manualbp.verification.report"},
        "manualbp.verification.backward": {"manualbp.training.loop"},
        "manualbp.training.loop": {"manualbp"},
    }
    found = import_graph.problems(edges)
    assert "manualbp.network (math) imports manualbp.gradients (gradients)" in found
    assert "manualbp.backprop (math) imports manualbp.tools.cli (tools)" in found
    assert "manualbp.data (gradients) imports manualbp (package)" in found
    assert (
        "manualbp.extensions.curvature (extensions) imports manualbp.verification.report "
        "(verification)" in found
    )
    assert (
        "manualbp.verification.backward (verification) imports manualbp.training.loop "
        "(training)" in found
    )
    assert "manualbp.training.loop (training) imports manualbp (package)" in found
    assert any(p.startswith("cycle: ") and "manualbp.gradients" in p for p in found)


def test_a_function_level_import_is_an_edge(tmp_path, monkeypatch):
    package = tmp_path / "manualbp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "network.py").write_text("def f():\n    from manualbp import gradients\n")
    (package / "gradients.py").write_text("from manualbp.network import f\n")
    monkeypatch.setattr(import_graph, "PACKAGE", package)
    edges = import_graph.graph()
    assert edges["manualbp.network"] == {"manualbp.gradients"}
    assert any(p.startswith("cycle: ") for p in import_graph.problems(edges))


def test_import_manualbp_loads_no_argparse_matplotlib_or_progress_bars():
    code = (
        "import sys, manualbp; "
        "print(sorted(m for m in ('argparse', 'matplotlib', 'tqdm', 'rich') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_public_name_hides_a_module():
    import importlib
    import pkgutil

    import manualbp

    for info in pkgutil.walk_packages(manualbp.__path__, "manualbp."):
        parent_name, _, child = info.name.rpartition(".")
        parent = importlib.import_module(parent_name)
        module = importlib.import_module(info.name)
        assert getattr(parent, child) is module, f"{parent_name}.{child} is not the module"


MODULE_LINES = 340
"""About 300 lines a module (CONTRIBUTING.md), with room for a docstring's growth."""
FUNCTION_CODE_LINES = 60
"""Lines of code a function may run to, its docstring not counted."""


def _sizes(root):
    """(module line counts, function code line counts) of every .py file under ``root``."""
    import ast
    from pathlib import Path

    modules, functions = {}, {}
    for path in sorted(Path(root).rglob("*.py")):
        text = path.read_text()
        modules[str(path)] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body
                if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                    body = body[1:]
                if body:
                    functions[f"{path}:{node.name}"] = body[-1].end_lineno - body[0].lineno + 1
    return modules, functions


def test_modules_and_functions_stay_small():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "manualbp"
    modules, functions = _sizes(root)
    assert {m: n for m, n in modules.items() if n > MODULE_LINES} == {}
    assert {f: n for f, n in functions.items() if n > FUNCTION_CODE_LINES} == {}


def test_the_size_check_sees_a_long_module_and_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(FUNCTION_CODE_LINES + 1))
    (tmp_path / "long.py").write_text('def f():\n    """Doc."""\n' + body + "\n" * MODULE_LINES)
    modules, functions = _sizes(tmp_path)
    assert modules[str(tmp_path / "long.py")] > MODULE_LINES
    assert functions[f"{tmp_path / 'long.py'}:f"] == FUNCTION_CODE_LINES + 1
