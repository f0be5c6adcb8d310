"""The tasks of the stages: ingest tasks write frames into the frames store; sampling
tasks write the cubes of one task (one shard or more) or one block of recipes into the
cube store. Every task writes whole chunks, so no locks are needed.

Ingest: the frames come as a :class:`~daskcubes.io.sources.FrameSource`, a dask array
with one chunk per frame (read from a frame file, or taken from an array); each write
task takes one chunk and writes it whole into its slot of the frames store. Memory stays
bounded by the frames in flight (about one per worker thread), never by their number.

Sampling: a task carries only a small :class:`SampleJob` (the cut,
:class:`~daskcubes.cut.job.CutJob`, and where to write) and an integer; the cut itself
is :mod:`daskcubes.cut.cutter`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import zarr
from dask.base import tokenize
from dask.typing import Key

from daskcubes.cut.cutter import cut_at
from daskcubes.cut.job import DatasetCut, cut_recipes
from daskcubes.io.progress import Finishes, Work
from daskcubes.io.schema import VOLUMES
from daskcubes.io.shards import ShardWriter
from daskcubes.io.sources import FrameSource
from daskcubes.io.storage import Storage


@dataclass(frozen=True)
class SampleJob:
    """Everything a sampling task needs: the cut, the cube store ``out`` it fills, and the
    ``run`` it belongs to (any id of its own: a process keeps a run's arrays open, and a
    store another run replaced at the same path, with other codecs, is opened afresh)."""

    cut: DatasetCut
    out: str
    run: str


@lru_cache(maxsize=16)
def _open_output(job: SampleJob, name: str) -> zarr.Array:
    # Keyed by the whole job, its run among it: a store replaced at the same path is opened
    # afresh (a job of the same cut may write it with other codecs). Empty
    # chunks are written too, so that every chunk of a finished store exists.
    array = job.cut.storage.open_array(job.out, name, mode="r+")
    return array.with_config({"write_empty_chunks": True})


@lru_cache(maxsize=16)
def _shard_writer(job: SampleJob, name: str) -> ShardWriter:
    return ShardWriter(_open_output(job, name))


def write_cube_task(job: SampleJob, shards: tuple[int, ...]) -> None:
    """Cut the cubes of ``shards`` and their paired cubes, and write them as whole
    shards of ``cubes`` and of each paired array."""
    plan = job.cut.plan
    bounds = [plan.shard_bounds(shard) for shard in shards]
    arrays = cut_at(job.cut, np.concatenate([np.arange(*b) for b in bounds]))
    for name, cubes in arrays.items():
        offset = 0
        for shard, (start, stop) in zip(shards, bounds, strict=True):
            _shard_writer(job, name).write(shard, cubes[offset : offset + stop - start])
            offset += stop - start


def write_recipe_block(job: SampleJob, block: int) -> None:
    """Write the recipes of one block of cubes into ``columns``, ``rows`` and ``frames``,
    and into ``volumes`` where the dataset has several."""
    start, stop = job.cut.plan.recipe_block_bounds(block)
    volumes, block_recipes = cut_recipes(job.cut, np.arange(start, stop))
    _open_output(job, "columns")[start:stop] = block_recipes.columns
    _open_output(job, "rows")[start:stop] = block_recipes.rows
    _open_output(job, "frames")[start:stop] = block_recipes.frames
    if len(job.cut.plan.plans) > 1:
        _open_output(job, VOLUMES)[start:stop] = volumes


def sample_tasks(job: SampleJob, shards_done: set[int], recipes_done: set[int]) -> Work:
    """Tasks for the recipe blocks and the cubes not yet done.

    Each task finishes ``("recipes", [block])`` or ``("shards", [shard, ...])``. A task
    with any unfinished shard is redone whole; rewriting a finished shard writes the same
    bytes.
    """
    token = tokenize(job)
    plan = job.cut.plan
    graph: dict[Key, Any] = {}
    finishes: Finishes = {}
    for block in range(plan.n_recipe_blocks):
        if block not in recipes_done:
            key = (f"recipes-{token}", block)
            graph[key] = (write_recipe_block, job, block)
            finishes[key] = ("recipes", [block])
    for task, group in enumerate(plan.task_groups()):
        shards = tuple(group.tolist())
        if not set(shards) <= shards_done:
            key = (f"sample-{token}", task)
            graph[key] = (write_cube_task, job, shards)
            finishes[key] = ("shards", list(shards))
    return Work(graph, finishes)


def write_frame(values: np.ndarray, index: int, store: str, array: str, storage: Storage) -> None:
    """Write ``values`` (one chunk of a source: ``(1, n_rows, n_cols)``) as frame ``index``
    of ``array`` in the frames store ``store``."""
    storage.open_array(store, array, mode="r+")[index] = values[0]


def ingest_tasks(
    arrays: list[tuple[str, FrameSource]], store: str, storage: Storage, done: set[int]
) -> Work:
    """The sources' tasks and one write task per frame not in ``done``, the frames of
    ``arrays`` (each source by its array's path in the store) numbered in turn; each
    write task finishes its frame. Culling leaves out the reads of finished frames."""
    graph: dict[Key, Any] = {}
    finishes: Finishes = {}
    first = 0
    for array, source in arrays:
        frames = source.array
        token = tokenize(source.fingerprint, frames.name, store, array)
        graph.update(frames.__dask_graph__())
        for i in range(source.shape[0]):
            if first + i not in done:
                key = (f"ingest-{token}", i)
                graph[key] = (write_frame, (frames.name, i, 0, 0), i, store, array, storage)
                finishes[key] = ("frames", [first + i])
        first += source.shape[0]
    return Work(graph, finishes)
