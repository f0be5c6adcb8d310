"""The preview command draws a cube into a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import daskcubes
from daskcubes import jobs
from daskcubes.cli import main
from daskcubes.config import Config
from daskcubes.preview import cube_figure
from tests.helpers import small_config


def test_preview_writes_a_png(
    tmp_path: Path, config: Config, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("matplotlib")
    jobs.run(config, show_progress=False)
    png = tmp_path / "cube.png"
    assert main(["preview", config.out, "--cube", "3", "--png", str(png)]) == 0
    assert png.read_bytes().startswith(b"\x89PNG")
    assert str(png) in capsys.readouterr().out


def test_preview_names_a_bad_cube_index(config: Config, capsys: pytest.CaptureFixture) -> None:
    jobs.run(config, show_progress=False)
    assert main(["preview", config.out, "--cube", "400", "--png", "x.png"]) == 2
    assert "--cube 400" in capsys.readouterr().err


def test_preview_ticks_are_whole_indices(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    # Axes of 3 and of 16 indices, on which matplotlib would put ticks at 0.5 and 2.5.
    config = small_config(tmp_path, n_frames=3, n_rows=16, n_cols=20, dim=16)
    jobs.run(config, show_progress=False)
    figure = cube_figure(config.out, 0)
    figure.canvas.draw()
    for ax in figure.axes[:3]:  # the panels, not their colour bars
        for ticks in (ax.get_xticks(), ax.get_yticks()):
            assert len(ticks) and all(float(tick).is_integer() for tick in ticks), ticks


def test_preview_of_a_dataset_names_the_cube_s_volume_and_draws_its_first_channel(
    tmp_path: Path,
) -> None:
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    frames = {
        name: [rng.random(shape).astype("float32") for _ in range(2)]
        for name, shape in {"north": (6, 10, 12), "south": (7, 11, 9)}.items()
    }
    labels = {name: np.zeros(channels[0].shape, "int8") for name, channels in frames.items()}
    store, out = str(tmp_path / "frames.zarr"), str(tmp_path / "cubes.zarr")
    daskcubes.ingest(frames=frames, labels=labels, frames_store=store, progress=False)
    daskcubes.sample(
        frames_store=store,
        out=out,
        cubes=8,
        depth=3,
        dim=4,
        shard_size=1,
        frame_mode="window",
        row_mode="window",
        column_mode="window",
        progress=False,
    )
    cubes = daskcubes.open_cubes(out)
    names = ["north", "south"]
    for index in range(8):
        title = cube_figure(out, index)._suptitle.get_text()
        assert f"volume '{names[int(cubes.volumes(index)[0])]}'" in title
        assert "(channel 0): (3, 4, 4)" in title
