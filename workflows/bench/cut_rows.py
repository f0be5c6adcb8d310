"""The cut, stage by stage, from the kernel to the training loop, beside its peers.

Each row adds one stage to the one before: the kernel alone on the worker slab (recipes
computed beforehand, one reused buffer per thread); the cutter without dask (recipes of
each batch, the per-thread buffers: :func:`daskcubes.cut.cutter.cut_range` on threads); dask
tasks (daskcubes generation); stream mode without a loader (``CubeStream.read`` of whole
batches on threads) and through :class:`~daskcubes.train.batches.Batches` (its threads, ring
and prefetch). Beside them: the same generation of float32 cubes and of random row
windows, the article's step 3 over ``np.stack`` of ``DataFrame.to_numpy()`` (through
:func:`bench.anchors.article_step3`), and the cut ceiling. They all share the memory
bus of one machine, so they run in :data:`ROUNDS` alternating rounds and each row is
the median of its rounds: a disturbance hits every row of a round, not one row.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import dask.threaded
import numpy as np
from dask.typing import Key as TaskKey

from bench.anchors import article_step3
from bench.ceilings import cut_ceiling_rate
from bench.data import Setup, on_threads, read_frames, timed
from bench.rows import CUBES_PER_S, Key, Row
from daskcubes import Batches, jobs, open_stream
from daskcubes.core.kernels import gather_cubes
from daskcubes.cut.cutter import cut_range, warm_worker, worker_slab
from daskcubes.cut.job import CutJob, available_memory, for_workers, job_recipes

#: Alternating rounds of every row; each row reports its median.
ROUNDS = 3
#: Cubes per batch of a training loop, as ``Batches`` hands them out.
LOOP_BATCH = 16


def _job(setup: Setup, cubes: int, threads: int, **settings: Any) -> CutJob:
    job = for_workers(
        jobs.cut_job(setup.config(cubes=cubes, **settings)), available_memory(), threads
    )
    warm_worker(job)  # compiled and loaded once per worker in a real run: not the rate
    return job


def task_bounds(job: CutJob) -> list[tuple[int, int]]:
    """The cubes of each task of ``job``'s run, ``(start, stop)``, as its plan cuts them
    into tasks (the one place here that knows the plan's names for them)."""
    plan = job.plan
    return [plan.task_bounds(t) for t in range(plan.n_tasks)]


def kernel_rate(job: CutJob, threads: int) -> float:
    """The kernel alone: every task's recipes computed beforehand, then
    ``gather_cubes`` on the worker slab into one buffer per thread."""
    plan, slab = job.plan, worker_slab(job)
    batches = [job_recipes(job, np.arange(*bounds)) for bounds in task_bounds(job)]
    size = max(stop - start for start, stop in task_bounds(job))
    buffers = [np.empty((size, *plan.cube_shape), job.dtype) for _ in range(threads)]

    def work(k: int) -> None:
        for batch in batches[k::threads]:
            out = buffers[k][: len(batch.rows)]
            gather_cubes(slab, batch.frames, batch.rows, batch.columns, out)

    return plan.n_cubes / on_threads(threads, work)


def cutter_rate(job: CutJob, threads: int) -> float:
    """:func:`~daskcubes.cut.cutter.cut_range` task by task on threads, without dask."""
    tasks = task_bounds(job)

    def work(k: int) -> None:
        for bounds in tasks[k::threads]:
            cut_range(job, *bounds)

    return job.plan.n_cubes / on_threads(threads, work)


def tasks_rate(job: CutJob, threads: int) -> float:
    """Cubes per second made and discarded by daskcubes tasks on ``threads`` threads."""
    graph: dict[TaskKey, Any] = {
        ("generate", b): (cut_range, job, *bounds) for b, bounds in enumerate(task_bounds(job))
    }
    # dask's threaded scheduler, as daskcubes runs its tasks on ``scheduler: threads``.
    get = dask.threaded.get
    return job.plan.n_cubes / timed(lambda: get(graph, list(graph), num_workers=threads))


def generation_rate(setup: Setup, threads: int, cubes: int, **settings: Any) -> float:
    """daskcubes generation on ``threads`` threads, of the article's cubes or of the
    cubes ``settings`` define (such as ``row_mode``)."""
    return tasks_rate(_job(setup, cubes, threads, **settings), threads)


def stream_read_rate(setup: Setup, cubes: int) -> Callable[[], float]:
    """Stream mode without a loader: ``CubeStream.read`` of whole shuffled batches of
    ``LOOP_BATCH`` cubes, a batch per thread."""
    stream = open_stream(setup.config(cubes=cubes))
    stream.read(np.arange(1))  # the slab, loaded once per process: not the rate
    order = np.random.default_rng(1).permutation(cubes)
    batches = [order[k : k + LOOP_BATCH] for k in range(0, cubes, LOOP_BATCH)]
    buffers = [np.empty((LOOP_BATCH, *stream.cube_shape), stream.dtype) for _ in range(2)]

    def run() -> float:
        threads = setup.threads

        def work(k: int) -> None:
            for ids in batches[k::threads]:
                stream.read(ids, buffers[k % 2][: len(ids)])

        return cubes / on_threads(threads, work)

    return run


def loop_rate(setup: Setup, cubes: int) -> Callable[[], float]:
    """Stream mode as a training loop reads it: one shuffled epoch of ``Batches`` over
    ``CubeStream``, each batch dropped once handed out."""
    loader = Batches(open_stream(setup.config(cubes=cubes)), LOOP_BATCH, shuffle=True, seed=1)
    loader.source.read(np.arange(1))

    def run() -> float:
        return cubes / timed(lambda: [None for _ in loader])

    return run


def stacked_peer(setup: Setup, cubes: int, dtype: str) -> Callable[[], float]:
    """The article's step 3 over ``np.stack([df.to_numpy() for df in frames])``: each
    frame stays column-major, so ``arr[:, :dim, cols]`` copies runs and never
    transposes (its cubes are not C-ordered)."""
    stacked = np.stack([frame.to_numpy() for frame in read_frames(setup)]).astype(dtype)
    columns = setup.columns(cubes)
    return lambda: article_step3(stacked, setup.dim, columns, setup.threads)


def measure(setup: Setup) -> list[Row]:
    """Every stage of the cut and its peers, in alternating rounds; medians."""
    cubes, threads = setup.cubes, setup.threads
    article = _job(setup, cubes, threads)
    float32 = _job(setup, cubes, threads, dtype="float32")
    windows = _job(setup, cubes, threads, row_mode="window")
    stages: list[tuple[Key, Callable[[], float], Key | None]] = [
        (Key.CUT_KERNEL, lambda: kernel_rate(article, threads), Key.CUT_CEILING),
        (Key.CUTTER, lambda: cutter_rate(article, threads), Key.CUT_CEILING),
        (Key.GENERATION, lambda: tasks_rate(article, threads), Key.CUT_CEILING),
        (Key.STREAM_READS, stream_read_rate(setup, cubes), Key.CUT_CEILING),
        (Key.STREAM_LOOP, loop_rate(setup, cubes), Key.CUT_CEILING),
        (Key.STEP3_STACKED, stacked_peer(setup, cubes, setup.dtype), Key.CUT_CEILING),
        (Key.CUT_CEILING, lambda: cut_ceiling_rate(setup, threads, cubes), None),
        (Key.GENERATION_FLOAT32, lambda: tasks_rate(float32, threads), None),
        (Key.STEP3_STACKED_FLOAT32, stacked_peer(setup, cubes, "float32"), None),
        (Key.ROW_WINDOWS, lambda: tasks_rate(windows, threads), None),
    ]
    rates: dict[Key, list[float]] = {key: [] for key, _, _ in stages}
    for _ in range(ROUNDS):
        for key, rate, _ in stages:
            rates[key].append(rate())
    note = f"(median of {ROUNDS} alternating rounds)"
    return [
        Row(key, statistics.median(rates[key]), CUBES_PER_S, ceiling, note)
        for key, _, ceiling in stages
    ]
