"""The README's test line on a fresh machine: what it does not install (torch, Chromium) is
skipped, never failed. Here torch is hidden from a run of the tests that touch it, as a
fresh venv without it would have them (CI also runs the line in such a venv)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: The tests that use torch (and the patch libraries on it) where it is installed.
TORCH_TESTS = [
    "tests/test_benchmark.py",
    "tests/test_torch_loader.py",
    "tests/test_train.py",
    "tests/test_windows.py",
]


def torch_installed() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


#: The pytest plugins of the test extra that the run needs (autoloading is off).
PLUGINS = ["-p", "xdist.plugin", "-p", "pytest_timeout", "-p", "hypothesis.extra.pytestplugin"]


@pytest.mark.slow
@pytest.mark.skipif(
    not torch_installed(),
    reason="torch is not installed: this run is itself the run of the tests without it",
)
def test_the_tests_pass_where_torch_is_not_installed(tmp_path: Path) -> None:
    hidden = tmp_path / "hidden"
    for module in ("torch", "torchdata", "torchio", "monai"):
        (hidden / module).mkdir(parents=True)
        (hidden / module / "__init__.py").write_text(
            # What an import of a module that is not installed raises.
            f'raise ModuleNotFoundError("No module named {module!r}", name={module!r})\n'
        )
    path = os.pathsep.join([str(hidden), str(ROOT), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        # -n 0: on the worker that runs this test, not on as many more as there are cores;
        # only the plugins the project installs (none that a machine may have besides).
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-n",
            "0",
            *PLUGINS,
            *TORCH_TESTS,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert " failed" not in done.stdout
