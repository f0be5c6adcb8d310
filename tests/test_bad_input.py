"""Bad input gets one clear line naming the file or setting, a non-zero exit, and no
store marked complete."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from daskcubes.cli import main

Writer = Callable[[Path], None]


def frame(rows: int = 6, cols: int = 5, seed: int = 0) -> pd.DataFrame:
    values = np.random.default_rng(seed).random((rows, cols))
    return pd.DataFrame(values, columns=[f"c{j}" for j in range(cols)])


def good_frames(folder: Path, n: int = 3, fmt: str = "parquet") -> None:
    folder.mkdir(exist_ok=True)
    for i in range(n):
        data = frame(seed=i)
        if fmt == "parquet":
            data.to_parquet(folder / f"frame_{i}.parquet")
        else:
            data.to_csv(folder / f"frame_{i}.csv", index=False)


def ingest(root: Path, *extra: str) -> list[str]:
    return [
        "ingest",
        *("--frames", str(root / "frames"), "--frames-store", str(root / "frames.zarr")),
        *("--quiet", *extra),
    ]


def complete(store: Path) -> bool:
    meta = store / "zarr.json"
    return meta.exists() and bool(
        json.loads(meta.read_text())["attributes"]["daskcubes"]["complete"]
    )


def expect_error(capsys: pytest.CaptureFixture[str], argv: list[str], *expected: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("daskcubes: error: ")
    for text in expected:
        assert text in err, err
    return err


def zero_bytes(folder: Path) -> None:
    (folder / "frame_1.parquet").write_bytes(b"")


def truncated(folder: Path) -> None:
    path = folder / "frame_1.parquet"
    path.write_bytes(path.read_bytes()[:-100])


def not_parquet(folder: Path) -> None:
    (folder / "frame_1.parquet").write_text("c0,c1\n1,2\n")


def text_column(folder: Path) -> None:
    data = frame().astype({"c2": str})
    data.to_parquet(folder / "frame_1.parquet")


def more_rows(folder: Path) -> None:
    frame(rows=7).to_parquet(folder / "frame_1.parquet")


def other_names(folder: Path) -> None:
    frame().rename(columns={"c3": "x"}).to_parquet(folder / "frame_1.parquet")


def other_order(folder: Path) -> None:
    data = frame()
    data[list(reversed(data.columns))].to_parquet(folder / "frame_1.parquet")


@pytest.mark.parametrize(
    ("spoil", "expected"),
    [
        (zero_bytes, ["frame_1.parquet", "empty file"]),
        (truncated, ["frame_1.parquet", "not a readable parquet file"]),
        (not_parquet, ["frame_1.parquet", "not a readable parquet file"]),
        (text_column, ["frame_1.parquet", "column 'c2'", "expected numbers"]),
        (more_rows, ["frame_1.parquet", "has 7 rows; expected 6"]),
        (other_names, ["frame_1.parquet", "columns named differently"]),
        (other_order, ["frame_1.parquet", "same columns in a different order"]),
    ],
)
def test_bad_parquet_frames(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spoil: Writer, expected: list[str]
) -> None:
    good_frames(tmp_path / "frames")
    spoil(tmp_path / "frames")
    expect_error(capsys, ingest(tmp_path), *expected)
    assert not (tmp_path / "frames.zarr").exists()  # checked before any output


def ragged(folder: Path) -> None:
    path = folder / "frame_2.csv"
    lines = path.read_text().splitlines()
    lines[3] += ",0.5"
    path.write_text("\n".join(lines) + "\n")


def words(folder: Path) -> None:
    path = folder / "frame_2.csv"
    path.write_text(path.read_text().replace("\n0.", "\nabc0.", 1))


def nan(folder: Path) -> None:
    data = frame(seed=2)
    data.iloc[4, 3] = np.nan
    data.to_csv(folder / "frame_2.csv", index=False)


def infinite(folder: Path) -> None:
    data = frame(seed=2)
    data.iloc[1, 0] = np.inf
    data.to_csv(folder / "frame_2.csv", index=False)


@pytest.mark.parametrize(
    ("spoil", "expected"),
    [
        (ragged, ["frame_2.csv", "cannot read frame values", "Expected 5 columns"]),
        (words, ["frame_2.csv", "cannot read frame values"]),
        (nan, ["frame_2.csv", "value nan at row 4, column 'c3'", "allow_nonfinite"]),
        (infinite, ["frame_2.csv", "value inf at row 1, column 'c0'"]),
    ],
)
def test_bad_csv_values_leave_no_complete_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spoil: Writer, expected: list[str]
) -> None:
    good_frames(tmp_path / "frames", fmt="csv")
    spoil(tmp_path / "frames")
    expect_error(capsys, ingest(tmp_path, "--scheduler", "sync"), *expected)
    assert not complete(tmp_path / "frames.zarr")


def test_nonfinite_values_pass_when_allowed(tmp_path: Path) -> None:
    good_frames(tmp_path / "frames", fmt="csv")
    nan(tmp_path / "frames")
    assert main(ingest(tmp_path, "--allow-nonfinite")) == 0
    assert complete(tmp_path / "frames.zarr")


def test_no_matching_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "frames").mkdir()
    expect_error(capsys, ingest(tmp_path), "frames", "no frame files found")
    pattern = str(tmp_path / "nothing*.parquet")
    argv = ["ingest", "--frames", pattern, "--frames-store", str(tmp_path / "f.zarr")]
    expect_error(capsys, argv, pattern, "no frame files found")


def sample(root: Path, *extra: str) -> list[str]:
    return [
        "sample",
        *("--frames-store", str(root / "frames.zarr"), "--out", str(root / "cubes.zarr")),
        *("--quiet", *extra),
    ]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--dim", "7"], ["dim: 7; expected 1 to 5", "6 rows x 5 columns"]),
        (["--cubes", "0"], ["setting 'cubes'", "greater than or equal to 1"]),
        (["--cubes", "-3"], ["setting 'cubes'"]),
        (["--dtype", "int8"], []),  # argparse's own one-line usage error
        (
            ["--batch-size", "3", "--shard-size", "2", "--dim", "2"],
            ["task_size: 3", "multiple of shard_size"],
        ),
    ],
)
def test_bad_sampling_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], expected: list[str]
) -> None:
    good_frames(tmp_path / "frames")
    assert main(ingest(tmp_path)) == 0
    if expected:
        expect_error(capsys, sample(tmp_path, *extra), *expected)
    else:
        with pytest.raises(SystemExit) as exit_:
            main(sample(tmp_path, *extra))
        assert exit_.value.code == 2
    assert not (tmp_path / "cubes.zarr").exists()


def test_frames_store_missing_or_incomplete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expect_error(capsys, sample(tmp_path), "frames.zarr", "no zarr store there")
    good_frames(tmp_path / "frames", fmt="csv")
    ragged(tmp_path / "frames")
    main(ingest(tmp_path))
    capsys.readouterr()
    expect_error(capsys, sample(tmp_path), "frames.zarr", "incomplete")


def test_unwritable_output_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good_frames(tmp_path / "frames")
    assert main(ingest(tmp_path)) == 0
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    argv = [*sample(tmp_path, "--dim", "3"), "--out", str(blocker / "cubes.zarr")]
    expect_error(capsys, argv, str(blocker / "cubes.zarr"), "cannot")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cubes: 4\ncubez: 5\n", ["unknown setting 'cubez'"]),
        ("dim: many\n", ["setting 'dim'", "'many'"]),
        ("scheduler: mpi\n", ["setting 'scheduler': expected sync, threads", "'mpi'"]),
        ("- a\n- b\n", ["expected a mapping of settings"]),
        ("dim: [\n", ["not valid YAML"]),
    ],
)
def test_bad_config_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: list[str]
) -> None:
    preset = tmp_path / "preset.yaml"
    preset.write_text(text)
    expect_error(capsys, ["run", "--config", str(preset)], str(preset), *expected)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    (tmp_path / "frames").mkdir()
    with pytest.raises(Exception, match="no frame files found"):
        main([*ingest(tmp_path), "--debug"])


def stored_frames(root: Path) -> np.ndarray:
    return np.asarray(zarr.open_array(str(root / "frames.zarr"), path="frames", mode="r")[:])


def write_csv(data: pd.DataFrame, path: Path) -> None:
    data.to_csv(path.with_suffix(".csv"))  # pandas' default: the index as a first column


def write_parquet(data: pd.DataFrame, path: Path) -> None:
    data.to_parquet(path.with_suffix(".parquet"))  # the index named in its pandas metadata


@pytest.mark.parametrize("write", [write_csv, write_parquet])
@pytest.mark.parametrize(
    "index",
    [
        pd.RangeIndex(6),  # a new DataFrame's
        pd.RangeIndex(10, 16),  # rows 10-15 of a larger frame
        pd.Index([3, 0, 5, 1, 4, 2]),  # a shuffled frame
        pd.MultiIndex.from_arrays([[0, 0, 0, 1, 1, 1], list("abcabc")]),
    ],
    ids=["range", "range-from-10", "shuffled", "multiindex"],
)
def test_a_pandas_index_is_not_frame_data(
    tmp_path: Path, write: Callable[[pd.DataFrame, Path], None], index: pd.Index
) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    frames = [frame(seed=i).set_index(index) for i in range(2)]
    for i, data in enumerate(frames):
        write(data, folder / f"frame_{i}")
    assert main(ingest(tmp_path)) == 0
    assert np.array_equal(stored_frames(tmp_path), np.stack([data.to_numpy() for data in frames]))


def test_csv_frames_with_and_without_pandas_index_agree(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    frame(seed=0).to_csv(folder / "frame_0.csv", index=False)
    frame(seed=1).to_csv(folder / "frame_1.csv")
    assert main(ingest(tmp_path)) == 0
    assert np.array_equal(stored_frames(tmp_path), np.stack([frame(seed=i) for i in range(2)]))


def test_a_named_index_is_a_column_like_any_other(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    data = frame().rename_axis("row")
    data.to_csv(folder / "frame_0.csv")  # header "row,c0,...": nothing says it is an index
    assert main(ingest(tmp_path)) == 0
    assert np.array_equal(stored_frames(tmp_path)[0], data.reset_index().to_numpy())
