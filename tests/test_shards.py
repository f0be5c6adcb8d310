"""Whole-shard writes give exactly the bytes zarr-python writes, and read back through zarr."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import zarr

import daskcubes.io.shards
from daskcubes import jobs
from daskcubes.core.plan import CubePlan
from daskcubes.core.volumes import DatasetPlan
from daskcubes.io.layout import create_cube_store
from daskcubes.io.schema import CubeSchema
from daskcubes.io.shards import (
    ChecksumMismatch,
    RawShards,
    ShardWriter,
    has_chunk_checksums,
    is_raw_layout,
    shard_file,
    write_shard,
)
from daskcubes.io.storage import Storage
from daskcubes.testing import assert_stores_identical
from tests.helpers import small_config

#: 10 cubes of (3, 4, 4), 4 per shard: the last shard is ragged.
PLAN = CubePlan(
    n_cubes=10,
    depth=3,
    height=4,
    width=4,
    n_frames=3,
    n_rows=5,
    n_cols=6,
    seed=0,
    task_size=4,
    shard_size=4,
)


def cube_array(
    path: Path,
    dtype: str,
    compressor: str = "none",
    write_empty_chunks: bool = False,
    checksums: bool = True,
) -> zarr.Array:
    """A cube store's ``cubes``: 10 items of (3, 4, 4), one chunk each, 4 per shard, each
    chunk with its crc32c unless ``checksums`` is off (as stores were before)."""
    group = zarr.open_group(str(path), mode="w")
    CubeSchema(DatasetPlan.of(PLAN), dtype, compressor, "-", checksums).create(group)
    array = zarr.open_array(str(path), path="cubes", mode="r+")
    return array.with_config({"write_empty_chunks": write_empty_chunks})


@pytest.mark.parametrize("checksums", [True, False], ids=["crc32c", "no-checksums"])
@pytest.mark.parametrize("write_empty_chunks", [False, True])
@pytest.mark.parametrize("dtype", ["float64", "float32", "int32"])
def test_whole_shards_match_zarr_byte_for_byte(
    tmp_path: Path, dtype: str, write_empty_chunks: bool, checksums: bool
) -> None:
    values = (np.random.default_rng(1).random((10, 3, 4, 4)) * 100).astype(dtype)
    values[5] = 0  # a chunk equal to the fill value, stored or left out as zarr does
    values[8:] = 0  # a shard of such chunks only
    ours, theirs = (
        cube_array(tmp_path / name, dtype, "none", write_empty_chunks, checksums)
        for name in ("ours", "zarr")
    )
    assert is_raw_layout(ours)  # the direct path is the one under test
    assert has_chunk_checksums(ours) == checksums
    writer = ShardWriter(ours)  # one for all the shards, as a run's tasks keep one
    for shard, start in enumerate(range(0, 10, 4)):  # the last shard is ragged
        writer.write(shard, values[start : start + 4])
        theirs[start : start + 4] = values[start : start + 4]
    assert_stores_identical(tmp_path / "ours", tmp_path / "zarr")
    assert np.array_equal(ours[:], values)
    assert not list((tmp_path / "ours").rglob("*.partial"))
    read = np.empty_like(values)
    reader = RawShards.of(theirs)
    assert reader is not None and reader.checksums == checksums
    reader.read_into(np.arange(10)[::-1], read[::-1])  # zarr's shards, through our reader
    assert np.array_equal(read, values)


@pytest.mark.parametrize("dtype", ["float64", "uint8"])
def test_large_chunks_are_checksummed_one_by_one_as_zarr_does(
    tmp_path: Path, dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunks over CHECKSUM_RUN_BYTES are written one at a time: both ways, the same bytes.
    monkeypatch.setattr(daskcubes.io.shards, "CHECKSUM_RUN_BYTES", 100)
    values = (np.random.default_rng(3).random((10, 3, 4, 4)) * 100).astype(dtype)
    ours, theirs = cube_array(tmp_path / "ours", dtype), cube_array(tmp_path / "zarr", dtype)
    for shard, start in enumerate(range(0, 10, 4)):
        write_shard(ours, shard, values[start : start + 4])
        theirs[start : start + 4] = values[start : start + 4]
    assert_stores_identical(tmp_path / "ours", tmp_path / "zarr")


def test_a_flipped_byte_is_refused_by_both_readers(tmp_path: Path) -> None:
    values = np.random.default_rng(4).random((10, 3, 4, 4))
    array = cube_array(tmp_path / "cubes", "float64")
    for shard, start in enumerate(range(0, 10, 4)):
        write_shard(array, shard, values[start : start + 4])
    path = shard_file(array, 1)
    data = bytearray(path.read_bytes())
    data[2 * (3 * 4 * 4 * 8 + 4) + 5] ^= 1  # inside cube 6, the third chunk of shard 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        array[6]
    reader = RawShards.of(array)
    assert reader is not None
    with pytest.raises(ChecksumMismatch) as caught:
        reader.read_into(np.array([0, 6]), np.empty((2, 3, 4, 4)))
    assert caught.value.item == 6
    assert np.array_equal(array[4:6], values[4:6])  # the other chunks of the shard read


def test_compressed_shards_go_through_zarr(tmp_path: Path) -> None:
    values = np.random.default_rng(2).random((10, 3, 4, 4))
    array = cube_array(tmp_path / "lz4", "float64", "lz4")
    assert not is_raw_layout(array)
    for shard, start in enumerate(range(0, 10, 4)):
        write_shard(array, shard, values[start : start + 4])
    assert np.array_equal(array[:], values)


def test_the_cube_store_takes_the_direct_path(tmp_path: Path) -> None:
    path, storage = str(tmp_path / "cubes.zarr"), Storage.of()
    schema = CubeSchema(DatasetPlan.of(PLAN), "float64", "none", "-")
    create_cube_store(path, schema, {}, "new", storage)
    assert is_raw_layout(storage.open_array(path, "cubes", mode="r+"))
    for shard in range(PLAN.n_shards):
        write_shard(storage.open_array(path, "cubes", mode="r+"), shard, np.ones((4, 3, 4, 4)))
    assert all(Path(path, schema.shard_key(shard)).is_file() for shard in range(PLAN.n_shards))


def test_a_shard_is_one_file_and_no_folder(tmp_path: Path) -> None:
    """A million tiny cubes are 62,500 shards: each is one filesystem entry, beside a
    bounded number for the recipes and the metadata (folders named c/i/0/0 were three
    more a shard)."""
    config = small_config(tmp_path, cubes=400, shard_size=1, task_size=1, dim=2)
    jobs.run(config, show_progress=False)
    store = Path(config.out)
    entries = sum(len(folders) + len(files) for _, folders, files in os.walk(store))
    assert 400 <= entries <= 400 + 16
    assert len(list((store / "cubes").iterdir())) == 400 + 1  # the shards, zarr.json
