"""Sampling tasks: each writes one batch of cubes (one shard) or one block of recipes.

A task carries only a small :class:`SampleJob` and an integer. The source values cubes
are cut from are held within a memory budget (:class:`SourceLayout`): when every cube's
rows of every frame fit, they are loaded from the frames store once per worker process
and kept (never put into the graph); otherwise each task works through its cubes one
block of source (some frames, a band of rows) at a time. Each task writes whole chunks,
so no locks are needed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import psutil
import zarr
from dask.base import tokenize
from dask.typing import Key

from daskcubes.config import Config
from daskcubes.errors import UserError
from daskcubes.kernels import gather_cubes, slab_layer
from daskcubes.plan import CubePlan, Definition, Recipes, batch_size_for, recipes
from daskcubes.progress import Finishes, Work
from daskcubes.shards import write_shard
from daskcubes.storage import Storage
from daskcubes.store import FramesStoreInfo, frames_store_info

#: The share of a worker's memory that source values may take by default (the rest is
#: for the batches being cut and written, and for Python, numpy and zarr themselves).
DEFAULT_BUDGET_SHARE = 0.5


@dataclass(frozen=True)
class SourceLayout:
    """Which source values a worker holds at once, within ``budget`` bytes.

    ``whole``: all the rows any cube may need (``0 .. rows_needed``) of every frame, one
    slab per worker process shared by its threads. Otherwise each of ``threads`` threads
    holds one block at a time: ``frame_block`` consecutive frames by one *row band*.
    Band ``k`` holds rows ``k * row_step .. k * row_step + row_step + height - 1``, so
    the rows of a cube whose first row is ``r`` lie in band ``r // row_step``.
    """

    budget: int
    threads: int
    whole: bool
    rows_needed: int
    frame_block: int
    row_step: int


def source_layout(
    plan: CubePlan, frames_path: str, dtype: str, budget: int, threads: int
) -> SourceLayout:
    """The layout of source values for ``plan`` within ``budget`` bytes per worker."""
    row_bytes = plan.n_cols * np.dtype(dtype).itemsize
    height, n_frames = plan.height, plan.n_frames
    rows_needed = height if plan.definition.row_mode == "first" else plan.n_rows
    starts = rows_needed - height + 1  # first rows a cube may have
    if n_frames * rows_needed * row_bytes <= budget:
        return SourceLayout(budget, threads, True, rows_needed, n_frames, starts)
    share = budget // max(threads, 1)
    band_rows = share // (n_frames * row_bytes)
    if band_rows >= height:  # bands of whole frames
        step = min(band_rows - height + 1, starts)
        return SourceLayout(budget, threads, False, rows_needed, n_frames, step)
    frame_block = share // (height * row_bytes)
    if frame_block < 1:
        raise UserError(
            f"frames store '{frames_path}': a cube's {height} rows x {plan.n_cols} columns "
            f"of one frame ({dtype}) take {_size(height * row_bytes)}, more than a worker "
            f"thread's share of the source budget ({_size(share)}: {_size(budget)} over "
            f"{threads} threads; max_slab_bytes sets it, by default half a worker's memory); "
            "use a larger max_slab_bytes, workers with more memory, fewer threads per "
            "worker, or a smaller height"
        )
    return SourceLayout(budget, threads, False, rows_needed, frame_block, 1)


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 10**6 else f"{nbytes} bytes"


@dataclass(frozen=True)
class SampleJob:
    """Everything a sampling task needs, small enough to travel with every task."""

    frames: FramesStoreInfo
    out: str
    plan: CubePlan
    dtype: str
    storage: Storage
    source: SourceLayout


def source_budget(max_slab_bytes: int | None, worker_memory: int) -> int:
    """Bytes of source values a worker may hold: ``max_slab_bytes``, or by default a
    share of the worker's memory."""
    return max_slab_bytes or int(worker_memory * DEFAULT_BUDGET_SHARE)


def available_memory() -> int:
    """This machine's available memory."""
    return int(psutil.virtual_memory().available)


