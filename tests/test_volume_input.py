"""A dataset of many volumes given as users keep one: a folder of volumes (``--volumes``),
a preset's list of volumes, and the one line each kind of bad input gets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
import zarr

import daskcubes
from daskcubes.cli import main
from daskcubes.config import load_config
from daskcubes.errors import UserError
from tests.helpers import REPO

xr = pytest.importorskip("xarray")
pytest.importorskip("h5netcdf")

#: A cube small enough for every volume below: 3 frames of 4 x 5, at random windows.
CUT = ["--depth", "3", "--frame-mode", "window", "--row-mode", "window", "--dim", "4"]
CUT += ["--width", "5", "--cubes", "48", "--shard-size", "4", "--seed", "11"]
CUT += ["--scheduler", "sync", "--quiet"]


def frame_files(folder: Path, values: np.ndarray, fmt: str = "parquet") -> Path:
    """``values`` (frame, row, column) as frame files ``frame_0``, ``frame_1``, ..."""
    folder.mkdir(parents=True)
    for i, frame in enumerate(values):
        table = pd.DataFrame(frame, columns=[f"c{j}" for j in range(frame.shape[1])])
        if fmt == "csv":
            table.to_csv(folder / f"frame_{i}.csv", index=False)
        else:
            table.to_parquet(folder / f"frame_{i}.parquet")
    return folder


def zarr_array(path: Path, values: np.ndarray) -> Path:
    zarr.create_array(str(path), data=values, chunks=(2, *values.shape[1:]))
    return path


def netcdf(path: Path, **variables: np.ndarray) -> Path:
    data = {name: (tuple(f"{name}_{d}" for d in "frc"), v) for name, v in variables.items()}
    xr.Dataset(data).to_netcdf(path, engine="h5netcdf")
    return path


def random_frames(shape: tuple[int, int, int], seed: int, dtype: str = "float64") -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(dtype)


def label_volume(shape: tuple[int, int, int], seed: int, dtype: str = "int8") -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) < 0.3).astype(dtype)


def dataset_folder(root: Path, labels: bool = True) -> dict[str, tuple[np.ndarray, Any]]:
    """A folder ``root/vols`` of three volumes of different shapes and kinds, named so that
    natural order differs from plain order (v2, v10, v11): frame files, a zarr array, a
    NetCDF file; with ``labels`` each a folder holding ``frames`` and ``labels.zarr``."""
    shapes = {"v2": (6, 9, 11), "v10": (5, 10, 8), "v11": (7, 8, 9)}
    volumes: dict[str, tuple[np.ndarray, Any]] = {}
    for k, (name, shape) in enumerate(shapes.items()):
        values = random_frames(shape, k)
        label = label_volume(shape, 10 + k) if labels else None
        place = root / "vols" / name if labels else root / "vols"
        place.mkdir(parents=True, exist_ok=True)
        stem = "frames" if labels else name
        if k == 0:
            frame_files(place / stem, values)
        elif k == 1:
            zarr_array(place / f"{stem}.zarr", values)
        else:
            netcdf(place / f"{stem}.nc", t=values)
        if label is not None:
            zarr_array(place / "labels.zarr", label)
        volumes[name] = (values, label)
    return volumes


def read(store: Path, name: str) -> np.ndarray:
    """The array ``name`` of the zarr group ``store``, read whole."""
    array: Any = zarr.open_group(str(store), mode="r")[name]
    return np.asarray(array[...])


def daskcubes_attrs(store: Path) -> Any:
    return zarr.open_group(str(store), mode="r").attrs["daskcubes"]


def store_args(root: Path) -> list[str]:
    return ["--frames-store", str(root / "frames.zarr"), "--out", str(root / "cubes.zarr")]


def check_cubes(out: Path, volumes: dict[str, tuple[np.ndarray, Any]]) -> None:
    """Every cube (and label cube) of the store at ``out`` equals its source volume at its
    recipe, read independently; the store names the volumes in the order given."""
    attrs = daskcubes_attrs(out)
    assert [v["name"] for v in attrs["plan"]["volumes"]] == list(volumes)
    cubes, which = read(out, "cubes"), read(out, "volumes")
    frames, rows, columns = (read(out, name) for name in ("frames", "rows", "columns"))
    names = list(volumes)
    assert set(which.tolist()) == set(range(len(names)))  # every volume holds the cube
    with_labels = volumes[names[0]][1] is not None
    labels = read(out, "labels") if with_labels else None
    for i in range(len(cubes)):
        source, label = volumes[names[which[i]]]
        at = np.ix_(frames[i], rows[i] + np.arange(cubes.shape[2]), columns[i])
        assert np.array_equal(cubes[i], source[at]), i
        if labels is not None:
            assert labels.dtype == label.dtype
            assert np.array_equal(labels[i], label[at]), i


def test_a_folder_of_volumes_with_labels_runs_end_to_end(tmp_path: Path) -> None:
    volumes = dataset_folder(tmp_path)
    args = ["run", "--volumes", str(tmp_path / "vols"), *store_args(tmp_path), *CUT]
    assert main(args) == 0
    check_cubes(tmp_path / "cubes.zarr", volumes)
    stored = tmp_path / "frames.zarr"
    for k, (values, label) in enumerate(volumes.values()):
        assert np.array_equal(read(stored, f"volumes/{k}/frames"), values)
        assert np.array_equal(read(stored, f"volumes/{k}/labels"), label)
    config = daskcubes_attrs(tmp_path / "cubes.zarr")
    assert config["config"]["volumes"] == str(tmp_path / "vols")
    assert config["config"]["synthetic"] is False


def test_python_m_workflow_run_with_volumes_generates_nothing(tmp_path: Path) -> None:
    """The shipped default preset says ``synthetic: true``: with volumes, nothing is
    generated (no frame files appear at the preset's ``frames``)."""
    volumes = dataset_folder(tmp_path, labels=False)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "daskcubes.workflow",
            "run",
            "--volumes",
            "vols",
            "--frames-store",
            "frames.zarr",
            "--out",
            "cubes.zarr",
            *CUT,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "daskcubes-data").exists()
    assert "48 cubes" in done.stdout
    check_cubes(tmp_path / "cubes.zarr", volumes)


