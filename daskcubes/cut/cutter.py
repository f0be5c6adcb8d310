"""The cutter: the one place cubes are cut from a frames store, for sampling, stream
mode, verify and the benchmark alike.

A :class:`CutJob` says which cubes (its plan), from which frames store, as which dtype,
and how the source values are held within a memory budget (:class:`SourceLayout`):
when every cube's rows of every frame fit, they are loaded from the frames store once
per worker process and kept (never put into a task graph); otherwise each thread works
through its cubes one block of source (some frames, a band of rows) at a time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import psutil

from daskcubes.config import Config
from daskcubes.core.kernels import compile_kernel, empty_slab, gather_cubes
from daskcubes.core.plan import CubePlan, Recipes, batch_size_for, check_cube_fits, recipes
from daskcubes.errors import UserError
from daskcubes.io.layout import FramesStoreInfo, frames_store_info
from daskcubes.io.schema import CubeSchema
from daskcubes.io.storage import Storage

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

    ``rows_contiguous``: the slab's memory layout (see :mod:`daskcubes.core.kernels`), row-major
    when the cubes of a batch share their source rows (all frames, the first rows) or
    read runs of them (column windows), else each source column's rows contiguous.
    """

    budget: int
    threads: int
    whole: bool
    rows_needed: int
    frame_block: int
    row_step: int
    rows_contiguous: bool


def source_layout(
    plan: CubePlan, frames_path: str, dtype: str, budget: int, threads: int
) -> SourceLayout:
    """The layout of source values for ``plan`` within ``budget`` bytes per worker."""
    row_bytes = plan.n_cols * np.dtype(dtype).itemsize
    height, n_frames, mode = plan.height, plan.n_frames, plan.definition
    rows_needed = height if mode.row_mode == "first" else plan.n_rows
    starts = rows_needed - height + 1  # first rows a cube may have
    shared = mode.column_mode == "window" or (mode.frame_mode, mode.row_mode) == ("all", "first")
    if n_frames * rows_needed * row_bytes <= budget:
        return SourceLayout(budget, threads, True, rows_needed, n_frames, starts, shared)
    share = budget // max(threads, 1)
    band_rows = share // (n_frames * row_bytes)
    if band_rows >= height:  # bands of whole frames
        step = min(band_rows - height + 1, starts)
        return SourceLayout(budget, threads, False, rows_needed, n_frames, step, shared)
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
    return SourceLayout(budget, threads, False, rows_needed, frame_block, 1, shared)


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 10**6 else f"{nbytes} bytes"


def source_budget(max_slab_bytes: int | None, worker_memory: int) -> int:
    """Bytes of source values a worker may hold: ``max_slab_bytes``, or by default a
    share of the worker's memory."""
    return max_slab_bytes or int(worker_memory * DEFAULT_BUDGET_SHARE)


def available_memory() -> int:
    """This machine's available memory."""
    return int(psutil.virtual_memory().available)


@dataclass(frozen=True)
class CutJob:
    """Everything the cut needs, small enough to travel with every task."""

    frames: FramesStoreInfo
    plan: CubePlan
    dtype: str
    storage: Storage
    source: SourceLayout


def _laid_out(
    frames: FramesStoreInfo,
    plan: CubePlan,
    dtype: str,
    storage: Storage,
    max_slab_bytes: int | None,
    worker_memory: int | None,
    threads: int,
) -> CutJob:
    memory = available_memory() if worker_memory is None else worker_memory
    budget = source_budget(max_slab_bytes, memory)
    return CutJob(
        frames, plan, dtype, storage, source_layout(plan, frames.path, dtype, budget, threads)
    )


def cut_job(config: Config, worker_memory: int | None = None, threads: int = 1) -> CutJob:
    """The cut of ``config``: its plan checked against the frames store, the source laid
    out for workers of ``worker_memory`` bytes (default: this machine's available
    memory) and ``threads`` threads."""
    storage = Storage.of(config.storage_options, config.storage_retry_seconds)
    frames = frames_store_info(config.frames_store, storage)
    n_frames, n_rows, n_cols = frames.shape
    check_cube_fits(config.cube_sizes(n_frames), config.definition, frames.shape)
    depth, height, width = (size for _, size in config.cube_sizes(n_frames))
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
        definition=config.definition,
        maps=config.definition.window_maps(storage),
    )
    return _laid_out(
        frames, plan, config.dtype, storage, config.max_slab_bytes, worker_memory, threads
    )


