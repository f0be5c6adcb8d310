"""The cut's job: which cubes (the plan), from which frames store, as which dtype, and how
the source values are held within a memory budget (:class:`SourceLayout`).

A job is built once per run from plain values (:func:`plan_cut`; the settings become
those values in :mod:`daskcubes.jobs`, and nowhere else), then laid out again for the
workers it runs on (:func:`for_workers`) without reading anything twice. It is small
enough to travel with every task. The map a plan draws windows from is read through
:mod:`daskcubes.io.maps` once per process, and handed to the pure recipes as a table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import psutil

from daskcubes.core.definition import CubeSizes, Definition, check_cube_fits
from daskcubes.core.plan import CubePlan, Recipes, task_size_for
from daskcubes.core.tables import WindowTable
from daskcubes.core.volumes import (
    DatasetPlan,
    Shape,
    ShareMode,
    check_frame_counts,
    dataset_plan,
    dataset_recipes,
)
from daskcubes.errors import UserError
from daskcubes.io.layout import DatasetInfo, FramesStoreInfo, VolumeInfo
from daskcubes.io.maps import window_table
from daskcubes.io.schema import CubeSchema, VolumeRecord
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
    #: Bytes a worker holds of every array's whole slabs together (the arrays of a volume
    #: share it by their itemsize, so ``budget`` is an array's share); the least recently
    #: used go first.
    held: int = 0


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
    share: float = 1.0,
) -> SourceLayout:
    """The layout of one of a volume's arrays, within its ``share`` of the budget."""
    memory = available_memory() if worker_memory is None else worker_memory
    held = source_budget(max_slab_bytes, memory)
    layout = source_layout(plan, frames.path, dtype, int(held * share), threads)
    return replace(layout, held=held)


@dataclass(frozen=True)
class VolumeCut:
    """The cut of one volume: a job per channel of its frames, and one per paired array
    (in the frames store's order), all of one plan."""

    channels: tuple[CutJob, ...]
    pairs: tuple[CutJob, ...] = ()

    @property
    def jobs(self) -> tuple[CutJob, ...]:
        return (*self.channels, *self.pairs)


@dataclass(frozen=True)
class DatasetCut:
    """Everything the cut of a dataset needs, small enough to travel with every task:
    the frames store, the plan (which volume each cube comes from, and each volume's
    plan), and a :class:`VolumeCut` per volume (None for a volume left out)."""

    frames: DatasetInfo
    plan: DatasetPlan
    dtype: str
    storage: Storage
    volumes: tuple[VolumeCut | None, ...]
    #: The source budget asked for (None: a share of each worker's memory).
    max_slab_bytes: int | None = None
    #: The volumes' shares as asked (``windows``, ``equal``, or by volume name).
    volume_shares: str | dict[str, float] = "windows"

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        """The paired arrays the cut makes beside the cubes: (name, dtype)."""
        return self.frames.pairs

    @property
    def channels(self) -> int:
        """Channels of each cube (1: no channel axis)."""
        return len(self.frames.channels)

    def jobs(self) -> list[CutJob]:
        return [job for volume in self.volumes if volume is not None for job in volume.jobs]

    @property
    def cube_nbytes(self) -> int:
        """Bytes of one cube with its channels and paired cubes."""
        voxels = int(np.prod(self.plan.cube_shape))
        sizes = [self.dtype] * self.channels + [dtype for _, dtype in self.pairs]
        return voxels * sum(np.dtype(dtype).itemsize for dtype in sizes)

    def schema(self, compressor: str) -> CubeSchema:
        """The schema of the cube store this cut fills, with ``compressor``."""
        frames = self.frames
        if not frames.layered:
            return CubeSchema(self.plan, self.dtype, compressor, frames.fingerprint)
        records = tuple(
            VolumeRecord(
                volume.name,
                volume.shape,
                volume.fingerprint,
                None if plan is None else plan.map_fingerprint,
            )
            for volume, plan in zip(frames.volumes, self.plan.plans, strict=True)
        )
        return CubeSchema(
            self.plan,
            self.dtype,
            compressor,
            frames.fingerprint,
            volumes=records,
            volume_shares=self.volume_shares,
            channels=frames.channels,
            pairs=frames.pairs,
        )


