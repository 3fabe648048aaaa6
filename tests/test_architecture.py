"""The house rules of the source tree, checked on every run of the suite.

- no module in ``src/cascadeseg`` over 600 lines and no function over 80 lines (from ``def`` to
  its last line, docstring included);
- no cascadeseg import inside a function (that is how import cycles used to be dodged; at module
  top every dependency shows where the module starts, and ``lint-imports`` in ``make lint``
  checks the layering), except in the programs on top, listed below.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cascadeseg"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80

#: The programs on top (the CLI, its commands, the demo) import the pipeline when a command runs,
#: not when ``cascadeseg --help`` is built: torch alone takes about 2 s to import. Everywhere else
#: cascadeseg modules are imported at module top.
LAZY_IMPORTS_ALLOWED = ("cli.py", "commands/", "demo.py")


def _modules() -> Iterator[Path]:
    yield from sorted(SRC.rglob("*.py"))


def _functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_modules_are_at_most_600_lines() -> None:
    long = {}
    for path in _modules():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_MODULE_LINES:
            long[str(path.relative_to(SRC))] = n
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_functions_are_at_most_80_lines() -> None:
    long = {}
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in _functions(tree):
            n = (fn.end_lineno or fn.lineno) - fn.lineno + 1
            if n > MAX_FUNCTION_LINES:
                long[f"{path.relative_to(SRC)}:{fn.lineno} {fn.name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


@pytest.mark.parametrize(
    "path",
    [p for p in _modules() if not str(p.relative_to(SRC)).startswith(LAZY_IMPORTS_ALLOWED)],
    ids=lambda p: str(p.relative_to(SRC)),
)
def test_no_function_level_import_of_the_package_itself(path: Path) -> None:
    """cascadeseg modules are imported at module top: an import inside a function hides a cycle."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    hidden = []
    for fn in _functions(tree):
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cascadeseg"):
                hidden.append(f"line {node.lineno}: from {node.module} import ...")
            if isinstance(node, ast.Import):
                hidden += [
                    f"line {node.lineno}: import {a.name}"
                    for a in node.names
                    if a.name.startswith("cascadeseg")
                ]
    assert not hidden, f"{path.relative_to(SRC)} imports cascadeseg inside functions: {hidden}"
