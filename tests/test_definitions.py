"""Cube definitions beyond the article's, and sampling within a memory budget."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import zarr

from daskcubes import jobs, open_cubes, open_stream
from daskcubes.cli import main
from daskcubes.config import Config
from daskcubes.core.definition import Definition
from daskcubes.core.plan import recipes_of
from daskcubes.cut.job import for_workers
from daskcubes.errors import UserError
from daskcubes.io.schema import CubeSchema
from daskcubes.testing import assert_stores_identical, expected_cubes, store_files
from tests.helpers import (
    DASHBOARD,
    DEFINITIONS,
    cli_args,
    small_args,
    small_config,
    source_frames,
    values_digest,
    without_checksums,
)


def store_digest(path: str | Path) -> str:
    """sha256 over a store's files (names and contents), root metadata excepted."""
    digest = hashlib.sha256()
    for name, data in store_files(path).items():
        digest.update(f"{name}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return digest.hexdigest()


#: Digests of cube stores made by daskcubes before cube definitions were settings: the
#: default definition must keep making exactly these cubes and recipes (the values digest,
#: which never changes) in exactly these files (the files digest, which changes only with
#: the stores' codecs or layout, and is then recorded again in a commit of its own).
GOLDEN: dict[str, tuple[dict[str, Any], str, str]] = {
    "small": (
        {},
        "4931aab3b84387294ebce6f6a0f4afe2e9ec43d0c097a34e1b1fdf6102871843",
        "b2f7886c05106289a329ba44d09e66e0a64bd0592764d6cdf1c8baf51784ea8d",
    ),
    "csv-float32": (
        {"frame_format": "csv", "dtype": "float32", "seed": 3},
        "d97d9f9d65c3c5e87beddec7e9ef5115757b90cdd4cc78121f1c5f4235f29dd9",
        "ee1f00971dabfb3aaab0672257b404ef516ba2a866199e4201402f2435588c50",
    ),
    "lz4-wide": (
        {"compressor": "lz4", "n_rows": 8, "n_cols": 30, "dim": 8, "seed": 123},
        "dee4da36bd8fea10e1d8f17ae3b537bbdf336d1418060d6bcc4e603382e95afd",
        "681c316788aba5a606c85456766d18441b11d6f3256787834070fc7baa3399e5",
    ),
    "ragged": (
        {"n_frames": 12, "cubes": 17, "seed": 11},
        "506bb4d399aa032a0ab80e6b5e4baac3653213202deb0298a4c9a1e32c9f158e",
        "cba60746c6366d3a6fc0c7334d6674c56a1840a5b695ec7e968af748beeae32d",
    ),
}


#: The files digests of the same stores as daskcubes wrote them before every chunk carried
#: a crc32c, with chunk keys c.i.j (``tests.helpers.without_checksums`` makes such stores
#: again). Before those keys, the files digests were dd106a31..., a8785731..., c565b494...
#: and 3f7356b6... (stores of c/i/j keys: tests/test_resume.py keeps one working).
BEFORE_CHECKSUMS = {
    "small": "9f1aa51175f05facd4563ef89803986904c042d933453e5b97c139e6e6f252b8",
    "csv-float32": "61bc19ecab431b78bf9cac4a908abb6f1218261f4a81b07279cdbcf857f20aef",
    "lz4-wide": "691a127e9e8fad44a53806f6b13847045c338372e1bf0073b2d04881e1139b68",
    "ragged": "4bad7f1d1723a3eb08694610424d1ae2287577a55a50c37e712c5a99c5749bcd",
}


@pytest.mark.parametrize("name", GOLDEN)
def test_the_default_definition_makes_the_same_bytes_as_before(tmp_path: Path, name: str) -> None:
    overrides, files, values = GOLDEN[name]
    config = small_config(tmp_path, **overrides)
    jobs.run(config, show_progress=False)
    assert values_digest(config.out) == values
    assert store_digest(config.out) == files
    without_checksums(config.out)  # what the tests of old stores use: the old bytes
    assert store_digest(config.out) == BEFORE_CHECKSUMS[name]


def definition_config(root: Path, name: str, **overrides: Any) -> Config:
    values = {"n_frames": 6, "n_rows": 30, "n_cols": 20, **DEFINITIONS[name], **overrides}
    return small_config(root, **values)


def check_recipes(config: Config, recipes: Any) -> None:
    """The recipes keep to the definition's rules."""
    depth = config.depth or config.n_frames
    height, width = config.height or config.dim, config.width or config.dim
    frames, rows, columns = recipes.frames, recipes.rows, recipes.columns
    assert frames.shape[1] == depth and columns.shape[1] == width
    assert (frames >= 0).all() and (frames < config.n_frames).all()
    assert (rows >= 0).all() and (rows + height <= config.n_rows).all()
    if config.frame_mode == "all":
        assert (frames == np.arange(depth)).all()
    elif config.frame_mode == "window":
        assert (np.diff(frames, axis=1) == 1).all()
    else:
        assert (np.diff(frames, axis=1) > 0).all()
    assert (rows == 0).all() if config.row_mode == "first" else len(set(rows.tolist())) > 1
    if config.column_mode == "window":
        assert (np.diff(columns, axis=1) == 1).all()
    else:
        assert all(len(set(c)) == width for c in columns.tolist())
        assert (np.diff(columns, axis=1) > 0).all() == config.sorted_columns


@pytest.mark.parametrize("name", DEFINITIONS)
def test_cubes_of_any_definition_match_the_formula(tmp_path: Path, name: str) -> None:
    config = definition_config(tmp_path, name)
    jobs.run(config, show_progress=False)
    store = open_cubes(config.out)
    recipes = store.recipes(slice(None))
    check_recipes(config, recipes)
    height = config.height or config.dim
    assert np.array_equal(store[:], expected_cubes(source_frames(config), recipes, height))
    schema = CubeSchema.from_attrs(store.attrs["plan"])
    assert schema.plan.definition == Definition(
        config.frame_mode, config.row_mode, config.column_mode, config.sorted_columns
    )
    from_plan = recipes_of(schema.plan.first, np.arange(config.cubes))
    for name_ in ("frames", "rows", "columns"):
        assert np.array_equal(getattr(recipes, name_), getattr(from_plan, name_))


def test_changing_one_choice_leaves_the_others(tmp_path: Path) -> None:
    article = definition_config(tmp_path / "a", "row-window", row_mode="first")
    windows = definition_config(tmp_path / "w", "row-window")
    for config in (article, windows):
        jobs.run(config, show_progress=False)
    a, w = (open_cubes(c.out).recipes(slice(None)) for c in (article, windows))
    assert np.array_equal(a.columns, w.columns) and np.array_equal(a.frames, w.frames)
    assert not np.array_equal(a.rows, w.rows)


@pytest.mark.parametrize("name", ["all-windows", "non-cubic"])
def test_verify_preview_and_stream_follow_the_definition(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = definition_config(tmp_path, name)
    jobs.run(config, show_progress=False)
    status = main(["verify", config.out, "--against", config.frames_store, "--sample", "40"])
    assert status == 0, capsys.readouterr().out
    stream = open_stream(config)
    assert np.array_equal(stream[:], open_cubes(config.out)[:])
    if name == "non-cubic":
        pytest.importorskip("matplotlib")
        png = tmp_path / "cube.png"
        assert main(["preview", config.out, "--cube", "2", "--png", str(png)]) == 0
        assert png.read_bytes().startswith(b"\x89PNG")


def test_verify_finds_a_cube_of_another_definition(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = definition_config(tmp_path, "row-window")
    jobs.run(config, show_progress=False)
    other = definition_config(tmp_path / "other", "row-window", row_mode="first")
    other = Config.model_validate({**other.model_dump(), "frames_store": config.frames_store})
    jobs.sample(other, show_progress=False)
    cubes = open_cubes(other.out)[:]
    zarr.open_array(config.out, path="cubes", mode="r+")[:] = cubes
    status = main(["verify", config.out, "--against", config.frames_store, "--sample", "40"])
    assert status == 1
    assert "differs from the cube cut anew" in capsys.readouterr().out


def test_verify_finds_a_recorded_row_that_is_not_the_plan_s(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = definition_config(tmp_path, "row-window")
    jobs.run(config, show_progress=False)
    rows = zarr.open_array(config.out, path="rows", mode="r+")
    rows[:] = (np.asarray(rows[:]) + 1) % 2  # still in bounds, no longer the plan's
    status = main(["verify", config.out, "--sample", str(config.cubes)])
    assert status == 1
    assert "recipe differs from the plan's" in capsys.readouterr().out


# -- out of core -----------------------------------------------------------------------

#: Frames of 6 x 30 x 20 float64 (160 bytes a row), on 2 threads: each thread's share of
#: the budget holds, in turn, the source block that each case names.
BUDGETS = {
    "bands of 12 rows of all frames": ("row-window", 2 * 6 * 12 * 160, (6, 7)),
    "blocks of 2 frames": ("frame-subset", 2 * 2 * 6 * 160, (2, 1)),
    "blocks of 3 frames by bands of 7 rows": ("all-windows", 2 * 3 * 7 * 160, (3, 1)),
    "first rows, blocks of 2 frames": ("frame-window", 2 * 2 * 6 * 160, (2, 1)),
}


@pytest.mark.parametrize("case", BUDGETS)
def test_a_budget_smaller_than_the_source_gives_the_same_store(tmp_path: Path, case: str) -> None:
    name, budget, (frame_block, row_step) = BUDGETS[case]
    whole = definition_config(tmp_path / "whole", name)
    jobs.run(whole, show_progress=False)
    banded = definition_config(
        tmp_path / "banded",
        name,
        frames_store=whole.frames_store,
        synthetic=False,
        frames=whole.frames,
        max_slab_bytes=budget,
        scheduler="threads",
        workers=2,
    )
    layout = for_workers(jobs.cut_job(banded), 10**12, 2).jobs()[0].source
    assert (layout.whole, layout.frame_block, layout.row_step) == (False, frame_block, row_step)
    jobs.sample(banded, show_progress=False)
    assert_stores_identical(whole.out, banded.out)
    assert np.array_equal(open_stream(banded)[:], open_cubes(whole.out)[:])


@pytest.mark.slow
def test_frames_larger_than_a_worker_s_memory(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    config = definition_config(tmp_path, "all-windows", n_frames=12, n_rows=300, n_cols=40)
    jobs.run(config, show_progress=False)
    frames_bytes = 12 * 300 * 40 * 8  # 1.15 MB
    # A worker's memory limit far under the frames store: the budget (half of it) makes
    # tasks work band by band. dask's own memory manager would pause or kill such a
    # worker (its process alone takes more), so it is turned off.
    off = {f"distributed.worker.memory.{k}": False for k in ("target", "spill", "pause")}
    off["distributed.worker.memory.terminate"] = False
    limit = frames_bytes // 4
    with (
        dask.config.set(off),
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            memory_limit=limit,
            dashboard_address=DASHBOARD,
            host="127.0.0.1",
        ) as cluster,
    ):
        out = str(tmp_path / "cluster.zarr")
        overrides = {"out": out, "synthetic": False, "scheduler": cluster.scheduler_address}
        cluster_config = Config.model_validate({**config.model_dump(), **overrides})
        job = for_workers(jobs.cut_job(cluster_config), limit, 1).jobs()[0]
        assert not job.source.whole and job.source.budget == limit // 2
        assert main(["sample", *cli_args(cluster_config)]) == 0
    assert_stores_identical(config.out, out)


# -- bad settings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--height", "11"], "height: 11; expected 1 to 10, since the synthetic frames are"),
        (["--width", "13"], "width: 13; expected 1 to 12, since the synthetic frames are"),
        (["--depth", "5"], "depth: 5; expected 1 to 4, since the synthetic frames are"),
        (["--depth", "2"], "depth: 2; frame_mode all stacks every frame, so depth must be 4"),
        (
            ["--column-mode", "window", "--sorted-columns"],
            "sorted_columns: true needs column_mode random",
        ),
        (["--max-slab-bytes", "100"], "more than a worker thread's share of the source budget"),
    ],
)
def test_bad_definitions_give_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    status = main([*small_args(tmp_path), *extra])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert message in err, err
    assert len(err.splitlines()) == 1 and err.startswith("daskcubes: error:")
    assert not (tmp_path / "cubes.zarr").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"height": 31}, "height: 31; expected 1 to 30"),
        ({"width": 21}, "width: 21; expected 1 to 20"),
        ({"depth": 7, "frame_mode": "subset"}, "depth: 7; expected 1 to 6"),
    ],
)
def test_a_shape_larger_than_the_frames_store_is_named(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    made = definition_config(tmp_path, "row-window")
    jobs.run(made, show_progress=False)
    config = Config.model_validate(
        {**made.model_dump(), "synthetic": False, "out": str(tmp_path / "x.zarr"), **overrides}
    )
    with pytest.raises(UserError, match=message):
        jobs.sample(config, show_progress=False)
    assert not Path(config.out).exists()


def test_a_store_started_before_definitions_were_recorded_resumes(tmp_path: Path) -> None:
    config = small_config(tmp_path)
    jobs.run(config, show_progress=False)
    group = zarr.open_group(config.out, mode="r+")
    attrs: dict[str, Any] = dict(group.attrs["daskcubes"])  # type: ignore[arg-type]
    plan = attrs["plan"]
    for name in ("height", "width", "n_frames", *Definition.__dataclass_fields__):
        del plan[name]
    attrs["plan"] = {**plan, "dim": config.dim}  # as stores recorded their shape before
    attrs["complete"] = None
    group.attrs["daskcubes"] = attrs
    jobs.sample(config, mode="resume", show_progress=False)
    assert store_digest(config.out) == GOLDEN["small"][1]
