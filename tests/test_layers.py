"""The package's layers stay layers: the import contract of pyproject.toml holds, it fails
on an upward import, and no module imports itself back through others."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with the project's contract, over the package found first in
    ``package_parent``."""
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command; "
            "sys.exit(lint_imports_command())",
            "--config",
            str(ROOT / "pyproject.toml"),
            "--no-cache",
        ],
        cwd=package_parent,
        env={"PYTHONPATH": str(package_parent), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_layers_import_only_downwards() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "upward"),
    [
        ("core/plan.py", "from daskcubes.io import storage"),  # the pure core does no I/O
        ("train/stream.py", "from daskcubes.runtime import executors"),  # siblings
        ("cut/cutter.py", "import daskcubes.config"),  # below jobs.py, nothing knows Config
    ],
)
def test_an_upward_import_breaks_the_contract(tmp_path: Path, module: str, upward: str) -> None:
    shutil.copytree(ROOT / "daskcubes", tmp_path / "daskcubes")
    with (tmp_path / "daskcubes" / module).open("a") as file:
        file.write(f"\n\ndef _upward() -> None:\n    {upward}  # noqa\n")  # inside a function
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 broken" in result.stdout


def import_cycles(package: str) -> list[list[str]]:
    """The groups of modules of ``package`` that import each other in a loop (Tarjan's
    strongly connected components), counting imports inside functions and through a
    package's ``__init__``."""
    graph = grimp.build_graph(package)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = stack[stack.index(module) :]
            del stack[stack.index(module) :]
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


def test_no_module_imports_itself_back() -> None:
    assert import_cycles("daskcubes") == []


def test_a_loop_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "looped"
    package.mkdir()
    (package / "__init__.py").write_text("from looped.a import A\n")
    (package / "a.py").write_text("A = 1\n\ndef f():\n    from looped import b\n")
    (package / "b.py").write_text("from looped import A\n")  # back through __init__
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_cycles("looped") == [["looped", "looped.a", "looped.b"]]
