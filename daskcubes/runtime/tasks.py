"""Sampling tasks: each writes one batch of cubes (one shard or more) or one block of
recipes into the cube store.

A task carries only a small :class:`SampleJob` (the cut, :class:`~daskcubes.cut.cutter.CutJob`,
and where to write) and an integer; the cut itself is :mod:`daskcubes.cut.cutter`'s. Each task
writes whole chunks, so no locks are needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import zarr
from dask.base import tokenize
from dask.typing import Key

from daskcubes.config import Config
from daskcubes.core.plan import recipes
from daskcubes.cut.cutter import CutJob, cut_job, cut_range
from daskcubes.io.progress import Finishes, Work
from daskcubes.io.shards import write_shard


@dataclass(frozen=True)
class SampleJob:
    """Everything a sampling task needs: the cut, and the cube store ``out`` it fills."""

    cut: CutJob
    out: str


def sample_job(config: Config, worker_memory: int | None = None, threads: int = 1) -> SampleJob:
    """The sampling job for ``config`` on workers of ``worker_memory`` bytes (default:
    this machine's available memory) and ``threads`` threads (see
    :func:`~daskcubes.cut.cutter.cut_job`)."""
    return SampleJob(cut_job(config, worker_memory, threads), config.out)


@lru_cache(maxsize=8)
def _open_output(job: SampleJob, name: str) -> zarr.Array:
    # Keyed by the whole job: a store replaced at the same path is opened afresh. Empty
    # chunks are written too, so that every chunk of a finished store exists.
    array = job.cut.storage.open_array(job.out, name, mode="r+")
    return array.with_config({"write_empty_chunks": True})


def write_cube_batch(job: SampleJob, batch: int) -> None:
    """Cut batch ``batch`` and write it as whole shards of ``cubes``."""
    start, stop = job.cut.plan.batch_bounds(batch)
    cubes = cut_range(job.cut, start, stop)
    size = job.cut.plan.shard_size
    for offset in range(0, stop - start, size):
        write_shard(
            _open_output(job, "cubes"), (start + offset) // size, cubes[offset : offset + size]
        )


def write_recipe_block(job: SampleJob, block: int) -> None:
    """Write the recipes of one block of cubes into ``columns``, ``rows`` and ``frames``."""
    start, stop = job.cut.plan.recipe_block_bounds(block)
    batch = recipes(job.cut.plan, start, stop)
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
    plan = job.cut.plan
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
