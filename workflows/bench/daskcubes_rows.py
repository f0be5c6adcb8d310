"""daskcubes' own rows: ingest, end to end, and its write path against zarr's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr

import daskcubes
from bench.data import Setup, on_threads, scratch_path
from bench.rows import CUBES_PER_S, FILES_PER_S, Key, Row
from daskcubes import Config
from daskcubes.io.shards import write_shard


def measure_ingest(setup: Setup) -> list[Row]:
    """daskcubes ingest: parquet frame files into the frames store (writing included)."""
    result = daskcubes.ingest(setup.config(), mode="overwrite", progress=False)
    return [Row(Key.INGEST, result.rate, FILES_PER_S)]


def end_to_end_rate(setup: Setup, threads: int, cubes: int, dtype: str) -> float:
    """Cubes per second of daskcubes ``sample`` into a fresh cube store under scratch."""
    with scratch_path(setup, "cubes.zarr") as path:
        config = setup.config(out=str(path), cubes=cubes, workers=threads, dtype=dtype)
        return daskcubes.sample(config, mode="overwrite", progress=False).rate


def measure_daskcubes(setup: Setup) -> list[Row]:
    """daskcubes end to end into scratch, and its float32 row (generation is a row of
    :mod:`bench.cut_rows`, beside the cut's other stages)."""
    end_to_end = end_to_end_rate(setup, setup.threads, setup.cubes, setup.dtype)
    rows = [Row(Key.END_TO_END, end_to_end, CUBES_PER_S, Key.END_TO_END_BOUND)]
    if setup.dtype != "float32":
        rate = end_to_end_rate(setup, setup.threads, setup.cubes, "float32")
        rows.append(Row(Key.END_TO_END_FLOAT32, rate, CUBES_PER_S))
    return rows


def write_path_rate(
    setup: Setup, path: Path, write: Callable[[zarr.Array, int, np.ndarray], None]
) -> float:
    """Cubes per second writing whole shards of random cubes into a fresh cube array."""
    size = Config().shard_size
    shape = (setup.n_frames, setup.dim, setup.dim)
    n_shards = -(-setup.cubes // size)
    buffers = [np.random.default_rng(k).random((size, *shape)) for k in range(setup.threads)]
    array = zarr.create_array(
        str(path),
        shape=(n_shards * size, *shape),
        dtype="float64",
        chunks=(1, *shape),
        shards=(size, *shape),
        compressors=None,
        fill_value=0,
    )

    def work(k: int) -> None:
        for shard in range(k, n_shards, setup.threads):
            write(array, shard, buffers[k])

    return n_shards * size / on_threads(setup.threads, work)


def _zarr_write(array: zarr.Array, shard: int, values: np.ndarray) -> None:
    array[shard * len(values) : (shard + 1) * len(values)] = values


def measure_write_paths(setup: Setup) -> list[Row]:
    """Whole-shard writes of float64 cubes: daskcubes' direct path against zarr's pipelines."""
    rows = []
    for key, pipeline_path, write in [
        (Key.WRITE_DASKCUBES, None, write_shard),
        (Key.WRITE_ZARR, None, _zarr_write),
        (Key.WRITE_ZARRS, "zarrs.ZarrsCodecPipeline", _zarr_write),
    ]:
        settings = {"codec_pipeline.path": pipeline_path} if pipeline_path else {}
        with zarr.config.set(settings), scratch_path(setup, "write-path.zarr") as path:
            rows.append(Row(key, write_path_rate(setup, path, write), CUBES_PER_S, Key.IO_CEILING))
    return rows