def test_volumes_are_in_natural_order_and_named_by_their_stems(tmp_path: Path) -> None:
    dataset_folder(tmp_path, labels=False)
    assert main(["ingest", "--volumes", str(tmp_path / "vols"), *store_args(tmp_path), *CUT]) == 0
    attrs = daskcubes_attrs(tmp_path / "frames.zarr")
    assert [v["name"] for v in attrs["volumes"]] == ["v2", "v10", "v11"]


def test_frames_of_other_dtypes_are_cast_to_the_cubes_dtype(tmp_path: Path) -> None:
    volumes = {
        "a": (random_frames((5, 8, 9), 1, "float32"), None),
        "b": (random_frames((5, 8, 9), 2, "float64"), None),
        "c": ((random_frames((5, 8, 9), 3) * 100).astype("int16"), None),
    }
    for name, (values, _) in volumes.items():
        zarr_array((tmp_path / "vols").joinpath(f"{name}.zarr"), values)
    assert main(["run", "--volumes", str(tmp_path / "vols"), *store_args(tmp_path), *CUT]) == 0
    assert read(tmp_path / "cubes.zarr", "cubes").dtype == np.float64
    check_cubes(tmp_path / "cubes.zarr", volumes)


def test_a_zarr_group_with_frames_variable_stays_one_volume(tmp_path: Path) -> None:
    values = random_frames((5, 8, 9), 4)
    xr.Dataset({"t": (("f", "r", "c"), values), "u": (("f", "r", "c"), values + 1)}).to_zarr(
        tmp_path / "group.zarr", consolidated=False
    )
    args = ["ingest", "--frames", str(tmp_path / "group.zarr"), "--frames-variable", "t"]
    assert main([*args, *store_args(tmp_path), *CUT]) == 0
    assert "volumes" not in zarr.open_group(str(tmp_path / "frames.zarr"), mode="r")
    assert np.array_equal(read(tmp_path / "frames.zarr", "frames"), values)  # today's layout


def preset(root: Path, volumes: Any, **settings: Any) -> Path:
    file = root / "dataset.yaml"
    values = {"volumes": volumes, "frames_store": str(root / "frames.zarr")}
    values |= {"out": str(root / "cubes.zarr"), **settings}
    file.write_text(yaml.safe_dump(values))
    return file


