"""The cutter: the one place cubes are cut from a frames store, for sampling, stream
mode, verify and the benchmark alike.

A :class:`~daskcubes.cut.job.CutJob` says which cubes, from where, and how the source is
held: when every cube's rows of every frame fit the budget, they are loaded from the
frames store once per worker process and kept (never put into a task graph); otherwise
each thread works through its cubes one block of source (some frames, a band of rows)
at a time.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from daskcubes.core.kernels import compile_kernel, empty_slab, gather_cubes
from daskcubes.core.plan import Recipes
from daskcubes.cut.job import CutJob, DatasetCut, cut_recipes
from daskcubes.io.layout import FramesStoreInfo
from daskcubes.io.schema import CUBES
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
    array = storage.open_array(source.path, source.array, mode="r")
    slab = empty_slab(len(frames), len(rows), source.shape[2], dtype, rows_contiguous)
    for layer, frame in enumerate(frames):
        slab[layer] = array[frame, rows.start : rows.stop, :]  # cast once, here
    return slab


class _Slabs:
    """The whole slabs of a process, by what they hold, within the bytes a layout lets
    a worker hold (``held``): a slab of another volume or array drops the least recently
    used ones first. Threads of one worker wait for a load rather than repeat it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slabs: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
        self.loads = 0

    @staticmethod
    def nbytes(job: CutJob) -> int:
        frames = job.frames
        return (
            frames.shape[0]
            * job.source.rows_needed
            * frames.shape[2]
            * np.dtype(job.dtype).itemsize
        )

    def room(self, job: CutJob) -> bool:
        """Whether the whole slab of ``job`` fits beside those kept."""
        with self._lock:
            held = sum(slab.nbytes for slab in self._slabs.values())
        return held + self.nbytes(job) <= job.source.held

    def get(self, job: CutJob) -> np.ndarray:
        layout = job.source
        key = (job.frames, job.storage, job.dtype, layout.rows_needed, layout.rows_contiguous)
        with self._lock:
            if key in self._slabs:
                self._slabs.move_to_end(key)
                return self._slabs[key]
            frames, rows, nbytes = job.frames, layout.rows_needed, self.nbytes(job)
            while (
                self._slabs and sum(s.nbytes for s in self._slabs.values()) + nbytes > layout.held
            ):
                self._slabs.popitem(last=False)
            slab = load_slab(
                frames,
                job.storage,
                job.dtype,
                range(frames.shape[0]),
                range(rows),
                layout.rows_contiguous,
            )
            self._slabs[key] = slab
            self.loads += 1
            return slab


_slabs = _Slabs()


def slab_loads() -> int:
    """How many whole slabs this process has loaded."""
    return _slabs.loads


def resident_volumes(cut: DatasetCut) -> int:
    """How many volumes' whole slabs a worker keeps at once within its budget, counting
    the largest volumes (at least 1: a volume beyond the budget is cut block by block)."""
    sizes = sorted(
        (sum(_Slabs.nbytes(job) for job in v.jobs) for v in cut.volumes if v is not None),
        reverse=True,
    )
    held, total, fits = cut.jobs()[0].source.held, 0, 0
    for size in sizes:
        total += size
        if total > held:
            break
        fits += 1
    return max(fits, 1)


def worker_slab(job: CutJob) -> np.ndarray:
    """The whole slab of a ``whole`` layout, loaded once per process while it is kept."""
    return _slabs.get(job)


def warm_worker(cut: DatasetCut) -> None:
    """Compile the cut for each array's dtype and layout, and load the whole slabs of its
    arrays into this process, as many as the budget keeps beside each other (returns
    nothing, so that the slabs stay where they are)."""
    for job in cut.jobs():
        compile_kernel(job.dtype, job.source.rows_contiguous)
        if job.source.whole and _slabs.room(job):
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


def _batch_buffer(name: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """A per-thread output buffer for array ``name``, reused so that each task does not
    page-fault anew."""
    kept: dict[str, np.ndarray] | None = getattr(_buffers, "arrays", None)
    if kept is None:
        kept = _buffers.arrays = {}
    size = math.prod(shape)
    buffer = kept.get(name)
    if buffer is None or buffer.dtype != dtype or buffer.size < size:
        buffer = kept[name] = np.empty(shape, dtype=dtype)
    return buffer.reshape(-1)[:size].reshape(shape)


def output_shapes(cut: DatasetCut, n: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """The arrays a cut of ``n`` cubes fills, by name: ``cubes`` (with a channel axis
    after the cube axis if there are several channels), then the paired arrays."""
    cube = cut.plan.cube_shape
    channels = (cut.channels,) if cut.channels > 1 else ()
    return {
        CUBES: ((n, *channels, *cube), cut.dtype),
        **{name: ((n, *cube), dtype) for name, dtype in cut.pairs},
    }


def cut_into(cut: DatasetCut, cubes: np.ndarray, outs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The cubes ``cubes`` (any indices, any order) and their paired cubes into ``outs``
    (by name, as :func:`output_shapes`); returns each cube's volume."""
    volumes, recipes = cut_recipes(cut, cubes)
    only = cut.volumes[0]
    if len(cut.volumes) == 1 and only is not None and len(outs) == 1 and cut.channels == 1:
        cut_cubes(only.channels[0], recipes, outs[CUBES])  # one array of one volume
        return volumes
    found = np.unique(volumes) if len(cut.volumes) > 1 else volumes[:1]
    for volume in found:
        mine = np.flatnonzero(volumes == volume) if len(found) > 1 else slice(None)
        part = (
            recipes
            if len(found) == 1
            else Recipes(recipes.frames[mine], recipes.rows[mine], recipes.columns[mine])
        )
        volume_cut = cut.volumes[int(volume)]
        assert volume_cut is not None  # a volume left out is never drawn
        targets = [
            (job, outs[CUBES][:, c] if cut.channels > 1 else outs[CUBES])
            for c, job in enumerate(volume_cut.channels)
        ] + [(job, outs[name]) for job, (name, _) in zip(volume_cut.pairs, cut.pairs, strict=True)]
        for job, target in targets:
            if len(found) == 1 and target.flags.c_contiguous:
                cut_cubes(job, part, target)
            else:
                n = len(part.rows)
                target[mine] = cut_cubes(job, part, np.empty((n, *target.shape[1:]), target.dtype))
    return volumes


def cut_at(cut: DatasetCut, cubes: np.ndarray) -> dict[str, np.ndarray]:
    """The cubes ``cubes`` and their paired cubes, by array name, as views into
    per-thread buffers, valid until the thread's next call."""
    shapes = output_shapes(cut, len(cubes))
    outs = {name: _batch_buffer(name, shape, dtype) for name, (shape, dtype) in shapes.items()}
    cut_into(cut, cubes, outs)
    return outs


def cut_range(cut: DatasetCut, start: int, stop: int) -> dict[str, np.ndarray]:
    """Cubes ``start .. stop`` and their paired cubes (as :func:`cut_at`)."""
    return cut_at(cut, np.arange(start, stop))
