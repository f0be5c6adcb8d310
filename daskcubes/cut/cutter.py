"""The cutter: the one place cubes are cut from a frames store, for sampling, stream
mode, verify and the benchmark alike.

A :class:`~daskcubes.cut.job.CutJob` says which cubes, from where, and how the source is
held: when every cube's rows of every frame fit the budget, they are loaded from the
frames store once per worker process and kept (never put into a task graph); otherwise
each thread works through its cubes one block of source (some frames, a band of rows)
at a time.
"""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np

from daskcubes.core.kernels import compile_kernel, empty_slab, gather_cubes
from daskcubes.core.plan import Recipes
from daskcubes.cut.job import CutJob, job_recipes
from daskcubes.io.layout import FramesStoreInfo
from daskcubes.io.storage import Storage


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


def cut_cubes(job: CutJob, cubes: Recipes, out: np.ndarray) -> np.ndarray:
    """The cubes of the recipes ``cubes`` into ``out``, holding source values within the budget."""
    layout, plan = job.source, job.plan
    if layout.whole:
        return gather_cubes(worker_slab(job), cubes.frames, cubes.rows, cubes.columns, out)
    step, block = layout.row_step, layout.frame_block
    bands = cubes.rows // step
    for band in np.unique(bands):
        first = int(band) * step
        rows = range(first, min(first + step + plan.height - 1, layout.rows_needed))
        # The layers of other bands' cubes get frame -1: the gather leaves them alone.
        frames = np.where((bands == band)[:, None], cubes.frames, -1)
        for start in np.unique(frames[frames >= 0] // block) * block:
            frames_held = range(start, min(start + block, plan.n_frames))
            local = np.where(frames >= 0, frames - start, -1)
            gather_cubes(
                _block_slab(job, frames_held, rows), local, cubes.rows - first, cubes.columns, out
            )
    return out


_buffers = threading.local()


def _batch_buffer(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """A per-thread output buffer, reused so that each task does not page-fault anew."""
    buffer = getattr(_buffers, "array", None)
    if buffer is None or buffer.dtype != dtype or buffer.size < int(np.prod(shape)):
        buffer = _buffers.array = np.empty(shape, dtype=dtype)
    return buffer.reshape(-1)[: int(np.prod(shape))].reshape(shape)


def cut_range(job: CutJob, start: int, stop: int) -> np.ndarray:
    """Cubes ``start .. stop`` as an array view into a per-thread buffer, valid until
    the thread's next call."""
    out = _batch_buffer((stop - start, *job.plan.cube_shape), job.dtype)
    return cut_cubes(job, job_recipes(job, np.arange(start, stop)), out)
