"""Frames from arrays: a zarr array, a variable of a store xarray wrote or of a NetCDF file,
and arrays in Python, give the cubes of the same values written as frame files; bad arrays
get one line naming the array."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

import daskcubes
from daskcubes.cli import main
from daskcubes.testing import store_files

N_FRAMES, N_ROWS, N_COLS = 4, 10, 12


@pytest.fixture
def values() -> np.ndarray:
    return np.random.default_rng(3).random((N_FRAMES, N_ROWS, N_COLS))


def write_parquet(folder: Path, values: np.ndarray) -> None:
    folder.mkdir()
    for i, frame in enumerate(values):
        columns = [f"c{j}" for j in range(frame.shape[1])]
        pd.DataFrame(frame, columns=columns).to_parquet(folder / f"frame_{i}.parquet")


def cut(root: Path, name: str, **ingest_settings: Any) -> Path:
    """Ingest frames (``ingest_settings``) into ``root/NAME.frames.zarr`` and cut cubes from
    them into ``root/NAME.cubes.zarr``."""
    settings: dict[str, Any] = {
        "frames_store": str(root / f"{name}.frames.zarr"),
        "out": str(root / f"{name}.cubes.zarr"),
        "synthetic": False,
        "cubes": 12,
        "dim": 5,
        "seed": 4,
        "shard_size": 4,
        "task_size": 4,
        "scheduler": "sync",
    }
    frames = ingest_settings.pop("frames_values", ingest_settings.pop("frames", None))
    daskcubes.ingest(None, frames=frames, progress=False, **{**settings, **ingest_settings})
    daskcubes.sample(None, progress=False, **settings)
    return root / f"{name}.cubes.zarr"


def frames_attrs(path: Path) -> dict[str, Any]:
    return dict(zarr.open_group(path, mode="r").attrs["daskcubes"])  # type: ignore[arg-type]


def same_cubes(a: Path, b: Path) -> bool:
    return store_files(a) == store_files(b)


@pytest.fixture
def from_parquet(tmp_path: Path, values: np.ndarray) -> Path:
    write_parquet(tmp_path / "frames", values)
    return cut(tmp_path, "parquet", frames=str(tmp_path / "frames"))


def test_frames_array_is_the_frame_files_lazily(tmp_path: Path, values: np.ndarray) -> None:
    write_parquet(tmp_path / "frames", values)
    array = daskcubes.frames_array(str(tmp_path / "frames"))
    assert isinstance(array, da.Array)
    assert array.chunks == ((1,) * N_FRAMES, (N_ROWS,), (N_COLS,))
    assert np.array_equal(array.compute(scheduler="sync"), values)


def test_frames_array_checks_values_as_ingest_does(tmp_path: Path, values: np.ndarray) -> None:
    values[2, 3, 4] = np.nan
    write_parquet(tmp_path / "frames", values)
    array = daskcubes.frames_array(str(tmp_path / "frames"))  # metadata only: no error yet
    with pytest.raises(daskcubes.UserError, match=r"frame_2.parquet: value nan at row 3"):
        array.compute(scheduler="sync")


def test_a_zarr_array_gives_the_cubes_of_its_values(
    tmp_path: Path, values: np.ndarray, from_parquet: Path
) -> None:
    for version in (2, 3):
        path = tmp_path / f"v{version}.zarr"
        # Chunked across frames and rows, unlike the frames store.
        array = zarr.create_array(
            path, shape=values.shape, chunks=(3, 4, 5), dtype="f8", zarr_format=version
        )
        array[:] = values
        assert same_cubes(cut(tmp_path, f"v{version}", frames=str(path)), from_parquet)


def test_a_variable_xarray_wrote_gives_the_same_cubes(
    tmp_path: Path, values: np.ndarray, from_parquet: Path
) -> None:
    dataset = xr.Dataset(
        {
            "temperature": (("time", "y", "x"), values),
            "mask": (("y", "x"), np.ones((N_ROWS, N_COLS))),
        }
    )
    dataset.chunk({"time": 2}).to_zarr(tmp_path / "xr.zarr", consolidated=False)
    dataset.to_netcdf(tmp_path / "data.nc", engine="h5netcdf")
    by_zarr = cut(tmp_path, "xr", frames=str(tmp_path / "xr.zarr"), frames_variable="temperature")
    assert same_cubes(by_zarr, from_parquet)
    # The only 3-D variable is taken when none is named.
    assert same_cubes(cut(tmp_path, "nc", frames=str(tmp_path / "data.nc")), from_parquet)
    attrs = daskcubes.open_cubes(str(by_zarr)).attrs
    assert attrs["frames_store"]["path"].endswith("xr.frames.zarr")
    recorded = frames_attrs(tmp_path / "nc.frames.zarr")
    assert recorded["sources"] == [{"array": str(tmp_path / "data.nc"), "variable": "temperature"}]


def test_arrays_in_python_give_the_same_cubes(
    tmp_path: Path, values: np.ndarray, from_parquet: Path
) -> None:
    dask_values = da.from_array(values, chunks=(2, 5, 12))
    data_array = xr.DataArray(values, dims=("t", "y", "x"), name="t2m")
    for name, frames in {"dask": dask_values, "numpy": values, "xarray": data_array}.items():
        assert same_cubes(cut(tmp_path, name, frames_values=frames), from_parquet)


def test_the_sample_command_on_a_store_xarray_wrote_says_to_ingest_it(
    tmp_path: Path, values: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    xr.Dataset({"t": (("a", "b", "c"), values)}).to_zarr(tmp_path / "xr.zarr", consolidated=False)
    args = ["sample", "--frames-store", str(tmp_path / "xr.zarr"), "--out", str(tmp_path / "c")]
    assert main([*args, "--quiet"]) == 2
    assert "ingest it first (--frames PATH" in capsys.readouterr().err


def test_ingest_of_an_array_resumes_and_refuses_other_values(
    tmp_path: Path, values: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "a.zarr"
    zarr.create_array(path, shape=values.shape, chunks=(1, N_ROWS, N_COLS), dtype="f8")[:] = values
    args = ["ingest", "--frames", str(path), "--frames-store", str(tmp_path / "f.zarr"), "--quiet"]
    assert main(args) == 0
    assert main([*args, "--resume"]) == 0
    assert "was already complete" in capsys.readouterr().out
    other = tmp_path / "b.zarr"
    zarr.create_array(other, shape=(3, N_ROWS, N_COLS), dtype="f8")[:] = values[:3]
    assert main(["ingest", "--frames", str(other), *args[3:], "--resume"]) == 2
    assert "Resume needs the same settings" in capsys.readouterr().err


def bad_arrays(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """Command lines of bad array input, each with what its one line must say."""
    flat = tmp_path / "flat.zarr"
    zarr.create_array(flat, shape=(4, 5), dtype="f8")[:] = 1.0
    text = tmp_path / "text.zarr"
    zarr.create_array(text, shape=(2, 3, 4), dtype=str)[:] = "x"
    nan = tmp_path / "nan.zarr"
    with_nan = np.ones((2, 3, 4))
    with_nan[1, 2, 3] = np.nan
    zarr.create_array(nan, shape=(2, 3, 4), dtype="f8")[:] = with_nan
    xr.Dataset({"t": (("a", "b", "c"), with_nan)}).to_netcdf(tmp_path / "d.nc", engine="h5netcdf")
    return {
        "2-D": ([str(flat)], rf"frames '{flat}': has 2 dimensions \(4, 5\); expected 3"),
        "strings": ([str(text)], rf"frames '{text}': holds .* values; expected numbers"),
        "NaN": ([str(nan)], rf"frames '{nan}': value nan at frame 1, row 2, column 3"),
        "variable": (
            [str(tmp_path / "d.nc"), "--frames-variable", "pressure"],
            r"frames '.*d.nc': no variable 'pressure'; it holds t",
        ),
    }


@pytest.mark.parametrize("case", ["2-D", "strings", "NaN", "variable"])
def test_bad_arrays_get_one_line_and_no_complete_store(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    frames, expected = bad_arrays(tmp_path)[case]
    store = tmp_path / "f.zarr"
    args = ["ingest", "--frames", *frames, "--frames-store", str(store), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert re.search(expected, err), err
    if store.exists():
        assert not frames_attrs(store)["complete"]


@pytest.mark.slow
def test_a_zarr_array_on_object_storage(
    tmp_path: Path, values: np.ndarray, from_parquet: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("s3fs")
    from daskcubes.io.storage import Storage
    from daskcubes.testing import s3_server

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    with s3_server() as endpoint:
        options = {"endpoint_url": endpoint}
        storage = Storage.of(options)
        storage.filesystem("s3://frames")[0].mkdir("frames")
        store = storage.zarr_store("s3://frames/t.zarr", read_only=False)
        zarr.create_array(store, shape=values.shape, chunks=(2, 5, 6), dtype="f8")[:] = values
        cubes = cut(tmp_path, "s3", frames="s3://frames/t.zarr", storage_options=options)
    assert same_cubes(cubes, from_parquet)
