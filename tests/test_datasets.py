"""Datasets of many volumes, with labels and channels cut alongside: every cube and its
paired cubes are the source volume at their recipe, byte for byte, on every executor,
stored and streamed; the volumes' shares hold; grids enumerate each volume in turn."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import daskcubes
from daskcubes import Batches, open_cubes, open_stream
from daskcubes.cut import cutter
from daskcubes.errors import UserError
from daskcubes.io.storage import Storage
from daskcubes.runtime.verify import verify_cube_store
from daskcubes.testing import assert_stores_identical
from tests.helpers import WINDOWS

#: Three volumes of different shapes (frames, rows, columns).
SHAPES = {"a": (10, 20, 30), "b": (12, 25, 22), "c": (9, 18, 40)}
CUBE = {"depth": 4, "height": 6, "width": 5}


def volumes(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Frames (volume ``b`` float64, the others float32: cast to the cubes' dtype) and
    int8 labels of the three volumes: class 1 in a box, 0 elsewhere."""
    rng = np.random.default_rng(seed)
    frames = {
        name: rng.random(shape).astype("float64" if name == "b" else "float32")
        for name, shape in SHAPES.items()
    }
    labels = {}
    for name, (n_frames, n_rows, n_cols) in SHAPES.items():
        label = np.zeros((n_frames, n_rows, n_cols), dtype="int8")
        label[:, n_rows // 3 :, n_cols // 2 :] = 1
        labels[name] = label
    return frames, labels


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """A frames store of the three volumes with their labels, and the volumes."""
    root = tmp_path_factory.mktemp("dataset")
    frames, labels = volumes()
    store = str(root / "frames.zarr")
    daskcubes.ingest(frames=frames, labels=labels, frames_store=store, progress=False)
    return store, {"frames": frames, "labels": labels}


def settings(store: str, out: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "frames_store": store,
        "out": str(out),
        "synthetic": False,
        "cubes": 120,
        "seed": 3,
        "dtype": "float32",
        "shard_size": 4,
        **WINDOWS,
        **CUBE,
        **overrides,
    }


def cut_by_hand(volume: np.ndarray, frames: np.ndarray, row: int, columns: np.ndarray) -> Any:
    """``volume[frames[f], row + r, columns[c]]``: the formula, read independently."""
    return volume[frames][:, row : row + CUBE["height"]][:, :, columns]


def assert_cut_at_recipes(path: str, values: dict[str, Any], names: list[str]) -> None:
    """Every cube of the store at ``path`` and its label cube are their volume's frames
    and labels at the cube's recorded recipe (frames cast to the cubes' dtype)."""
    store = open_cubes(path)
    read = store[:]
    assert set(read) == {"cubes", "labels"}
    recipes, volume_of = store.recipes(slice(None)), store.volumes(slice(None))
    for i in range(len(store)):
        name = names[int(volume_of[i])]
        where = (recipes.frames[i], int(recipes.rows[i]), recipes.columns[i])
        frames = cut_by_hand(values["frames"][name], *where).astype(store.dtype)
        assert read["cubes"][i].tobytes() == frames.tobytes(), f"cube {i}"
        assert read["labels"][i].tobytes() == cut_by_hand(values["labels"][name], *where).tobytes()
    assert read["labels"].dtype == np.int8
    assert len(np.unique(volume_of)) == len(names)  # every volume is drawn


def test_every_cube_and_its_labels_are_their_volume_at_the_recipe_on_every_executor(
    dataset: tuple[str, dict[str, Any]], tmp_path: Path, executor_settings: dict[str, Any]
) -> None:
    store, values = dataset
    oracle = tmp_path / "sync.zarr"
    daskcubes.sample(**settings(store, oracle, scheduler="sync", task_size=4), progress=False)
    assert_cut_at_recipes(str(oracle), values, list(SHAPES))
    out = tmp_path / "executor.zarr"
    daskcubes.sample(**settings(store, out, **executor_settings), progress=False)
    assert_stores_identical(oracle, out)


def test_streamed_cubes_and_labels_are_the_stored_ones(
    dataset: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    store, _ = dataset
    given = settings(store, tmp_path / "cubes.zarr")
    daskcubes.sample(**given, progress=False)
    stored = open_cubes(given["out"])[:]
    stream = open_stream(**given)
    assert set(stream.arrays) == {"cubes", "labels"}
    order = np.random.default_rng(1).permutation(len(stream))
    streamed = stream[order]
    for name in ("cubes", "labels"):
        assert streamed[name].tobytes() == stored[name][order].tobytes()
    assert stream[5]["labels"].tobytes() == stored["labels"][5].tobytes()
    seen = np.zeros(len(stream), dtype=int)
    for ids, batch in Batches(stream, 16, shuffle=True, seed=2):
        seen[ids] += 1
        for name in ("cubes", "labels"):
            assert batch[name].tobytes() == stored[name][ids].tobytes()
    assert (seen == 1).all()
    # Held within a quarter of the source: the same bytes, volume slabs dropped in turn.
    budget = sum(v.nbytes for v in dataset[1]["frames"].values()) // 4
    small = open_stream(**{**given, "max_slab_bytes": budget})
    assert small[order]["cubes"].tobytes() == stored["cubes"][order].tobytes()


@pytest.mark.parametrize("asked", ["windows", "equal", {"a": 1.0, "b": 2.0, "c": 1.0}])
def test_the_volumes_shares_hold_within_one_percent(
    dataset: tuple[str, dict[str, Any]], tmp_path: Path, asked: Any
) -> None:
    store, _ = dataset
    stream = open_stream(**settings(store, tmp_path, cubes=4000, volume_shares=asked))
    drawn = np.bincount(stream.volumes(np.arange(4000)), minlength=3) / 4000
    if asked == "windows":  # every window of the dataset equally likely
        windows = np.array(
            [(f - 3) * (r - 5) * (c - 4) for f, r, c in SHAPES.values()], dtype=float
        )
        wanted = windows / windows.sum()
    elif asked == "equal":
        wanted = np.full(3, 1 / 3)
    else:
        wanted = np.array([0.25, 0.5, 0.25])
    assert np.abs(drawn - wanted).max() < 0.01, (drawn, wanted)


def test_a_volume_too_small_for_the_cube_is_left_out_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames, _ = volumes()
    frames["tiny"] = np.ones((3, 20, 30), dtype="float32")  # 3 frames: no window of 4
    store = str(tmp_path / "frames.zarr")
    daskcubes.ingest(frames=frames, frames_store=store, progress=False)
    out = tmp_path / "cubes.zarr"
    daskcubes.sample(**settings(store, out), progress=False)
    assert "volume 'tiny' (3 x 20 x 30) holds no cube of 4 x 6 x 5: left out" in (
        capsys.readouterr().err
    )
    drawn = open_cubes(str(out)).volumes(slice(None))
    assert set(np.unique(drawn).tolist()) == {0, 1, 2}
    with pytest.raises(UserError, match="none of the 4 volumes holds a cube of this shape"):
        open_stream(**settings(store, out, depth=11, width=23))


def test_a_grid_enumerates_every_volume_s_windows_in_turn(
    dataset: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    store, values = dataset
    grid = {"frame_mode": "grid", "row_mode": "grid", "column_mode": "grid"}
    counts = [(f // 4) * (r // 6) * (c // 5) for f, r, c in SHAPES.values()]
    given = settings(store, tmp_path / "grid.zarr", cubes=sum(counts), **grid)
    daskcubes.sample(**given, progress=False)
    stored = open_cubes(given["out"])
    drawn = stored.volumes(slice(None))
    assert drawn.tolist() == [k for k, count in enumerate(counts) for _ in range(count)]
    recipes = stored.recipes(slice(None))
    first = (recipes.frames[0, 0], recipes.rows[0], recipes.columns[0, 0])
    second_volume = counts[0]
    assert first == (0, 0, 0)
    assert (recipes.frames[second_volume, 0], recipes.rows[second_volume]) == (0, 0)
    assert_cut_at_recipes(given["out"], values, list(SHAPES))
    with pytest.raises(UserError, match=f"the volumes' grids have {sum(counts)} windows"):
        open_stream(**{**given, "cubes": sum(counts) + 1})


def test_all_frames_need_volumes_of_one_frame_count(
    dataset: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    store, _ = dataset
    with pytest.raises(UserError, match="frame_mode all: the volumes have 9 to 12 frames"):
        open_stream(**settings(store, tmp_path, frame_mode="all", depth=10))
    with pytest.raises(UserError, match="depth: not set, and the volumes"):
        open_stream(**{**settings(store, tmp_path), "depth": None})


def test_label_balanced_windows_draw_from_each_volume_s_ingested_labels(
    dataset: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    store, values = dataset
    given = settings(store, tmp_path / "balanced.zarr", cubes=400, label_ratios={0: 1, 1: 1})
    daskcubes.sample(**given, progress=False)
    labels = open_cubes(given["out"])[:]["labels"]
    share_of_ones = labels.reshape(len(labels), -1).mean(axis=1)
    # A window counts for a class when at least half its voxels are of it.
    classes = np.where(share_of_ones >= 0.5, 1, 0)
    assert abs(classes.mean() - 0.5) < 0.02
    assert_cut_at_recipes(given["out"], values, list(SHAPES))
    streamed = open_stream(**given)[:]
    assert streamed["labels"].tobytes() == labels.tobytes()


def test_a_map_path_is_refused_for_many_volumes(
    dataset: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    store, _ = dataset
    with pytest.raises(UserError, match="weights: one map of one volume's shape"):
        open_stream(**settings(store, tmp_path, weights="w.zarr"))


def test_channels_are_cut_as_one_cube_with_a_channel_axis(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    channels = {
        name: [rng.random(shape).astype("float32") for _ in range(3)]
        for name, shape in SHAPES.items()
    }
    store = str(tmp_path / "frames.zarr")
    daskcubes.ingest(frames=channels, frames_store=store, progress=False)
    given = settings(store, tmp_path / "cubes.zarr", cubes=40)
    daskcubes.sample(**given, progress=False)
    cubes = open_cubes(given["out"])
    assert cubes.cubes.shape == (40, 3, 4, 6, 5)
    dims = ("cube", "channel", "frame", "row", "col")
    assert cubes.cubes.metadata.dimension_names == dims  # type: ignore[union-attr]
    read, recipes, drawn = cubes[:], cubes.recipes(slice(None)), cubes.volumes(slice(None))
    for i in range(40):
        name = list(SHAPES)[int(drawn[i])]
        where = (recipes.frames[i], int(recipes.rows[i]), recipes.columns[i])
        for c in range(3):
            assert read[i, c].tobytes() == cut_by_hand(channels[name][c], *where).tobytes()
    assert open_stream(**given)[:].tobytes() == read.tobytes()


def test_one_volume_with_labels_keeps_its_cubes_and_recipes(tmp_path: Path) -> None:
    """Labels beside one volume change nothing of its cubes: the same values and recipes
    as the frames alone, and no volumes array."""
    frames, labels = volumes()
    plain, paired = str(tmp_path / "plain.zarr"), str(tmp_path / "paired.zarr")
    daskcubes.ingest(frames=frames["a"], frames_store=plain, progress=False)
    daskcubes.ingest(frames=frames["a"], labels=labels["a"], frames_store=paired, progress=False)
    daskcubes.sample(**settings(plain, tmp_path / "p.zarr"), progress=False)
    daskcubes.sample(**settings(paired, tmp_path / "l.zarr"), progress=False)
    alone, beside = open_cubes(str(tmp_path / "p.zarr")), open_cubes(str(tmp_path / "l.zarr"))
    assert alone[:].tobytes() == beside[:]["cubes"].tobytes()
    for name in ("frames", "rows", "columns"):
        assert (
            getattr(alone.recipes(slice(None)), name).tobytes()
            == getattr(beside.recipes(slice(None)), name).tobytes()
        )
    assert "volumes" not in beside._group and "labels" in beside._group


def test_a_stream_larger_than_its_budget_shuffles_in_blocks_of_the_volumes_it_holds(
    dataset: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    store, _ = dataset
    given = settings(store, tmp_path / "cubes.zarr", cubes=240)
    daskcubes.sample(**given, progress=False)
    stored = open_cubes(given["out"])[:]
    whole = open_stream(**given)
    assert whole.resident_volumes == 3
    assert Batches(whole, 8, shuffle=True).plan.shuffle_block == 0  # over every cube
    # Room for the slabs (cubes' values and labels) of one volume, not of two.
    stream = open_stream(**{**given, "max_slab_bytes": 45_000})
    assert stream.resident_volumes == 1
    batches = Batches(stream, 8, shuffle=True, seed=4, prefetch=0, threads=1)
    assert batches.state_dict()["shuffle_block"] == 1
    volume_of, seen, mixed = stream.volumes(np.arange(240)), np.zeros(240, int), 0
    loads = cutter.slab_loads()
    for ids, batch in batches:
        seen[ids] += 1
        mixed += len(np.unique(volume_of[ids])) > 1
        assert batch["labels"].tobytes() == stored["labels"][ids].tobytes()
        assert batch["cubes"].tobytes() == stored["cubes"][ids].tobytes()
    assert (seen == 1).all()
    assert mixed <= 2  # a batch from two volumes only where it straddles two blocks
    assert cutter.slab_loads() - loads <= 2 * 3  # each volume's two arrays loaded once
    order = [ids.tolist() for ids, _ in Batches(stream, 8, shuffle=True, seed=4).epoch(1)]
    resumed = Batches(stream, 8, shuffle=True, seed=4)
    taken = [ids.tolist() for _, (ids, _) in zip(range(5), resumed.epoch(1), strict=False)]
    state = resumed.state_dict()
    again = Batches(stream, 8, shuffle=True, seed=4)
    again.load_state_dict(state)
    assert taken + [ids.tolist() for ids, _ in again.epoch(1)] == order
    with pytest.raises(UserError, match="shuffle_block 1, but this loader has 0"):
        Batches(whole, 8, shuffle=True, seed=4).load_state_dict(state)


def test_damaged_label_and_volume_chunks_are_found_and_cut_again(
    dataset: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    """verify reads every shard of every cube array and the volumes, and repair writes
    the damaged ones again: the store ends byte-identical to a clean run."""
    store, _ = dataset
    given = settings(store, tmp_path / "cubes.zarr")
    daskcubes.sample(**given, progress=False)
    clean = tmp_path / "clean.zarr"
    shutil.copytree(given["out"], clean)
    labels_shard = Path(given["out"], "labels", "c.5.0.0.0")
    raw = bytearray(labels_shard.read_bytes())
    raw[10] ^= 0xFF
    labels_shard.write_bytes(bytes(raw))
    volumes_chunk = Path(given["out"], "volumes", "c.0")
    raw = bytearray(volumes_chunk.read_bytes())
    raw[3] ^= 0xFF
    volumes_chunk.write_bytes(bytes(raw))
    report = verify_cube_store(given["out"], Storage(), store)
    assert any("array 'labels', shard labels/c.5.0.0.0 (cubes 20-23)" in p for p in report.problems)
    assert any("array 'volumes'" in p for p in report.problems), report.problems
    with pytest.raises(UserError, match="cube 20 is damaged \\(a chunk of array 'labels'"):
        open_cubes(given["out"])[20]
    mended = daskcubes.repair(given["out"])
    assert mended.shards == [5] and mended.recipe_blocks == [0]
    assert_stores_identical(given["out"], clean)
    assert not verify_cube_store(given["out"], Storage(), store).problems


def test_frames_and_the_volumes_setting_together_are_refused(tmp_path: Path) -> None:
    frames, labels = volumes()
    store = tmp_path / "frames.zarr"
    for given in ({"frames": frames}, {"frames": str(tmp_path)}, {"labels": labels}):
        with pytest.raises(UserError, match="frames \\(or labels\\) and the setting volumes"):
            daskcubes.ingest(**given, volumes=str(tmp_path), frames_store=str(store))
    assert not store.exists()