def volume_definition(definition: Definition, frames: DatasetInfo, k: int) -> Definition:
    """The definition volume ``k`` is cut with: the dataset's, with label-balanced windows
    (``label_ratios`` without a label map) drawn from the volume's ingested ``labels``."""
    if not definition.label_ratios or definition.labels is not None:
        return definition
    if "labels" not in dict(frames.pairs):
        raise UserError(
            f"label_ratios: frames store '{frames.path}' holds no labels; give labels (a "
            "label volume) or ingest labels with the frames"
        )
    labels = next(a for a in frames.volumes[k].pairs if a.array.endswith("/labels"))
    return replace(definition, labels=f"{frames.path.rstrip('/')}/{labels.array}")


def _volume_cut(
    plan: CubePlan,
    volume: VolumeInfo,
    dtype: str,
    storage: Storage,
    max_slab_bytes: int | None,
    worker_memory: int | None,
    threads: int,
) -> VolumeCut:
    """The jobs of one volume's arrays, each laid out within its share of the budget."""
    dtypes = [dtype] * len(volume.channels) + [pair.dtype for pair in volume.pairs]
    whole = sum(np.dtype(d).itemsize for d in dtypes)

    def job(frames: FramesStoreInfo, as_dtype: str) -> CutJob:
        share = np.dtype(as_dtype).itemsize / whole
        layout = _layout(plan, frames, as_dtype, max_slab_bytes, worker_memory, threads, share)
        return CutJob(frames, plan, as_dtype, storage, layout, max_slab_bytes)

    return VolumeCut(
        tuple(job(frames, dtype) for frames in volume.channels),
        tuple(job(pair, pair.dtype) for pair in volume.pairs),
    )


def plan_cut(
    frames: DatasetInfo,
    storage: Storage,
    *,
    cubes: int,
    sizes: CubeSizes,
    definition: Definition,
    seed: int,
    task_size: int | str,
    shard_size: int,
    dtype: str,
    shares: ShareMode | Mapping[str, float] = "windows",
    max_slab_bytes: int | None = None,
    worker_memory: int | None = None,
    threads: int = 1,
    map_fingerprints: Sequence[str | None] | None = None,
    recipe: str = "",
    fresh_maps: bool = False,
) -> DatasetCut:
    """The cut of ``cubes`` cubes of ``sizes`` from the frames store ``frames``: the plan
    checked against its volumes' shapes (and each volume's map, if the definition draws
    from one, read and checked now, before anything is written; ``map_fingerprints``:
    the digests a store recorded), the source laid out for workers of ``worker_memory``
    bytes (default: this machine's available memory) and ``threads`` threads; the
    recipes made by the function named ``recipe`` (a store's, to cut its cubes again;
    by default the one new stores of the definition are made with); ``fresh_maps`` reads
    the maps again even where this process has read them.

    A volume too small for the cube is left out (its share is 0) and named on stderr.
    """
    shapes = frames.shapes
    check_frame_counts(definition, shapes)
    largest = (max(s[0] for s in shapes), max(s[1] for s in shapes), max(s[2] for s in shapes))
    one = len(shapes) == 1
    check_cube_fits(
        sizes, definition, largest, "the frames store has" if one else "the largest volume has"
    )
    cube_shape = (sizes[0][1], sizes[1][1], sizes[2][1])
    sizes_of = [dtype] * len(frames.channels) + [d for _, d in frames.pairs]
    cube_nbytes = int(np.prod(cube_shape)) * sum(np.dtype(d).itemsize for d in sizes_of)
    tasks = task_size_for(task_size, cubes, shard_size, cube_nbytes)
    definitions = [volume_definition(definition, frames, k) for k in range(len(shapes))]

    def make(k: int, n: int) -> CubePlan:
        n_frames, n_rows, n_cols = shapes[k]
        return CubePlan(
            n_cubes=n,
            depth=cube_shape[0],
            height=cube_shape[1],
            width=cube_shape[2],
            n_frames=n_frames,
            n_rows=n_rows,
            n_cols=n_cols,
            seed=seed,
            task_size=shard_size,  # the dataset plan's tasks are the ones run
            shard_size=shard_size,
            recipe=recipe,
            definition=definitions[k],
        )

    plan, _ = dataset_plan(frames.names, shapes, make, cubes, cube_shape, definition, shares, tasks)
    recorded = list(map_fingerprints or [None] * len(shapes))
    plans = tuple(
        None
        if p is None
        else _with_map(p, storage, frames.volumes[k].shape, recorded[k], fresh_maps)
        for k, p in enumerate(plan.plans)
    )
    plan = replace(plan, plans=plans)
    volumes = tuple(
        None
        if p is None
        else _volume_cut(p, volume, dtype, storage, max_slab_bytes, worker_memory, threads)
        for p, volume in zip(plans, frames.volumes, strict=True)
    )
    asked = shares if isinstance(shares, str) else dict(shares)
    return DatasetCut(frames, plan, dtype, storage, volumes, max_slab_bytes, asked)


