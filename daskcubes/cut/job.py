"""The cut's job: which cubes (the plan), from which frames store, as which dtype, and how
the source values are held within a memory budget (:class:`SourceLayout`).

A job is built once per run from plain values (:func:`plan_cut`; the settings become
those values in :mod:`daskcubes.jobs`, and nowhere else), then laid out again for the
workers it runs on (:func:`for_workers`) without reading anything twice. It is small
enough to travel with every task. The map a plan draws windows from is read through
:mod:`daskcubes.io.maps` once per process, and handed to the pure recipes as a table.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import psutil

from daskcubes.core.definition import CubeSizes, Definition, check_cube_fits
from daskcubes.core.plan import CubePlan, Recipes, recipes_of, task_size_for
from daskcubes.core.tables import WindowTable
from daskcubes.errors import UserError
from daskcubes.io.layout import FramesStoreInfo
from daskcubes.io.maps import window_table
from daskcubes.io.schema import CubeSchema
from daskcubes.io.storage import Storage

#: The share of a worker's memory that source values may take by default (the rest is
#: for the cubes being cut and written, and for Python, numpy and zarr themselves).
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
    when the cubes cut together share their source rows (all frames, the first rows) or
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
    #: The source budget asked for (None: a share of each worker's memory).
    max_slab_bytes: int | None = None


def _layout(
    plan: CubePlan,
    frames: FramesStoreInfo,
    dtype: str,
    max_slab_bytes: int | None,
    worker_memory: int | None,
    threads: int,
) -> SourceLayout:
    memory = available_memory() if worker_memory is None else worker_memory
    budget = source_budget(max_slab_bytes, memory)
    return source_layout(plan, frames.path, dtype, budget, threads)


def plan_cut(
    frames: FramesStoreInfo,
    storage: Storage,
    *,
    cubes: int,
    sizes: CubeSizes,
    definition: Definition,
    seed: int,
    task_size: int | str,
    shard_size: int,
    dtype: str,
    max_slab_bytes: int | None = None,
    worker_memory: int | None = None,
    threads: int = 1,
) -> CutJob:
    """The cut of ``cubes`` cubes of ``sizes`` from the frames store ``frames``: the plan
    checked against its shape (and a map, if the definition names one, read and checked
    now, before anything is written), the source laid out for workers of
    ``worker_memory`` bytes (default: this machine's available memory) and ``threads``
    threads."""
    check_cube_fits(sizes, definition, frames.shape)
    depth, height, width = (size for _, size in sizes)
    n_frames, n_rows, n_cols = frames.shape
    cube_nbytes = depth * height * width * np.dtype(dtype).itemsize
    plan = CubePlan(
        n_cubes=cubes,
        depth=depth,
        height=height,
        width=width,
        n_frames=n_frames,
        n_rows=n_rows,
        n_cols=n_cols,
        seed=seed,
        task_size=task_size_for(task_size, cubes, shard_size, cube_nbytes),
        shard_size=shard_size,
        definition=definition,
    )
    spec = plan.map_spec
    if spec is not None:  # its digest is what every copy of the plan (each task's) checks
        table = window_table(spec, storage, definition.modes, plan.cube_shape, frames.shape)
        plan = replace(plan, map_fingerprint=table.fingerprint)
    layout = _layout(plan, frames, dtype, max_slab_bytes, worker_memory, threads)
    return CutJob(frames, plan, dtype, storage, layout, max_slab_bytes)


def for_workers(job: CutJob, worker_memory: int, threads: int) -> CutJob:
    """``job`` with its source laid out for workers of ``worker_memory`` bytes and
    ``threads`` threads (nothing is read again)."""
    layout = _layout(job.plan, job.frames, job.dtype, job.max_slab_bytes, worker_memory, threads)
    return replace(job, source=layout)


def store_cut_job(
    schema: CubeSchema, frames: FramesStoreInfo, storage: Storage, threads: int = 1
) -> CutJob:
    """The cut that made a cube store of ``schema`` from ``frames``, on ``threads``
    threads of this machine (with the default source budget)."""
    layout = _layout(schema.plan, frames, schema.dtype, None, None, threads)
    return CutJob(frames, schema.plan, schema.dtype, storage, layout, None)


def job_table(job: CutJob, fresh: bool = False) -> WindowTable | None:
    """The table of the job's map (None if it draws from none), read once per process
    and checked against the digest the plan records; ``fresh`` reads the map again."""
    spec = job.plan.map_spec
    if spec is None:
        return None
    plan = job.plan
    return window_table(
        spec, job.storage, plan.definition.modes, plan.cube_shape, job.frames.shape, fresh
    )


def job_recipes(job: CutJob, cubes: np.ndarray) -> Recipes:
    """Recipes of ``cubes`` (any indices, any order) under the job's plan."""
    return recipes_of(job.plan, cubes, job_table(job))
