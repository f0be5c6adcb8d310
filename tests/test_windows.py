"""Grid windows: every window of a grid once, in C order, stored as streamed."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from daskcubes import Batches, jobs, open_cubes, open_stream
from daskcubes.cli import main
from daskcubes.config import Config
from daskcubes.core.definition import Definition
from daskcubes.core.plan import CubePlan, recipes
from daskcubes.errors import UserError
from daskcubes.testing import assert_stores_identical, expected_cubes
from tests.helpers import small_args, small_config, source_frames

#: Frames of 6 x 30 x 20; axes with strides, overlaps (stride < size) and both edges.
GRIDS: dict[str, dict[str, Any]] = {
    "rows, no overlap, drop": {"row_mode": "grid", "height": 7},
    "rows and columns, overlap, snap": {
        "row_mode": "grid",
        "column_mode": "grid",
        "height": 8,
        "width": 6,
        "row_stride": 5,
        "column_stride": 4,
        "grid_edge": "snap",
    },
    "all axes, strides past the size, drop": {
        "frame_mode": "grid",
        "row_mode": "grid",
        "column_mode": "grid",
        "depth": 2,
        "height": 6,
        "width": 5,
        "frame_stride": 3,
        "row_stride": 9,
        "column_stride": 7,
    },
    "all axes, overlap, snap": {
        "frame_mode": "grid",
        "row_mode": "grid",
        "column_mode": "grid",
        "depth": 4,
        "height": 9,
        "width": 6,
        "frame_stride": 1,
        "row_stride": 4,
        "column_stride": 6,
        "grid_edge": "snap",
    },
    "random columns at grid frames and rows": {
        "frame_mode": "grid",
        "row_mode": "grid",
        "depth": 3,
        "height": 10,
        "width": 5,
        "row_stride": 7,
        "grid_edge": "snap",
    },
}
SHAPE = (6, 30, 20)


def axis_starts(n: int, size: int, stride: int, edge: str) -> list[int]:
    """The grid's starts along one axis, worked out another way than the plan's."""
    starts = [start for start in range(n - size + 1) if start % stride == 0]
    return sorted({*starts, n - size}) if edge == "snap" else starts


def enumerated_windows(values: dict[str, Any]) -> list[tuple[int, ...]]:
    """Every window start (frame, row, column) of the grid in C order; 0 on other axes."""
    sizes = (values.get("depth", SHAPE[0]), values.get("height", 6), values.get("width", 6))
    per_axis = []
    for axis, size, n in zip(("frame", "row", "column"), sizes, SHAPE, strict=True):
        if values.get(f"{axis}_mode") == "grid":
            stride = values.get(f"{axis}_stride", size)
            per_axis.append(axis_starts(n, size, stride, values.get("grid_edge", "drop")))
        else:
            per_axis.append([0])
    return list(itertools.product(*per_axis))


def grid_plan(values: dict[str, Any], n_cubes: int | None = None) -> CubePlan:
    fields = Definition.__dataclass_fields__
    definition = Definition(**{k: v for k, v in values.items() if k in fields})
    return CubePlan(
        n_cubes=n_cubes or len(enumerated_windows(values)),
        depth=values.get("depth", SHAPE[0]),
        height=values.get("height", 6),
        width=values.get("width", 6),
        n_frames=SHAPE[0],
        n_rows=SHAPE[1],
        n_cols=SHAPE[2],
        seed=3,
        task_size=4,
        shard_size=4,
        definition=definition,
    )


def window_starts(plan: CubePlan) -> list[tuple[int, ...]]:
    """Each cube's (first frame, first row, first column) as the plan's recipes give it."""
    got = recipes(plan, 0, plan.n_cubes)
    return list(
        zip(got.frames[:, 0].tolist(), got.rows.tolist(), got.columns[:, 0].tolist(), strict=True)
    )


@pytest.mark.parametrize("name", GRIDS)
def test_every_window_of_the_grid_once_in_c_order(name: str) -> None:
    values = GRIDS[name]
    plan = grid_plan(values)
    got = recipes(plan, 0, plan.n_cubes)
    expected = enumerated_windows(values)
    assert plan.n_cubes == len(expected) == len(set(expected))
    for axis, mode in enumerate(plan.definition.modes):
        if mode == "grid":
            starts = [window[axis] for window in expected]
            first = (got.frames[:, 0], got.rows, got.columns[:, 0])[axis]
            assert first.tolist() == starts
    # Windows are consecutive along every grid axis (and frames, with frame_mode grid).
    assert (np.diff(got.frames, axis=1) == 1).all()
    if plan.definition.column_mode == "grid":
        assert (np.diff(got.columns, axis=1) == 1).all()
    else:  # random columns, drawn for each cube from its own stream
        assert all(len(set(c)) == plan.width for c in got.columns.tolist())
        assert len({tuple(c) for c in got.columns.tolist()}) > 1


def test_snap_ends_at_the_edge_and_drop_does_not() -> None:
    drop = grid_plan({"row_mode": "grid", "height": 7}, 4)
    snap = grid_plan({"row_mode": "grid", "height": 7, "grid_edge": "snap"}, 5)
    assert drop.grid_shape == (1, 4, 1) and snap.grid_shape == (1, 5, 1)
    assert recipes(drop, 0, 4).rows.tolist() == [0, 7, 14, 21]
    assert recipes(snap, 0, 5).rows.tolist() == [0, 7, 14, 21, 23]


def test_fewer_cubes_are_the_first_windows_of_the_grid() -> None:
    values = GRIDS["all axes, overlap, snap"]
    whole, capped = grid_plan(values), grid_plan(values, 7)
    assert window_starts(capped) == window_starts(whole)[:7]


def test_grid_axes_leave_the_other_choices_as_they_were() -> None:
    values = GRIDS["random columns at grid frames and rows"]
    grid = grid_plan(values)
    random_rows = grid_plan({**values, "row_mode": "window", "row_stride": None}, 2)
    assert np.array_equal(recipes(grid, 0, 2).columns, recipes(random_rows, 0, 2).columns)


def test_the_grid_is_xbatcher_s() -> None:
    xbatcher = pytest.importorskip("xbatcher", reason="pip install xbatcher (the bench extra)")
    xarray = pytest.importorskip("xarray")
    values = GRIDS["all axes, strides past the size, drop"] | {
        "frame_stride": 1,
        "row_stride": 4,
        "column_stride": 3,
    }
    plan = grid_plan(values)
    volume = xarray.DataArray(np.arange(np.prod(SHAPE)).reshape(SHAPE), dims=("f", "r", "c"))
    sizes = dict(zip(("f", "r", "c"), plan.cube_shape, strict=True))
    overlap = {"f": 2 - 1, "r": 6 - 4, "c": 5 - 3}
    batches = xbatcher.BatchGenerator(volume, input_dims=sizes, input_overlap=overlap)
    theirs = [np.unravel_index(int(b.values.flat[0]), SHAPE) for b in batches]
    assert window_starts(plan) == [tuple(map(int, start)) for start in theirs]


def test_the_grid_is_torchio_s() -> None:
    # .ci/run's full run installs TorchIO beside torch; the README's fresh venv has neither.
    torchio = pytest.importorskip(
        "torchio", reason="TorchIO is not installed (pip install torchio, as .ci/run does)"
    )
    import torch

    # TorchIO takes an overlap (an even one) and always snaps to the edge.
    strides = {"frame_stride": 2, "row_stride": 5, "column_stride": 4}
    plan = grid_plan(GRIDS["all axes, overlap, snap"] | strides)
    overlap = tuple(size - s for size, s in zip(plan.cube_shape, strides.values(), strict=True))
    subject = torchio.Subject(
        image=torchio.ScalarImage(tensor=torch.zeros((1, *SHAPE), dtype=torch.float32))
    )
    sampler = torchio.GridSampler(subject, patch_size=plan.cube_shape, patch_overlap=overlap)
    theirs = [tuple(int(v) for v in location[:3]) for location in sampler.locations]
    assert window_starts(plan) == theirs


# -- through the pipeline ----------------------------------------------------------------


def grid_config(
    root: Path, name: str = "random columns at grid frames and rows", **more: Any
) -> Config:
    values = GRIDS[name]
    n_cubes = len(enumerated_windows(values))
    return small_config(root, n_frames=6, n_rows=30, n_cols=20, cubes=n_cubes, **{**values, **more})


def test_a_grid_store_holds_the_windows_and_streams_the_same(tmp_path: Path) -> None:
    config = grid_config(tmp_path, "all axes, overlap, snap")
    jobs.run(config, show_progress=False)
    store = open_cubes(config.out)
    got = store.recipes(slice(None))
    assert np.array_equal(store[:], expected_cubes(source_frames(config), got, config.height))
    assert np.array_equal(open_stream(config)[:], store[:])


def test_a_grid_store_is_the_same_on_every_executor(
    tmp_path: Path, executor_settings: dict[str, Any]
) -> None:
    reference = grid_config(tmp_path / "ref")
    jobs.run(reference, show_progress=False)
    config = grid_config(
        tmp_path / "other",
        frames=reference.frames,
        frames_store=reference.frames_store,
        synthetic=False,
        **executor_settings,
    )
    jobs.sample(config, show_progress=False)
    assert_stores_identical(reference.out, config.out)


def test_a_resumed_grid_store_is_the_same(tmp_path: Path) -> None:
    config = grid_config(tmp_path)
    jobs.run(config, show_progress=False)
    whole = tmp_path / "whole.zarr"
    jobs.sample(config.model_copy(update={"out": str(whole)}), show_progress=False)
    group = zarr.open_group(config.out, mode="r+")
    attrs: dict[str, Any] = dict(group.attrs["daskcubes"])  # type: ignore[arg-type]
    # As a run killed after the first shard leaves it: the rest missing or overwritten.
    attrs.update(complete=None, progress={"shards": [[0, 1]], "recipes": []})
    group.attrs["daskcubes"] = attrs
    for shard in (Path(config.out) / "cubes").glob("c.*"):
        if shard.name.split(".")[1] not in ("0", "1"):
            shard.unlink()
    cubes = zarr.open_array(config.out, path="cubes", mode="r+")
    cubes[4] = 0.0
    jobs.sample(config, mode="resume", show_progress=False)
    assert_stores_identical(whole, config.out)


def test_batches_shuffle_the_grid_s_cubes_and_give_each_once(tmp_path: Path) -> None:
    config = grid_config(tmp_path)
    jobs.run(config, show_progress=False)
    stream = open_stream(config)
    seen = [batch.indices for batch in Batches(stream, 4, shuffle=True, seed=1).epoch(0)]
    order = np.concatenate(seen)
    assert sorted(order.tolist()) == list(range(len(stream)))
    assert order.tolist() != sorted(order.tolist())


def test_info_verify_and_preview_follow_the_grid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = grid_config(tmp_path)
    jobs.run(config, show_progress=False)
    capsys.readouterr()
    assert main(["info", config.out]) == 0
    out = capsys.readouterr().out
    assert "row_mode grid" in out and "row_stride 7" in out and "grid_edge snap" in out
    assert "  grid: 2 x 4 x 1 windows (frames x rows x columns), 8 in all" in out
    status = main(["verify", config.out, "--against", config.frames_store, "--sample", "8"])
    assert status == 0, capsys.readouterr().out
    rows = zarr.open_array(config.out, path="rows", mode="r+")
    rows[:] = np.asarray(rows[:])[::-1]  # every window still there, in another order
    assert main(["verify", config.out, "--sample", "8"]) == 1
    assert "recipe differs from the plan's" in capsys.readouterr().out
    pytest.importorskip("matplotlib")
    png = tmp_path / "cube.png"
    assert main(["preview", config.out, "--cube", "5", "--png", str(png)]) == 0
    assert png.read_bytes().startswith(b"\x89PNG")


# -- bad settings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--row-stride", "3"], "row_stride: 3 needs row_mode grid (row_mode is first)"),
        (["--grid-edge", "snap"], "grid_edge: snap needs an axis in grid mode"),
        (
            ["--row-mode", "grid", "--height", "5", "--cubes", "3"],
            "cubes: 3; the grid has 2 windows (2 rows), so expected 1 to 2",
        ),
        (["--column-mode", "grid", "--column-stride", "0"], "setting 'column_stride'"),
    ],
)
def test_bad_grid_settings_give_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    status = main([*small_args(tmp_path), *extra])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert message in err, err
    assert len(err.splitlines()) == 1 and err.startswith("daskcubes: error:")
    assert not (tmp_path / "cubes.zarr").exists()


def test_a_grid_past_a_frames_store_s_windows_is_refused_before_writing(tmp_path: Path) -> None:
    made = grid_config(tmp_path)
    jobs.run(made, show_progress=False)
    config = made.model_copy(update={"synthetic": False, "out": str(tmp_path / "x.zarr")})
    config = Config.model_validate({**config.model_dump(), "cubes": made.cubes + 1})
    with pytest.raises(UserError, match=f"the grid has {made.cubes} windows"):
        jobs.sample(config, show_progress=False)
    assert not Path(config.out).exists()