def store_cut_job(
    schema: CubeSchema, frames: FramesStoreInfo, storage: Storage, threads: int = 1
) -> CutJob:
    """The cut that made a cube store of ``schema`` from ``frames``, on ``threads``
    threads of this machine (with the default source budget)."""
    return _laid_out(frames, schema.plan, schema.dtype, storage, None, None, threads)


def load_slab(
    source: FramesStoreInfo,
    storage: Storage,
    dtype: str,
    frames: range,
    rows: range,
    rows_contiguous: bool = True,
) -> np.ndarray:
    """``(len(frames), len(rows), n_cols)`` source values as ``dtype``, in the layout
    :func:`~daskcubes.core.kernels.empty_slab` makes, read one frame at a time so that only
    the slab and one frame's rows are held at once."""
    array = storage.open_array(source.path, "frames", mode="r")
    slab = empty_slab(len(frames), len(rows), source.shape[2], dtype, rows_contiguous)
    for layer, frame in enumerate(frames):
        slab[layer] = array[frame, rows.start : rows.stop, :]  # cast once, here
    return slab


_slab_lock = threading.Lock()


# One slab per process: a job on other frames replaces it rather than holding two.
@lru_cache(maxsize=1)
def _cached_slab(
    frames: FramesStoreInfo, storage: Storage, dtype: str, rows: int, rows_contiguous: bool
) -> np.ndarray:
    return load_slab(frames, storage, dtype, range(frames.shape[0]), range(rows), rows_contiguous)


def worker_slab(job: CutJob) -> np.ndarray:
    """The whole slab of a ``whole`` layout, loaded once per process."""
    with _slab_lock:  # threads of one worker wait for the first load rather than repeat it
        layout = job.source
        return _cached_slab(
            job.frames, job.storage, job.dtype, layout.rows_needed, layout.rows_contiguous
        )


def warm_worker(job: CutJob) -> None:
    """Compile the cut for the job, and load its slab into this process if its layout
    keeps the source whole (returns nothing, so that the slab stays where it is)."""
    compile_kernel(job.dtype, job.source.rows_contiguous)
    if job.source.whole:
        worker_slab(job)


_blocks = threading.local()


def _block_slab(job: CutJob, frames: range, rows: range) -> np.ndarray:
    """One block of source, kept by the thread until it needs another one."""
    key = (job.frames, job.dtype, frames, rows, job.source.rows_contiguous)
    if getattr(_blocks, "key", None) != key:
        _blocks.key = _blocks.slab = None  # let go of the last block before loading
        layout = job.source.rows_contiguous
        _blocks.slab = load_slab(job.frames, job.storage, job.dtype, frames, rows, layout)
        _blocks.key = key
    slab: np.ndarray = _blocks.slab
    return slab


def cut_cubes(job: CutJob, batch: Recipes, out: np.ndarray) -> np.ndarray:
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


_buffers = threading.local()


def _batch_buffer(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """A per-thread output buffer, reused so that each batch does not page-fault anew."""
    buffer = getattr(_buffers, "array", None)
    if buffer is None or buffer.dtype != dtype or buffer.size < int(np.prod(shape)):
        buffer = _buffers.array = np.empty(shape, dtype=dtype)
    return buffer.reshape(-1)[: int(np.prod(shape))].reshape(shape)


def cut_range(job: CutJob, start: int, stop: int) -> np.ndarray:
    """Cubes ``start .. stop`` as an array view into a per-thread buffer, valid until
    the thread's next call."""
    out = _batch_buffer((stop - start, *job.plan.cube_shape), job.dtype)
    return cut_cubes(job, recipes(job.plan, start, stop), out)
