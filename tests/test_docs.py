"""The docs are true on a clean clone: links stay inside the repository, equations exist.

* Every relative Markdown link in README.md, CONTRIBUTING.md and docs/*.md resolves to a file
  or folder inside the repository.
* Every equation number a docstring in the package or the experiments cites, as "Eq. (N)" or
  "equation (N)" (also "equations (2), (3)" and ranges "(1)–(4)"), is a numbered equation,
  ``\\tag{N}``, in docs/derivation.md.
* The catalogue's size the README states, "(N subjects, K checks", is the catalogue's: N here,
  counted from the registries; K in tests/test_cli.py's whole-catalogue run (slow).
"""

import ast
import pathlib
import re

import pytest

from manualbp.activations import ACTIVATIONS, HIDDEN_ACTIVATIONS
from manualbp.losses import LOSSES, OUTPUT_LOSS_PAIRS

ROOT = pathlib.Path(__file__).resolve().parent.parent
DERIVATION = ROOT / "docs" / "derivation.md"


def markdown_files() -> list[pathlib.Path]:
    files = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [f for f in files if f.exists()]


# --- links ----------------------------------------------------------------------------

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]*)[^)]*\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.MULTILINE)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def link_targets(text: str) -> list[str]:
    """Targets of inline links, images and reference definitions, outside code."""
    text = FENCE.sub("", text)
    text = CODE_SPAN.sub("", text)
    targets = INLINE_LINK.findall(text) + REFERENCE_DEF.findall(text)
    return [t[1:-1] if t.startswith("<") else t for t in targets]


def link_problem(source: pathlib.Path, target: str) -> str | None:
    """Why a relative link is broken, or None if it is fine (or not relative)."""
    if not target or target.startswith("#") or SCHEME.match(target) or target.startswith("//"):
        return None
    path = target.split("#", 1)[0].split("?", 1)[0]
    if path.startswith("/"):
        return "absolute path; write it relative to the file"
    resolved = (source.parent / path).resolve()
    if not resolved.is_relative_to(ROOT):
        return "leaves the repository"
    if not resolved.exists():
        return "no such file"
    return None


def broken_links(source: pathlib.Path) -> list[str]:
    found = []
    for target in link_targets(source.read_text(encoding="utf-8")):
        problem = link_problem(source, target)
        if problem:
            found.append(f"{source.relative_to(ROOT)}: ({target}) {problem}")
    return found


@pytest.mark.parametrize("source", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_stay_inside_the_repository_and_exist(source):
    assert broken_links(source) == []


def test_the_derivation_is_in_the_repository():
    assert DERIVATION.exists()
    assert DERIVATION in markdown_files()


def test_the_link_check_can_fail():
    """A link out of the repository, a missing file and an absolute path are all caught."""
    readme = ROOT / "README.md"
    assert link_problem(readme, "../shared/derivation.md") == "leaves the repository"
    assert link_problem(readme, "docs/no_such_page.md") == "no such file"
    assert link_problem(readme, "/docs/derivation.md") is not None
    assert link_problem(readme, "docs/derivation.md#2-equations-14") is None
    assert link_problem(readme, "https://example.org/page.md") is None
    text = (
        "[a](../outside.md) and ![b](docs/missing.png 'title')\n[c]: <docs/gone.md>\n"
        "`[not a link](../x.md)`\n```\n[nor this](../y.md)\n```\n"
    )
    assert link_targets(text) == ["../outside.md", "docs/missing.png", "docs/gone.md"]


# --- equation numbers -----------------------------------------------------------------

LABEL = r"\((?:\d+|T\d+)\)"
SEPARATOR = r"\s*(?:,|and|or|–|-|to)\s*"
CITATION = re.compile(rf"\b(?:eqs?\.|equations?)\s*{LABEL}(?:{SEPARATOR}{LABEL})*", re.IGNORECASE)
RANGE = re.compile(r"\((\d+)\)\s*(?:–|-|to)\s*\((\d+)\)")


def cited_labels(text: str) -> set[str]:
    """Equation labels cited in ``text``: "Eq. (1)", "equations (2) and (3)", "(1)–(4)"."""
    labels = set()
    for citation in CITATION.finditer(text):
        labels |= set(re.findall(r"\((\d+|T\d+)\)", citation.group()))
        for first, last in RANGE.findall(citation.group()):
            labels |= {str(n) for n in range(int(first), int(last) + 1)}
    return labels


def docstrings(path: pathlib.Path) -> list[str]:
    """Every bare string statement: module, class, function and attribute docstrings."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        node.value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    ]


def numbered_equations(text: str) -> set[str]:
    return set(re.findall(r"\\tag\*?\{\s*(\d+|T\d+)\s*\}", text))


def test_every_equation_the_code_cites_is_numbered_in_the_derivation():
    sources = sorted((ROOT / "manualbp").rglob("*.py")) + sorted(
        (ROOT / "experiments").glob("*.py")
    )
    numbered = numbered_equations(DERIVATION.read_text(encoding="utf-8"))
    missing = {
        f"{path.relative_to(ROOT)}: ({label})"
        for path in sources
        for doc in docstrings(path)
        for label in cited_labels(doc)
        if label not in numbered
    }
    assert not missing, f"cited but not numbered in docs/derivation.md: {sorted(missing)}"


def test_the_gradient_equations_are_numbered():
    assert {"1", "2", "3", "4"} <= numbered_equations(DERIVATION.read_text(encoding="utf-8"))


def test_the_equation_check_can_fail():
    assert cited_labels("Eq. (1): δ^l = ... Shapes: (N_l,).") == {"1"}
    assert cited_labels("equations (2) and (3), then Equation (4)") == {"2", "3", "4"}
    assert cited_labels("Equations (1)–(4) of docs/derivation.md") == {"1", "2", "3", "4"}
    assert cited_labels("eq. (T2) bounds it; see (7) elsewhere") == {"T2"}
    assert cited_labels("the equation's shapes (B, N_L)") == set()
    assert numbered_equations(r"$$x \tag{1}$$ $$y \tag{T3}$$") == {"1", "T3"}
    assert "99" not in numbered_equations(DERIVATION.read_text(encoding="utf-8"))


# --- the catalogue's size in the README -----------------------------------------------

CATALOGUE_SIZE = re.compile(r"\((\d[\d,]*) subjects, (\d[\d,]*) checks")


def catalogue_sizes(text: str) -> list[tuple[int, int]]:
    """Each "(N subjects, K checks" that ``text`` states, as (N, K)."""
    return [
        (int(n.replace(",", "")), int(k.replace(",", ""))) for n, k in CATALOGUE_SIZE.findall(text)
    ]


def catalogue_subjects() -> int:
    """The subjects `manualbp verify` runs with no flags, counted without running one: every
    activation and loss on its grid, then a net per hidden activation × (output, loss) pair.
    tests/test_cli.py's whole-catalogue run holds the command to this count."""
    return len(ACTIVATIONS) + len(LOSSES) + len(HIDDEN_ACTIVATIONS) * len(OUTPUT_LOSS_PAIRS)


def test_the_readme_states_the_catalogues_subject_count():
    sizes = catalogue_sizes((ROOT / "README.md").read_text(encoding="utf-8"))
    assert sizes, 'README.md no longer states "(N subjects, K checks"'
    assert {n for n, _ in sizes} == {catalogue_subjects()}


def test_the_count_check_can_fail():
    assert catalogue_sizes("on a net (75 subjects, 2,096 checks, 53 s)") == [(75, 2096)]
    assert catalogue_sizes("76 subjects and 2,096 checks") == []
    assert catalogue_subjects() != 75
