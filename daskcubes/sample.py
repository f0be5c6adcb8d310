"""Sampling tasks: each writes one batch of cubes (one shard) or one block of recipes.

A task carries only a small :class:`SampleJob` and an integer; the source slab is
loaded from the frames store once per worker process and kept (never put into the
graph), and each task writes whole chunks, so no locks are needed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import zarr
from dask.base import tokenize
from dask.typing import Key

from daskcubes.config import Config
from daskcubes.errors import UserError
from daskcubes.kernels import gather_cubes, make_slab
from daskcubes.plan import CubePlan, batch_size_for, recipes
from daskcubes.progress import Finishes, Work
from daskcubes.shards import write_shard
from daskcubes.storage import Storage
from daskcubes.store import FramesStoreInfo, frames_store_info


@dataclass(frozen=True)
class SampleJob:
    """Everything a sampling task needs, small enough to travel with every task."""

    frames: FramesStoreInfo
    out: str
    plan: CubePlan
    dtype: str
    storage: Storage


def sample_job(config: Config) -> SampleJob:
    """The sampling job for ``config``: the plan checked against the frames store."""
    storage = Storage.of(config.storage_options)
    frames = frames_store_info(config.frames_store, storage)
    depth, n_rows, n_cols = frames.shape
    cube_nbytes = depth * config.dim**2 * np.dtype(config.dtype).itemsize
    plan = CubePlan(
        n_cubes=config.cubes,
        dim=config.dim,
        depth=depth,
        n_rows=n_rows,
        n_cols=n_cols,
        seed=config.seed,
        batch_size=batch_size_for(config.batch_size, config.cubes, config.shard_size, cube_nbytes),
        shard_size=config.shard_size,
    )
    return SampleJob(frames=frames, out=config.out, plan=plan, dtype=config.dtype, storage=storage)


def check_slab_fits(job: SampleJob, worker_memory: int) -> None:
    """Refuse a job whose slab would not fit in a worker's memory, before any task runs."""
    depth, _, n_cols = job.frames.shape
    dim = job.plan.dim
    nbytes = depth * dim * n_cols * np.dtype(job.dtype).itemsize
    if nbytes > worker_memory:
        raise UserError(
            f"frames store '{job.frames.path}': the slab of {depth} frames x {dim} rows x "
            f"{n_cols} columns ({job.dtype}) is {nbytes / 1e6:.1f} MB, more than a worker's "
            f"memory ({worker_memory / 1e6:.1f} MB); use workers with more memory, "
            "fewer frames or columns, or a smaller dim"
        )


_slab_lock = threading.Lock()


# One slab per process: a job on other frames replaces it rather than holding two.
@lru_cache(maxsize=1)
def _cached_slab(frames: FramesStoreInfo, storage: Storage, dim: int, dtype: str) -> np.ndarray:
    first_rows = storage.open_array(frames.path, "frames", mode="r")[:, :dim, :]
    return make_slab(np.asarray(first_rows), dtype)


def worker_slab(frames: FramesStoreInfo, storage: Storage, dim: int, dtype: str) -> np.ndarray:
    """The slab of ``frames`` for cubes of edge ``dim``, loaded once per process."""
    with _slab_lock:  # threads of one worker wait for the first load rather than repeat it
        return _cached_slab(frames, storage, dim, dtype)


def load_slab(job: SampleJob) -> None:
    """Load the job's slab into this process (returns nothing, so that it stays there)."""
    worker_slab(job.frames, job.storage, job.plan.dim, job.dtype)


@lru_cache(maxsize=8)
def _open_output(job: SampleJob, name: str) -> zarr.Array:
    # Keyed by the whole job: a store replaced at the same path is opened afresh. Empty
    # chunks are written too, so that every chunk of a finished store exists.
    array = job.storage.open_array(job.out, name, mode="r+")
    return array.with_config({"write_empty_chunks": True})


_buffers = threading.local()


def _batch_buffer(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """A per-thread output buffer, reused so that each batch does not page-fault anew."""
    buffer = getattr(_buffers, "array", None)
    if buffer is None or buffer.dtype != dtype or buffer.size < int(np.prod(shape)):
        buffer = _buffers.array = np.empty(shape, dtype=dtype)
    return buffer.reshape(-1)[: int(np.prod(shape))].reshape(shape)


def make_cube_batch(job: SampleJob, start: int, stop: int) -> np.ndarray:
    """Cubes ``start .. stop`` as an array view into a per-thread buffer."""
    plan = job.plan
    slab = worker_slab(job.frames, job.storage, plan.dim, job.dtype)
    out = _batch_buffer((stop - start, *plan.cube_shape), job.dtype)
    return gather_cubes(slab, recipes(plan, start, stop).columns, out)


def write_cube_batch(job: SampleJob, batch: int) -> None:
    """Cut batch ``batch`` and write it as whole shards of ``cubes``."""
    start, stop = job.plan.batch_bounds(batch)
    cubes = make_cube_batch(job, start, stop)
    size = job.plan.shard_size
    for offset in range(0, stop - start, size):
        write_shard(
            _open_output(job, "cubes"), (start + offset) // size, cubes[offset : offset + size]
        )


def write_recipe_block(job: SampleJob, block: int) -> None:
    """Write the recipes of one block of cubes into ``columns``, ``rows`` and ``frames``."""
    start, stop = job.plan.recipe_block_bounds(block)
    batch = recipes(job.plan, start, stop)
    _open_output(job, "columns")[start:stop] = batch.columns
    _open_output(job, "rows")[start:stop] = batch.rows
    _open_output(job, "frames")[start:stop] = batch.frames


def sample_tasks(job: SampleJob, shards_done: set[int], recipes_done: set[int]) -> Work:
    """Tasks for the recipe blocks and the batches of cubes not yet done.

    Each task finishes ``("recipes", [block])`` or ``("shards", [shard, ...])``. A batch
    with any unfinished shard is redone whole; rewriting a finished shard writes the same
    bytes.
    """
    token = tokenize(job)
    plan = job.plan
    graph: dict[Key, Any] = {}
    finishes: Finishes = {}
    for block in range(plan.n_recipe_blocks):
        if block not in recipes_done:
            key = (f"recipes-{token}", block)
            graph[key] = (write_recipe_block, job, block)
            finishes[key] = ("recipes", [block])
    for batch in range(plan.n_batches):
        shards = plan.batch_shards(batch)
        if not set(shards) <= shards_done:
            key = (f"sample-{token}", batch)
            graph[key] = (write_cube_batch, job, batch)
            finishes[key] = ("shards", list(shards))
    return Work(graph, finishes)
