"""The whole pipeline on small shapes: cubes checked against the source files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dask.typing import Key

from daskcubes import jobs, open_cubes
from daskcubes.config import Config
from daskcubes.io.schema import CubeSchema
from daskcubes.runtime import executors
from daskcubes.runtime.executors import MOST_IN_BATCH, LocalExecutor
from daskcubes.testing import assert_stores_identical, expected_cubes
from tests.helpers import small_config, source_frames


def run(config: Config) -> None:
    jobs.run(config, show_progress=False)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"seed": 0, "frame_format": "csv"},
        {"seed": 123, "n_rows": 8, "n_cols": 30, "dim": 8},  # dim == rows < cols
        {"seed": 5, "n_rows": 30, "n_cols": 9, "dim": 4, "dtype": "float32"},
        {"seed": 9, "n_frames": 1, "cubes": 3, "shard_size": 2, "task_size": 2},
        {"seed": 11, "n_frames": 12, "cubes": 17},  # ragged last batch; frame_10 after frame_2
    ],
)
def test_cubes_match_the_source_files(tmp_path: Path, overrides: dict) -> None:
    config = small_config(tmp_path, **overrides)
    run(config)
    store = open_cubes(config.out)
    recipes = store.recipes(slice(None))
    frames = source_frames(config)
    assert len(store) == config.cubes
    assert store.cube_shape == (config.n_frames, config.dim, config.dim)
    assert store.dtype == np.dtype(config.dtype)
    assert np.array_equal(store[:], expected_cubes(frames, recipes).astype(config.dtype))


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """A single-threaded run whose stores every executor must equal byte for byte."""
    config = small_config(tmp_path_factory.mktemp("oracle"))
    run(config)
    return config


def test_every_executor_writes_the_oracles_bytes(
    oracle: Config, executor_settings: dict[str, Any], tmp_path: Path
) -> None:
    config = small_config(tmp_path, **executor_settings)
    run(config)
    assert_stores_identical(oracle.frames_store, config.frames_store)
    assert_stores_identical(oracle.out, config.out)


def test_csv_and_parquet_frames_give_the_same_cubes(tmp_path: Path) -> None:
    parquet = small_config(tmp_path / "parquet", frame_format="parquet")
    csv = small_config(tmp_path / "csv", frame_format="csv")
    run(parquet)
    run(csv)
    assert np.array_equal(open_cubes(parquet.out)[:], open_cubes(csv.out)[:])
    assert_stores_identical(parquet.out, csv.out)


def test_store_layout_and_provenance(config: Config) -> None:
    run(config)
    store = open_cubes(config.out)
    attrs = store.attrs
    assert attrs["complete"]["cubes"] == config.cubes
    assert attrs["seed"] == config.seed
    assert attrs["config"]["dim"] == config.dim
    assert attrs["frames_store"]["path"] == config.frames_store
    assert set(attrs["versions"]) >= {"daskcubes", "dask", "zarr", "numpy"}
    assert store.cubes.metadata.dimension_names == ("cube", "frame", "row", "col")  # type: ignore[union-attr]
    schema = CubeSchema.from_attrs(attrs["plan"])
    shard_files = [Path(config.out, schema.shard_key(s)) for s in range(schema.plan.n_shards)]
    assert all(file.is_file() for file in shard_files)
    assert len(shard_files) == config.cubes // config.shard_size


def test_reader_indexing(config: Config) -> None:
    run(config)
    store = open_cubes(config.out)
    everything = store[:]
    assert np.array_equal(store[3], everything[3])
    assert np.array_equal(store[-1], everything[-1])
    assert np.array_equal(store[[5, 1, 5]], everything[[5, 1, 5]])
    assert np.array_equal(store[2:9:3], everything[2:9:3])
    assert np.array_equal(store.recipes([4]).columns[0], store.recipes(slice(None)).columns[4])
    with pytest.raises(IndexError):
        store[len(store)]


def _never(*args: object) -> None:
    raise AssertionError("a task nobody asked for ran")


def test_executors_run_only_the_tasks_asked_for(
    executor_settings: dict[str, Any], tmp_path: Path
) -> None:
    done: list[object] = []
    graph: dict[Key, Any] = {"wanted": (len, [1, 2]), "unwanted": (_never,)}
    with jobs.executor_for(small_config(tmp_path, **executor_settings)) as executor:
        executor.run(graph, ["wanted"], done.append)
    assert done == ["wanted"]


def test_executors_report_each_of_many_tasks_once(
    executor_settings: dict[str, Any], tmp_path: Path
) -> None:
    """Many tasks, as a local scheduler hands them to its workers in batches."""
    graph: dict[Key, Any] = {("task", i): (len, [i]) for i in range(3000)}
    done: list[Key] = []
    with jobs.executor_for(small_config(tmp_path, **executor_settings)) as executor:
        executor.run(graph, list(graph), done.append)
    assert sorted(done) == sorted(graph)


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_local_schedulers_hand_many_small_tasks_over_in_batches(
    scheduler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One task a hand-off cost the scheduler's thread a wake-up and the GIL both ways
    per task: twice the time of a million tiny cubes' tasks."""
    given: dict[int, int] = {}

    def get(dsk: dict[Key, Any], keys: list[Key], **options: Any) -> None:
        given[len(keys)] = options["chunksize"]

    monkeypatch.setitem(executors._LOCAL_GETS, scheduler, get)
    for n_tasks in (3, 300, 3000, 62_500):
        graph: dict[Key, Any] = {("task", i): (len, [i]) for i in range(n_tasks)}
        LocalExecutor(scheduler, workers=2).run(graph, list(graph), lambda key: None)
    # At least BATCHES_PER_WORKER batches a worker; at most MOST_IN_BATCH tasks a batch.
    assert given == {3: 1, 300: 1, 3000: 11, 62_500: MOST_IN_BATCH}


