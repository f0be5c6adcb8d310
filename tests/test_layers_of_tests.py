"""Test modules share code through tests/helpers.py only: none imports ``conftest``
(fixtures and hooks, which pytest finds itself) or another test module (whose import
would collect and run its tests twice, and tie the two modules together)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def imported_modules(source: str) -> set[str]:
    """Every module that ``source`` imports, by its absolute dotted name (``from . import x``
    and ``from .x import y`` resolved against the package ``tests``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "tests" if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def forbidden(modules: set[str]) -> set[str]:
    """The imports among ``modules`` that reach into ``conftest`` or a test module, as
    ``tests.NAME`` or, with tests/ on the path, as a top-level ``NAME``."""

    def reaches_in(name: str) -> bool:
        parts = name.split(".")
        local = parts[1:] if parts[0] == "tests" else parts[:1]
        return any(part == "conftest" or part.startswith("test_") for part in local)

    return set(filter(reaches_in, modules))


@pytest.mark.parametrize("path", sorted(TESTS.glob("test_*.py")), ids=lambda path: path.name)
def test_no_test_module_imports_conftest_or_another_test_module(path: Path) -> None:
    assert forbidden(imported_modules(path.read_text())) == set()


@pytest.mark.parametrize(
    "source",
    [
        "from tests.conftest import small_config",
        "import tests.conftest",
        "from tests.test_pipeline import source_frames",
        "from tests import test_pipeline",
        "from .test_s3 import KEY",
        "from . import conftest",
        "import conftest",
        "from test_workflow import small_args",
    ],
)
def test_the_check_sees_every_spelling_of_such_an_import(source: str) -> None:
    assert forbidden(imported_modules(source))


def test_the_check_lets_the_helpers_through() -> None:
    source = "from tests.helpers import small_config\nimport tests.helpers\nimport pytest"
    assert forbidden(imported_modules(source)) == set()