def sample_job(config: Config, worker_memory: int | None = None, threads: int = 1) -> SampleJob:
    """The sampling job for ``config``: the plan checked against the frames store, the
    source laid out for workers of ``worker_memory`` bytes (default: this machine's
    available memory) and ``threads`` threads."""
    storage = Storage.of(config.storage_options, config.storage_retry_seconds)
    frames = frames_store_info(config.frames_store, storage)
    n_frames, n_rows, n_cols = frames.shape
    if config.height is config.width is None and not 1 <= config.dim <= min(n_rows, n_cols):
        raise UserError(  # named as set: the plan knows only height and width
            f"dim: {config.dim}; expected 1 to {min(n_rows, n_cols)}, since frames have "
            f"{n_rows} rows and {n_cols} columns"
        )
    depth = config.depth or n_frames
    height, width = config.height or config.dim, config.width or config.dim
    cube_nbytes = depth * height * width * np.dtype(config.dtype).itemsize
    plan = CubePlan(
        n_cubes=config.cubes,
        depth=depth,
        height=height,
        width=width,
        n_frames=n_frames,
        n_rows=n_rows,
        n_cols=n_cols,
        seed=config.seed,
        batch_size=batch_size_for(config.batch_size, config.cubes, config.shard_size, cube_nbytes),
        shard_size=config.shard_size,
        definition=Definition(
            config.frame_mode, config.row_mode, config.column_mode, config.sorted_columns
        ),
    )
    memory = available_memory() if worker_memory is None else worker_memory
    budget = source_budget(config.max_slab_bytes, memory)
    source = source_layout(plan, frames.path, config.dtype, budget, threads)
    return SampleJob(frames, config.out, plan, config.dtype, storage, source)


def load_slab(
    source: FramesStoreInfo, storage: Storage, dtype: str, frames: range, rows: range
) -> np.ndarray:
    """``(len(frames), n_cols, len(rows))`` source values as ``dtype``, read one frame at
    a time so that only the slab and one frame's rows are held at once."""
    array = storage.open_array(source.path, "frames", mode="r")
    slab = np.empty((len(frames), source.shape[2], len(rows)), dtype=dtype)
    for layer, frame in enumerate(frames):
        slab_layer(np.asarray(array[frame, rows.start : rows.stop, :]), slab[layer])
    return slab


_slab_lock = threading.Lock()


# One slab per process: a job on other frames replaces it rather than holding two.
@lru_cache(maxsize=1)
def _cached_slab(frames: FramesStoreInfo, storage: Storage, dtype: str, rows: int) -> np.ndarray:
    return load_slab(frames, storage, dtype, range(frames.shape[0]), range(rows))


def worker_slab(job: SampleJob) -> np.ndarray:
    """The whole slab of a ``whole`` layout, loaded once per process."""
    with _slab_lock:  # threads of one worker wait for the first load rather than repeat it
        return _cached_slab(job.frames, job.storage, job.dtype, job.source.rows_needed)


_blocks = threading.local()


def _block_slab(job: SampleJob, frames: range, rows: range) -> np.ndarray:
    """One block of source, kept by the thread until it needs another one."""
    key = (job.frames, job.dtype, frames, rows)
    if getattr(_blocks, "key", None) != key:
        _blocks.key = _blocks.slab = None  # let go of the last block before loading
        _blocks.slab = load_slab(job.frames, job.storage, job.dtype, frames, rows)
        _blocks.key = key
    slab: np.ndarray = _blocks.slab
    return slab


def cut_cubes(job: SampleJob, batch: Recipes, out: np.ndarray) -> np.ndarray:
    """The cubes of ``batch`` into ``out``, holding source values within the budget."""
    layout, plan = job.source, job.plan
    if layout.whole:
        return gather_cubes(worker_slab(job), batch.frames, batch.rows, batch.columns, out)
    step, block = layout.row_step, layout.frame_block
    bands = batch.rows // step
    for band in np.unique(bands):
        first = int(band) * step
        rows = range(first, min(first + step + plan.height - 1, layout.rows_needed))
        # The layers of other bands' cubes get frame -1: the gather leaves them alone.
        frames = np.where((bands == band)[:, None], batch.frames, -1)
        for start in np.unique(frames[frames >= 0] // block) * block:
            frames_held = range(start, min(start + block, plan.n_frames))
            local = np.where(frames >= 0, frames - start, -1)
            gather_cubes(
                _block_slab(job, frames_held, rows), local, batch.rows - first, batch.columns, out
            )
    return out


def warm_worker(job: SampleJob) -> None:
    """Load the job's slab into this process if its layout keeps the source whole
    (returns nothing, so that the slab stays where it is)."""
    if job.source.whole:
        worker_slab(job)


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
    out = _batch_buffer((stop - start, *job.plan.cube_shape), job.dtype)
    return cut_cubes(job, recipes(job.plan, start, stop), out)


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