def test_a_preset_lists_volumes_with_labels_arrays_and_channels(tmp_path: Path) -> None:
    shapes = {"zeta": (6, 9, 10), "alpha": (5, 8, 9)}  # kept in the order listed
    listed, expected = [], {}
    for k, (name, shape) in enumerate(shapes.items()):
        t, u = random_frames(shape, k), random_frames(shape, 5 + k)
        label, mask = label_volume(shape, k), label_volume(shape, 7 + k, "uint8")
        netcdf(tmp_path / f"{name}.nc", t=t, u=u, other=t[:, :1])
        listed.append(
            {
                "name": name,
                "frames": str(tmp_path / f"{name}.nc"),
                "labels": str(zarr_array(tmp_path / f"{name}-labels.zarr", label)),
                "arrays": {"mask": str(zarr_array(tmp_path / f"{name}-mask.zarr", mask))},
                "frames_variable": "t,u",
            }
        )
        expected[name] = (t, u, label, mask)
    file = preset(tmp_path, listed, synthetic=True)  # ignored: volumes are the data
    assert main(["run", "--config", str(file), *CUT]) == 0
    out = tmp_path / "cubes.zarr"
    attrs = daskcubes_attrs(out)
    assert [v["name"] for v in attrs["plan"]["volumes"]] == ["zeta", "alpha"]
    cubes, which = read(out, "cubes"), read(out, "volumes")
    assert cubes.shape == (48, 2, 3, 4, 5)  # (cube, channel, frame, row, column)
    frames, rows, columns = (read(out, name) for name in ("frames", "rows", "columns"))
    labels, mask = read(out, "labels"), read(out, "mask")
    assert (labels.dtype, mask.dtype) == (np.int8, np.uint8)
    for i in range(len(cubes)):
        t, u, label, mask_volume = expected[list(expected)[which[i]]]
        at = np.ix_(frames[i], rows[i] + np.arange(4), columns[i])
        assert np.array_equal(cubes[i, 0], t[at]) and np.array_equal(cubes[i, 1], u[at])
        assert np.array_equal(labels[i], label[at]) and np.array_equal(mask[i], mask_volume[at])


def test_the_api_takes_volumes_as_a_setting(tmp_path: Path) -> None:
    volumes = dataset_folder(tmp_path)
    settings: dict[str, Any] = {
        "volumes": str(tmp_path / "vols"),
        "frames_store": str(tmp_path / "frames.zarr"),
    }
    daskcubes.ingest(**settings, progress=False)
    daskcubes.sample(
        **settings,
        out=str(tmp_path / "cubes.zarr"),
        depth=3,
        frame_mode="window",
        row_mode="window",
        dim=4,
        width=5,
        cubes=48,
        shard_size=4,
        seed=11,
        scheduler="sync",
        progress=False,
    )
    check_cubes(tmp_path / "cubes.zarr", volumes)


# -- bad input: one line each, naming the volume and the file; nothing complete ----------


def _label_shape(root: Path) -> tuple[str, ...]:
    dataset_folder(root)
    shutil.rmtree(root / "vols" / "v10" / "labels.zarr")
    zarr_array(root / "vols" / "v10" / "labels.zarr", label_volume((5, 10, 7), 0))
    return ("volume 'v10'", "labels", "v10/labels.zarr", "(5, 10, 7)", "(5, 10, 8)")


def _labels_without_frames(root: Path) -> tuple[str, ...]:
    dataset_folder(root)
    (root / "vols" / "v3").mkdir()
    zarr_array(root / "vols" / "v3" / "labels.zarr", label_volume((5, 10, 8), 0))
    return ("volume 'v3'", "vols/v3", "labels.zarr", "no frames")


def _one_name_twice(root: Path) -> tuple[str, ...]:
    dataset_folder(root, labels=False)
    zarr_array(root / "vols" / "v2.zarr", random_frames((5, 8, 9), 0))
    return ("volume 'v2'", "given twice", "vols/v2'", "vols/v2.zarr")


def _channels_of_other_shapes(root: Path) -> tuple[str, ...]:
    (root / "vols").mkdir()
    netcdf(root / "vols" / "a.nc", t=random_frames((5, 8, 9), 0), u=random_frames((5, 8, 9), 1))
    netcdf(root / "vols" / "b.nc", t=random_frames((5, 8, 9), 2), u=random_frames((5, 8, 8), 3))
    return ("volume 'b'", "channel 'u'", "vols/b.nc", "(5, 8, 8)", "--frames-variable", "t,u")


def _paired_dtypes(root: Path) -> tuple[str, ...]:
    dataset_folder(root)
    labels = root / "vols" / "v11" / "labels.zarr"
    shutil.rmtree(labels)
    zarr_array(labels, label_volume((7, 8, 9), 0, "int16"))
    return ("volume 'v11'", "labels", "v11/labels.zarr", "int16", "int8", "volume 'v2'")


