"""The layers, read from the code's own imports (ARCHITECTURE.md).

    counterfactuals            imports nothing of ours
    distill, eval              import counterfactuals, never each other
    fairdistill                the application layer: combines distill and eval
    recipes, bench, tests      entry scripts and checks: may import anything, nothing imports them

Every ``import`` and ``from … import`` in a package file counts, at any depth (a lazy import inside a
function is still a dependency), and so does ``importlib.import_module("…")`` with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# which of our top-level packages each package may import (itself included)
ALLOWED = {
    "counterfactuals": {"counterfactuals"},
    "distill": {"distill", "counterfactuals"},
    "eval": {"eval", "counterfactuals"},
    "fairdistill": {"fairdistill", "distill", "eval", "counterfactuals"},
}
OURS = set(ALLOWED) | {"recipes", "bench", "tests"}


def imported_top_levels(path: Path, package: str) -> set[tuple[str, int]]:
    """(top-level package, line) of every import in ``path`` that names one of ours."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [package] if node.level else [node.module or ""]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        for name in names:
            top = name.split(".")[0]
            if top in OURS:
                found.add((top, node.lineno))
    return found


def package_files() -> list[tuple[str, Path]]:
    return [
        (package, path)
        for package in ALLOWED
        for path in sorted((REPO / package).rglob("*.py"))
        if (REPO / package).is_dir()
    ]


def test_every_package_exists():
    missing = [p for p in ALLOWED if not (REPO / p / "__init__.py").is_file()]
    assert not missing, f"packages without __init__.py: {missing}"


@pytest.mark.parametrize("package,path", package_files(), ids=lambda v: str(v).replace(str(REPO) + "/", ""))
def test_imports_respect_the_layers(package, path):
    wrong = sorted(
        f"{path.relative_to(REPO)}:{line} imports {top}"
        for top, line in imported_top_levels(path, package)
        if top not in ALLOWED[package]
    )
    assert not wrong, "layer violations:\n" + "\n".join(wrong)


def test_the_checker_sees_a_violation(tmp_path):
    """The rule must be able to fail: a planted upward import, lazy and absolute, is found."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import torch\n"
        "def f():\n"
        "    from eval.callback import FairnessEvalCallback\n"
        "    import importlib\n"
        "    importlib.import_module('fairdistill.card')\n",
        encoding="utf-8",
    )
    assert imported_top_levels(bad, "distill") == {("eval", 3), ("fairdistill", 5)}
