"""The preview command draws a cube into a PNG."""

from __future__ import annotations

from pathlib import Path

import pytest

from daskcubes import pipeline
from daskcubes.config import Config
from daskcubes.workflow import main


def test_preview_writes_a_png(
    tmp_path: Path, config: Config, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("matplotlib")
    pipeline.run(config, show_progress=False)
    png = tmp_path / "cube.png"
    assert main(["preview", config.out, "--cube", "3", "--png", str(png)]) == 0
    assert png.read_bytes().startswith(b"\x89PNG")
    assert str(png) in capsys.readouterr().out


def test_preview_names_a_bad_cube_index(config: Config, capsys: pytest.CaptureFixture) -> None:
    pipeline.run(config, show_progress=False)
    assert main(["preview", config.out, "--cube", "400", "--png", "x.png"]) == 2
    assert "--cube 400" in capsys.readouterr().err
