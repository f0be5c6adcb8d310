"""The wheel carries what an installed package needs: its presets, found from anywhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import PRESET_NAMES

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built by pip from a copy of the sources (the checkout stays untouched)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    shutil.copytree(
        ROOT / "daskcubes", source / "daskcubes", ignore=shutil.ignore_patterns("__pycache__")
    )
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), "."],
        cwd=source,
        check=True,
    )
    (built,) = dist.glob("daskcubes-*.whl")
    return built


def test_the_wheel_holds_every_preset(wheel: Path) -> None:
    assert {"default", "small"} <= set(PRESET_NAMES)
    presets = {f"daskcubes/conf/{name}.yaml" for name in PRESET_NAMES}
    with zipfile.ZipFile(wheel) as archive:
        assert presets <= set(archive.namelist())


def test_an_unpacked_wheel_finds_its_presets_from_another_folder(
    wheel: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        "import daskcubes, daskcubes.config as c;"
        "print(daskcubes.__file__);"
        "print(c.load_config().cubes, c.load_config('small').cubes)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    where, cubes = done.stdout.splitlines()
    assert Path(where).is_relative_to(site)  # the wheel's copy, not the checkout's
    assert cubes == "100 200"