def _empty_folder(root: Path) -> tuple[str, ...]:
    (root / "vols").mkdir()
    (root / "vols" / ".hidden").write_text("")
    return ("volumes", "vols'", "empty folder")


def _neither(root: Path) -> tuple[str, ...]:
    dataset_folder(root, labels=False)
    (root / "vols" / "notes.txt").write_text("not a volume")
    return ("vols/notes.txt", "not a volume", "zarr")


def _a_folder_of_nothing(root: Path) -> tuple[str, ...]:
    dataset_folder(root, labels=False)
    (root / "vols" / "v4").mkdir()
    (root / "vols" / "v4" / "notes.txt").write_text("")
    return ("volume 'v4'", "vols/v4", "no frames")


def _one_store(root: Path) -> tuple[str, ...]:
    zarr_array(root / "vols", random_frames((5, 8, 9), 0))
    return ("volumes", "vols'", "not a folder of volumes", "--frames")


def _frame_files_beside_frames(root: Path) -> tuple[str, ...]:
    dataset_folder(root)
    frame_files(root / "vols" / "v10" / "more", random_frames((5, 10, 8), 0))
    (root / "vols" / "v10" / "stray.parquet").write_bytes(b"")
    return ("volume 'v10'", "v10/stray.parquet", "frames.zarr")


def _no_folder(root: Path) -> tuple[str, ...]:
    return ("volumes", "vols'", "no such folder")


BAD_FOLDERS = {
    "no-folder": _no_folder,
    "label-shape": _label_shape,
    "labels-without-frames": _labels_without_frames,
    "one-name-twice": _one_name_twice,
    "channels-of-other-shapes": _channels_of_other_shapes,
    "paired-dtypes": _paired_dtypes,
    "empty-folder": _empty_folder,
    "neither": _neither,
    "folder-of-nothing": _a_folder_of_nothing,
    "one-store": _one_store,
    "frame-files-beside-frames": _frame_files_beside_frames,
}


def assert_nothing_complete(root: Path) -> None:
    store = root / "frames.zarr" / "zarr.json"
    if store.exists():
        assert not json.loads(store.read_text())["attributes"]["daskcubes"].get("complete")
    assert not (root / "cubes.zarr").exists()


