"""Reading cube stores: batches, shuffling, sharding, prefetch, stream mode, interop."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr

from daskcubes import jobs, open_cubes, open_stream
from daskcubes.config import Config
from daskcubes.errors import UserError
from daskcubes.train.batches import Batches, BatchPlan, prefetched
from daskcubes.train.reader import CubeStore
from tests.helpers import small_config


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """A small stored run: 37 cubes (a ragged last shard of 4), 5 frames."""
    config = small_config(tmp_path_factory.mktemp("stored"), cubes=37)
    jobs.run(config, show_progress=False)
    return config


@pytest.fixture
def store(stored: Config) -> CubeStore:
    return open_cubes(stored.out)


def zarr_cubes(config: Config) -> np.ndarray:
    return np.asarray(zarr.open_array(config.out, path="cubes", mode="r")[:])


# -- the reader ----------------------------------------------------------------------


def test_reads_in_any_order_agree_with_zarr(store: CubeStore, stored: Config) -> None:
    expected = zarr_cubes(stored)
    order = np.random.default_rng(0).permutation(len(store))
    assert np.array_equal(store[order], expected[order])
    assert np.array_equal(store[[5, 5, -1]], expected[[5, 5, -1]])
    assert np.array_equal(store[3:30:7], expected[3:30:7])
    assert np.array_equal(store[-2], expected[-2])


def test_compressed_stores_are_read_through_zarr(tmp_path: Path, stored: Config) -> None:
    config = small_config(tmp_path, cubes=37, compressor="lz4", synthetic=False)
    config = config.model_copy(update={"frames_store": stored.frames_store})
    jobs.sample(config, show_progress=False)
    store = open_cubes(config.out)
    assert store._raws["cubes"] is None
    order = np.random.default_rng(1).permutation(len(store))
    expected = zarr_cubes(stored)
    assert np.array_equal(store[order], expected[order])
    assert np.array_equal(store[3:9], expected[3:9])  # a run: one zarr request


def test_to_dask_and_to_xarray(store: CubeStore, stored: Config) -> None:
    expected = zarr_cubes(stored)
    lazy = store.to_dask()
    assert lazy.chunks[0][0] == stored.shard_size
    assert np.array_equal(lazy.compute(), expected)
    cubes = store.to_xarray()
    assert cubes.dims == ("cube", "frame", "row", "col")
    picked = cubes.isel(cube=[7, 2])
    assert np.array_equal(picked.values, expected[[7, 2]])
    recipes = store.recipes([7, 2])
    assert np.array_equal(picked["columns"].values, recipes.columns)
    assert np.array_equal(picked["frames"].values, recipes.frames)
    assert np.array_equal(picked["rows"].values, recipes.rows)


# -- interoperability ----------------------------------------------------------------


def test_xarray_open_zarr_agrees(store: CubeStore, stored: Config) -> None:
    xr = pytest.importorskip("xarray")
    dataset = xr.open_zarr(stored.out, consolidated=False)
    assert dataset["cubes"].dims == ("cube", "frame", "row", "col")
    assert np.array_equal(dataset["cubes"].values, store[:])
    assert np.array_equal(dataset["columns"].values, store.recipes(slice(None)).columns)


def test_dask_from_zarr_agrees(store: CubeStore, stored: Config) -> None:
    import dask.array as da

    lazy = da.from_zarr(stored.out, component="cubes")
    assert np.array_equal(lazy.compute(), store[:])


def test_zarr_python_agrees(store: CubeStore, stored: Config) -> None:
    group = zarr.open_group(stored.out, mode="r")
    cubes, rows = group["cubes"], group["rows"]
    assert isinstance(cubes, zarr.Array) and isinstance(rows, zarr.Array)
    assert np.array_equal(np.asarray(cubes[:]), store[:])
    assert np.array_equal(np.asarray(rows[:]), store.recipes(slice(None)).rows)


def test_tensorstore_zarr3_agrees(store: CubeStore, stored: Config) -> None:
    ts = pytest.importorskip("tensorstore")
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{stored.out}/cubes"}}
    array = ts.open(spec, read=True).result()
    assert np.array_equal(array.read().result(), store[:])


# -- batches -------------------------------------------------------------------------


def epoch_indices(plan: BatchPlan, epoch: int) -> np.ndarray:
    return np.concatenate(plan.batches(epoch))


def test_shuffled_epochs_hold_every_cube_once_in_a_new_order() -> None:
    plan = BatchPlan(n_cubes=37, batch_size=5, shuffle=True, seed=3)
    orders = [epoch_indices(plan, epoch) for epoch in range(3)]
    for order in orders:
        assert sorted(order) == list(range(37))
    assert not np.array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[1], orders[2])
    again = BatchPlan(n_cubes=37, batch_size=5, shuffle=True, seed=3)
    assert np.array_equal(epoch_indices(again, 1), orders[1])
    other_seed = BatchPlan(n_cubes=37, batch_size=5, shuffle=True, seed=4)
    assert not np.array_equal(epoch_indices(other_seed, 1), orders[1])


def test_batch_sizes_and_drop_last() -> None:
    plan = BatchPlan(n_cubes=37, batch_size=5)
    assert [len(b) for b in plan.batches(0)] == [5] * 7 + [2]
    assert np.array_equal(epoch_indices(plan, 0), np.arange(37))
    dropped = BatchPlan(n_cubes=37, batch_size=5, drop_last=True)
    assert [len(b) for b in dropped.batches(0)] == [5] * 7
    assert len(dropped) == 7 and len(plan) == 8


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_ranks_together_see_every_cube_once_per_epoch(world_size: int) -> None:
    for epoch in range(2):
        seen = np.concatenate(
            [
                epoch_indices(
                    BatchPlan(37, 4, shuffle=True, seed=1, rank=r, world_size=world_size), epoch
                )
                for r in range(world_size)
            ]
        )
        assert sorted(seen) == list(range(37))


@pytest.mark.parametrize(
    "settings",
    [{"batch_size": 0}, {"world_size": 0}, {"rank": 2, "world_size": 2}, {"rank": -1}],
)
def test_bad_batch_settings_are_named(settings: dict) -> None:
    values = {"n_cubes": 10, "batch_size": 2, **settings}
    with pytest.raises(UserError, match=next(iter(settings))):
        BatchPlan(**values)


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_batches_hold_the_cubes_they_name(store: CubeStore, prefetch: int) -> None:
    batches = Batches(store, 6, shuffle=True, seed=2, prefetch=prefetch)
    expected = store[:]
    first = [(b.indices.copy(), b.cubes) for b in batches]
    second = [b.indices for b in batches]  # the next loop is the next epoch
    for indices, cubes in first:
        assert np.array_equal(cubes, expected[indices])
    assert sorted(np.concatenate([i for i, _ in first])) == list(range(len(store)))
    assert not np.array_equal(np.concatenate(second), np.concatenate([i for i, _ in first]))
    assert np.array_equal(
        np.concatenate([b.indices for b in batches.epoch(1)]), np.concatenate(second)
    )


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "daskcubes-prefetch"]


def test_prefetch_reads_ahead_and_stops_when_the_consumer_stops() -> None:
    produced: list[int] = []

    def items() -> Iterator[int]:
        for k in range(100):
            produced.append(k)
            yield k

    stream = prefetched(items(), depth=2)
    assert next(stream) == 0
    # The producer runs ahead of the consumer, bounded by the queue.
    while len(produced) < 3:
        threading.Event().wait(0.01)
    assert len(produced) <= 4
    stream.close()
    assert not prefetch_threads()
    assert len(produced) <= 4


def test_prefetch_raises_the_producers_exception() -> None:
    def items() -> Iterator[int]:
        yield 1
        raise OSError("disk gone")

    consumed = []
    with pytest.raises(OSError, match="disk gone"):
        for item in prefetched(items(), depth=2):
            consumed.append(item)
    assert consumed == [1]
    assert not prefetch_threads()


def test_breaking_out_of_batches_stops_the_prefetch_thread(store: CubeStore) -> None:
    for batch in Batches(store, 2, prefetch=2):
        assert len(batch.indices) == 2
        break
    assert not prefetch_threads()


# -- stream mode ---------------------------------------------------------------------


def test_stream_is_byte_identical_to_the_stored_run(stored: Config) -> None:
    stream = open_stream(stored)
    stored_cubes = zarr_cubes(stored)
    assert len(stream) == len(stored_cubes)
    assert stream.dtype == stored_cubes.dtype
    assert stream[:].tobytes() == stored_cubes.tobytes()
    order = np.random.default_rng(5).permutation(len(stream))
    assert stream[order].tobytes() == stored_cubes[order].tobytes()
    for batch in Batches(stream, 8, shuffle=True, seed=1):
        assert batch.cubes.tobytes() == stored_cubes[batch.indices].tobytes()


def test_stream_float32_matches_a_float32_store(tmp_path: Path, stored: Config) -> None:
    config = small_config(tmp_path, dtype="float32", seed=11, cubes=9, synthetic=False)
    config = config.model_copy(update={"frames_store": stored.frames_store})
    jobs.sample(config, show_progress=False)
    assert open_stream(config)[:].tobytes() == zarr_cubes(config).tobytes()


def test_stream_needs_a_complete_frames_store(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="frames store"):
        open_stream(small_config(tmp_path))
