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

from daskcubes.kernels import gather_cubes, make_slab
from daskcubes.plan import CubePlan, recipes
from daskcubes.store import FramesStoreInfo


@dataclass(frozen=True)
class SampleJob:
    """Everything a sampling task needs, small enough to travel with every task."""

    frames: FramesStoreInfo
    out: str
    plan: CubePlan
    dtype: str


_slab_lock = threading.Lock()


@lru_cache(maxsize=2)
def _cached_slab(frames_path: str, fingerprint: str, dim: int, dtype: str) -> np.ndarray:
    first_rows = zarr.open_array(frames_path, path="frames", mode="r")[:, :dim, :]
    return make_slab(np.asarray(first_rows), dtype)


def worker_slab(frames: FramesStoreInfo, dim: int, dtype: str) -> np.ndarray:
    """The slab of ``frames`` for cubes of edge ``dim``, loaded once per process."""
    with _slab_lock:  # threads of one worker wait for the first load rather than repeat it
        return _cached_slab(frames.path, frames.fingerprint, dim, dtype)


@lru_cache(maxsize=8)
def _open_output(job: SampleJob, name: str) -> zarr.Array:
    # Keyed by the whole job: a store replaced at the same path is opened afresh.
    return zarr.open_array(job.out, path=name, mode="r+")


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
    slab = worker_slab(job.frames, plan.dim, job.dtype)
    out = _batch_buffer((stop - start, *plan.cube_shape), job.dtype)
    return gather_cubes(slab, recipes(plan, start, stop).columns, out)


def write_cube_batch(job: SampleJob, batch: int) -> None:
    """Cut batch ``batch`` and write it as one whole shard of ``cubes``."""
    start, stop = job.plan.batch_bounds(batch)
    _open_output(job, "cubes")[start:stop] = make_cube_batch(job, start, stop)


def write_recipe_block(job: SampleJob, block: int) -> None:
    """Write the recipes of one block of cubes into ``columns``, ``rows`` and ``frames``."""
    start, stop = job.plan.recipe_block_bounds(block)
    batch = recipes(job.plan, start, stop)
    _open_output(job, "columns")[start:stop] = batch.columns
    _open_output(job, "rows")[start:stop] = batch.rows
    _open_output(job, "frames")[start:stop] = batch.frames


def sample_graph(job: SampleJob) -> dict[Key, Any]:
    """One task per recipe block and per batch of cubes, keyed ``(name, index)``."""
    token = tokenize(job)
    graph: dict[Key, Any] = {
        (f"recipes-{token}", k): (write_recipe_block, job, k)
        for k in range(job.plan.n_recipe_blocks)
    }
    graph.update(
        {(f"sample-{token}", b): (write_cube_batch, job, b) for b in range(job.plan.n_batches)}
    )
    return graph