@pytest.mark.parametrize("case", BAD_FOLDERS)
def test_a_bad_folder_of_volumes_is_one_line_naming_volume_and_file(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = BAD_FOLDERS[case](tmp_path)
    variable = ["--frames-variable", "t,u"] if "t,u" in expected else []
    expected = tuple(e for e in expected if e not in ("--frames-variable", "t,u"))
    args = ["run", "--volumes", str(tmp_path / "vols"), *variable, *store_args(tmp_path), *CUT]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("daskcubes: error: ") and err.count("\n") == 1, err
    for part in expected:
        assert part in err, (part, err)
    assert_nothing_complete(tmp_path)
    # The same through the API: a UserError of the same line.
    settings: dict[str, Any] = {
        "volumes": str(tmp_path / "vols"),
        "frames_store": str(tmp_path / "frames.zarr"),
    }
    with pytest.raises(UserError) as raised:
        daskcubes.ingest(**settings, frames_variable=",".join(variable[1:]) or None, progress=False)
    assert str(raised.value) == err.removeprefix("daskcubes: error: ").strip()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--frames", "x"], "--frames and --volumes both name the data"),
        (["--synthetic"], "--synthetic generates frames, but --volumes names the data"),
    ],
)
def test_volumes_with_frames_or_synthetic_on_the_command_line_is_refused(
    args: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset_folder(tmp_path, labels=False)
    assert main(["run", "--volumes", str(tmp_path / "vols"), *args, *store_args(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "frames.zarr").exists() and not (tmp_path / "x").exists()


def test_generate_with_volumes_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", "--volumes", str(tmp_path), "--frames", str(tmp_path / "f")]) == 2
    assert main(["generate", "--config", str(preset(tmp_path, str(tmp_path)))]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "--frames and --volumes" in err[0]
    assert err[1] == (
        "daskcubes: error: generate: writes synthetic frames into frames, but volumes are "
        "given (the dataset to ingest); leave volumes out to generate frames"
    )


def _listed(root: Path) -> list[dict[str, Any]]:
    a = zarr_array(root / "a.zarr", random_frames((5, 8, 9), 0))
    b = zarr_array(root / "b.zarr", random_frames((6, 8, 9), 1))
    la = zarr_array(root / "la.zarr", label_volume((5, 8, 9), 0))
    lb = zarr_array(root / "lb.zarr", label_volume((6, 8, 9), 1))
    return [
        {"name": "a", "frames": str(a), "labels": str(la)},
        {"name": "b", "frames": str(b), "labels": str(lb)},
    ]


BAD_PRESETS: dict[str, tuple[Any, tuple[str, ...]]] = {
    "unknown-key": (
        lambda v: [v[0], {**v[1], "lables": v[1].pop("labels")}],
        ("setting 'volumes'", "volume 1 'b'", "unknown key 'lables'", "known keys: name, frames"),
    ),
    "labels-without-frames": (
        lambda v: [v[0], {"name": "b", "labels": v[1]["labels"]}],
        ("setting 'volumes'", "volume 'b' has no frames", "lb.zarr"),
    ),
    "one-name-twice": (
        lambda v: [v[0], {**v[1], "name": "a"}],
        ("setting 'volumes'", "volume 'a': given twice", "a.zarr", "b.zarr"),
    ),
    "no-name": (
        lambda v: [v[0], {"frames": v[1]["frames"]}],
        ("setting 'volumes'", "volume 1", "name", "required"),
    ),
    "not-a-mapping": (
        lambda v: [v[0], v[1]["frames"]],
        ("setting 'volumes'", "volume 1 is", "b.zarr", "expected a mapping"),
    ),
    "empty-list": (lambda v: [], ("setting 'volumes'", "expected a folder of volumes")),
    "label-shape": (
        lambda v: [v[0], {**v[1], "labels": v[0]["labels"]}],
        ("volume 'b'", "labels", "la.zarr", "(5, 8, 9)", "(6, 8, 9)"),
    ),
    "labels-in-arrays": (
        lambda v: [v[0], {**v[1], "arrays": {"labels": v[1]["labels"]}}],
        ("setting 'volumes'", "volume 'b'", "labels given in arrays"),
    ),
    "missing-frames-file": (
        lambda v: [v[0], {**v[1], "frames": v[1]["frames"] + "-gone"}],
        ("volume 'b'", "b.zarr-gone"),
    ),
}


@pytest.mark.parametrize("case", BAD_PRESETS)
def test_a_bad_list_of_volumes_in_a_preset_is_one_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    change, expected = BAD_PRESETS[case]
    file = preset(tmp_path, change(_listed(tmp_path)))
    assert main(["run", "--config", str(file), *CUT]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for part in expected:
        assert part in err, (part, err)
    assert_nothing_complete(tmp_path)


def test_a_good_list_of_volumes_loads(tmp_path: Path) -> None:
    config = load_config(preset(tmp_path, _listed(tmp_path)))
    assert config.volumes is not None and not isinstance(config.volumes, str)
    assert [v.name for v in config.volumes] == ["a", "b"]
    assert config.volumes[0].pairs == {"labels": str(tmp_path / "la.zarr")}
    assert config.synthetic is False


# -- info -------------------------------------------------------------------------------


def test_info_names_the_volumes_of_a_frames_store_and_a_cube_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset_folder(tmp_path)
    assert main(["run", "--volumes", str(tmp_path / "vols"), *store_args(tmp_path), *CUT]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "frames.zarr")]) == 0
    frames = capsys.readouterr().out.splitlines()
    assert "  3 volumes; channels frames; paired arrays labels (int8)" in frames
    vols = tmp_path / "vols"
    assert f"    0 'v2': 6 x 9 x 11, frames float64 from 6 files in '{vols}/v2/frames'" in frames
    assert f"    1 'v10': 5 x 10 x 8, frames float64 from '{vols}/v10/frames.zarr'" in frames
    assert f"    2 'v11': 7 x 8 x 9, frames float64 from '{vols}/v11/frames.nc' variable 't'" in (
        frames
    )
    assert f"      labels int8 from '{vols}/v11/labels.zarr'" in frames
    assert main(["info", str(tmp_path / "cubes.zarr")]) == 0
    cubes = capsys.readouterr().out
    assert "  cut from: 3 volumes, shares windows" in cubes
    for line in ("    0 'v2': 6 x 9 x 11, share", "    1 'v10': 5 x 10 x 8, share", "    2 'v11'"):
        assert line in cubes
    assert "  paired arrays: labels (int8)" in cubes


def test_the_shipped_volumes_preset_runs_on_data_at_its_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    place = tmp_path / "daskcubes-data" / "volumes"
    shapes = {"scan-1": (12, 40, 36), "scan-2": (10, 36, 40)}
    expected = {}
    for k, (name, shape) in enumerate(shapes.items()):
        values = random_frames(shape, k)
        labels = np.zeros(shape, dtype="int8")
        labels[:, :, : shape[2] // 2] = 1
        expected[name] = (values.astype("float32"), labels)
    frame_files(place / "scan-1" / "frames", expected["scan-1"][0])
    zarr_array(place / "scan-1" / "labels.zarr", expected["scan-1"][1])
    netcdf(place / "scan-2.nc", image=expected["scan-2"][0])
    zarr_array(place / "scan-2-labels.zarr", expected["scan-2"][1])
    assert main(["run", "--config", "volumes", "--scheduler", "sync", "--quiet"]) == 0
    check_cubes(place / "cubes.zarr", expected)
    labels = read(place / "cubes.zarr", "labels")
    assert 0.4 < (labels == 1).mean() < 0.6  # label_ratios 1:1


# -- the same checks in Python: mappings of volume names to paths or arrays --------------


def _api_dataset(root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    frames = {
        "a": str(zarr_array(root / "a.zarr", random_frames((5, 8, 9), 0))),
        "b": str(zarr_array(root / "b.zarr", random_frames((6, 8, 9), 1, "float32"))),
    }
    labels = {
        "a": str(zarr_array(root / "la.zarr", label_volume((5, 8, 9), 0))),
        "b": str(zarr_array(root / "lb.zarr", label_volume((6, 8, 9), 1))),
    }
    return frames, labels


API_CASES: dict[str, tuple[Any, tuple[str, ...]]] = {
    "label-shape": (
        lambda f, la, r: (f, {**la, "b": la["a"]}),
        ("volume 'b'", "labels", "la.zarr", "(5, 8, 9)", "(6, 8, 9)"),
    ),
    "labels-without-frames": (
        lambda f, la, r: (f, {**la, "c": la["a"]}),
        ("labels: volume 'c' has no frames",),
    ),
    "channels-of-other-shapes": (
        lambda f, la, r: (
            {**f, "b": [random_frames((6, 8, 9), 2), random_frames((6, 8, 8), 3)]},
            {},
        ),
        ("volume 'b'", "channel '1'", "(6, 8, 8)"),
    ),
    "paired-dtypes": (
        lambda f, la, r: (
            f,
            {**la, "b": str(zarr_array(r / "lb16.zarr", label_volume((6, 8, 9), 1, "int16")))},
        ),
        ("volume 'b'", "labels", "lb16.zarr", "int16", "int8", "volume 'a'"),
    ),
}


@pytest.mark.parametrize("case", API_CASES)
def test_bad_volumes_in_python_are_one_line(case: str, tmp_path: Path) -> None:
    change, expected = API_CASES[case]
    frames, labels = change(*_api_dataset(tmp_path), tmp_path)
    with pytest.raises(UserError) as raised:
        daskcubes.ingest(
            frames=frames,
            labels=labels or None,
            frames_store=str(tmp_path / "frames.zarr"),
            progress=False,
        )
    message = str(raised.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, (part, message)
    assert not (tmp_path / "frames.zarr").exists()


def test_a_preset_s_bad_volumes_are_the_same_line_in_python(tmp_path: Path) -> None:
    listed = _listed(tmp_path)
    file = preset(tmp_path, [listed[0], {**listed[1], "labels": listed[0]["labels"]}])
    with pytest.raises(UserError, match=r"^volume 'b': paired array 'labels' \(labels '.*la"):
        daskcubes.ingest(str(file), progress=False)
    file = preset(tmp_path, [listed[0], {**listed[1], "lables": "x"}])
    with pytest.raises(UserError, match=r"setting 'volumes': volume 1 'b': unknown key 'lables'"):
        daskcubes.ingest(str(file), progress=False)


def test_frames_of_other_dtypes_mix_in_python_and_paired_arrays_keep_theirs(
    tmp_path: Path,
) -> None:
    frames, labels = _api_dataset(tmp_path)  # float64 and float32 frames, int8 labels
    daskcubes.ingest(
        frames=frames, labels=labels, frames_store=str(tmp_path / "frames.zarr"), progress=False
    )
    attrs = daskcubes_attrs(tmp_path / "frames.zarr")
    assert attrs["pairs"] == {"labels": "int8"}
    assert [v["arrays"]["frames"]["dtype"] for v in attrs["volumes"]] == ["float64", "float32"]