def store_cut_job(
    schema: CubeSchema, frames: DatasetInfo, storage: Storage, threads: int = 1
) -> DatasetCut:
    """The cut that made a cube store of ``schema`` from ``frames`` (whose fingerprint the
    caller has checked), on ``threads`` threads of this machine, with the default source
    budget; its maps read again (a map rewritten since is noticed) and checked against
    the digests the store records."""
    plan, first = schema.plan, schema.plan.first
    recorded = (
        [record.map_fingerprint for record in schema.volumes]
        if schema.volumes
        else [first.map_fingerprint]
    )
    depth, height, width = plan.cube_shape
    return plan_cut(
        frames,
        storage,
        cubes=plan.n_cubes,
        sizes=(("depth", depth), ("height", height), ("width", width)),
        definition=plan.definition,
        seed=plan.seed,
        task_size=plan.shard_size,
        shard_size=plan.shard_size,
        dtype=schema.dtype,
        shares=schema.volume_shares,  # type: ignore[arg-type]
        threads=threads,
        map_fingerprints=recorded,
        recipe=first.recipe,
        fresh_maps=True,
    )


def _with_map(
    plan: CubePlan, storage: Storage, shape: Shape, fingerprint: str | None, fresh: bool
) -> CubePlan:
    """``plan`` with the digest of its map (None if it draws from none): read now and
    checked against ``fingerprint`` if one was recorded (``fresh``: read again even
    where this process has read it). Every copy of the plan (each task's) checks its
    table against it."""
    if plan.definition.map_spec() is None:
        return plan
    spec = plan.definition.map_spec(fingerprint)
    assert spec is not None
    table = window_table(spec, storage, plan.definition.modes, plan.cube_shape, shape, fresh)
    return replace(plan, map_fingerprint=table.fingerprint)


def for_workers(cut: DatasetCut, worker_memory: int, threads: int) -> DatasetCut:
    """``cut`` with its source laid out for workers of ``worker_memory`` bytes and
    ``threads`` threads (nothing is read again)."""

    def volume(cut: VolumeCut) -> VolumeCut:
        whole = sum(np.dtype(job.dtype).itemsize for job in cut.jobs)

        def laid(job: CutJob) -> CutJob:
            share = np.dtype(job.dtype).itemsize / whole  # of the volume's budget
            asked = job.max_slab_bytes
            layout = _layout(job.plan, job.frames, job.dtype, asked, worker_memory, threads, share)
            return replace(job, source=layout)

        return VolumeCut(tuple(map(laid, cut.channels)), tuple(map(laid, cut.pairs)))

    return replace(cut, volumes=tuple(None if v is None else volume(v) for v in cut.volumes))


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


def cut_recipes(cut: DatasetCut, cubes: np.ndarray) -> tuple[np.ndarray, Recipes]:
    """The volume and recipe of each of ``cubes`` (any indices, any order)."""
    tables = [None if v is None else job_table(v.channels[0]) for v in cut.volumes]
    return dataset_recipes(cut.plan, np.asarray(cubes, dtype=np.int64), tables)