def test_a_store_replaced_in_the_same_process_gets_its_own_codecs(tmp_path: Path) -> None:
    """Overwriting a store with other codecs in one process writes the new codecs' bytes:
    the arrays a process keeps open belong to one run, not to a path."""
    config = small_config(tmp_path, max_slab_bytes=10**6)  # the same job, whatever is free
    jobs.run(config, show_progress=False)
    jobs.sample(config.model_copy(update={"compressor": "lz4"}), "overwrite", False)
    fresh = config.model_copy(update={"compressor": "lz4", "out": str(tmp_path / "fresh.zarr")})
    jobs.sample(fresh, show_progress=False)
    assert_stores_identical(fresh.out, config.out)


def test_a_store_s_group_holds_its_attributes_from_its_first_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every write of a store's group metadata names it a daskcubes store: a reader (a
    resume, another host's ``--resume``, the tests' record polls) that comes between the
    group's creation and its attributes found an empty group, ``not written by daskcubes``."""
    import json

    from zarr.storage import LocalStore

    written: list[tuple[str, dict[str, Any]]] = []
    set_ = LocalStore.set

    async def recorded(self: LocalStore, key: str, value: Any) -> None:
        if key == "zarr.json":
            written.append((str(self.root), json.loads(value.to_bytes())))
        await set_(self, key, value)

    monkeypatch.setattr(LocalStore, "set", recorded)
    config = small_config(tmp_path)
    jobs.run(config, show_progress=False)
    groups = [attrs for root, attrs in written if attrs.get("node_type") == "group"]
    stores = {root for root, attrs in written if attrs.get("node_type") == "group"}
    assert {Path(root).name for root in stores} >= {Path(config.out).name}
    assert len(stores) >= 2 and groups  # the frames store's and the cube store's
    for attrs in groups:
        assert "daskcubes" in attrs.get("attributes", {}), attrs
