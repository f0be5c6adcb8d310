"""The cut, stage by stage, from the kernel to the training loop, beside its peers.

Each row adds one stage to the one before: the kernel alone on the worker slab (recipes
computed beforehand, one reused buffer per thread); the cutter without dask (recipes of
each batch, the per-thread buffers: :func:`daskcubes.cut.cutter.cut_range` on threads); dask
tasks (daskcubes generation); stream mode without a loader (``CubeStream.read`` of whole
batches on threads) and through :class:`~daskcubes.train.batches.Batches` (its threads, ring
and prefetch). Beside them: stream mode of float32 cubes and of random row windows,
the article's step 3 over ``np.stack`` of ``DataFrame.to_numpy()`` (through
:func:`bench.anchors.article_step3`) in float64 and float32, and the cut ceiling.

Each row is held warm in an interpreter of its own (:class:`bench.probes.Resident`), as
a training run holds one stream: rows that shared one process reloaded each other's
slab inside their timing (a process keeps one), and ran on an allocator another row had
left. They all share the memory bus of one machine, so they run in :data:`ROUNDS`
alternating rounds and each row is the median of its rounds: a disturbance hits every
row of a round, not one row.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from typing import Any

import dask.threaded
import numpy as np
from dask.typing import Key as TaskKey

from bench.anchors import article_step3
from bench.ceilings import cut_ceiling
from bench.data import Setup, on_threads, read_frames, timed
from bench.probes import Resident, median_of_rounds
from bench.rows import CUBES_PER_S, Key, Row
from daskcubes import Batches, jobs, open_stream
from daskcubes.core.kernels import gather_cubes
from daskcubes.cut.cutter import cut_range, warm_worker, worker_slab
from daskcubes.cut.job import DatasetCut, available_memory, cut_recipes, for_workers

#: Alternating rounds of every row; each row reports its median.
ROUNDS = 5
#: Cubes per batch of a training loop, as ``Batches`` hands them out.
LOOP_BATCH = 16


def _job(setup: Setup, cubes: int, threads: int, **settings: Any) -> DatasetCut:
    job = for_workers(
        jobs.cut_job(setup.config(cubes=cubes, **settings)), available_memory(), threads
    )
    warm_worker(job)  # compiled and loaded once per worker in a real run: not the rate
    return job


def task_bounds(job: DatasetCut) -> list[tuple[int, int]]:
    """The cubes of each task of ``job``'s run, ``(start, stop)``, as its plan cuts them
    into tasks (the one place here that knows the plan's names for them)."""
    plan = job.plan
    return [plan.task_bounds(t) for t in range(plan.n_tasks)]


def kernel_rate(setup: Setup) -> Callable[[], float]:
    """The kernel alone: every task's recipes of the article's job computed beforehand,
    then ``gather_cubes`` on the worker slab into one buffer per thread."""
    job, threads = _job(setup, setup.cubes, setup.threads), setup.threads
    plan, slab = job.plan, worker_slab(job.jobs()[0])  # the article's: one volume's frames
    batches = [cut_recipes(job, np.arange(*bounds))[1] for bounds in task_bounds(job)]
    size = max(stop - start for start, stop in task_bounds(job))
    buffers = [np.empty((size, *plan.cube_shape), job.dtype) for _ in range(threads)]

    def work(k: int) -> None:
        for batch in batches[k::threads]:
            out = buffers[k][: len(batch.rows)]
            gather_cubes(slab, batch.frames, batch.rows, batch.columns, out)

    return lambda: plan.n_cubes / on_threads(threads, work)


def cutter_rate(job: DatasetCut, threads: int) -> float:
    """:func:`~daskcubes.cut.cutter.cut_range` task by task on threads, without dask."""
    tasks = task_bounds(job)

    def work(k: int) -> None:
        for bounds in tasks[k::threads]:
            cut_range(job, *bounds)

    return job.plan.n_cubes / on_threads(threads, work)


def tasks_rate(job: DatasetCut, threads: int) -> float:
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


def stream_read_rate(setup: Setup) -> Callable[[], float]:
    """Stream mode without a loader: ``CubeStream.read`` of whole shuffled batches of
    ``LOOP_BATCH`` cubes, a batch per thread."""
    cubes, threads = setup.cubes, setup.threads
    stream = open_stream(setup.config(cubes=cubes))
    order = np.random.default_rng(1).permutation(cubes)
    batches = [order[k : k + LOOP_BATCH] for k in range(0, cubes, LOOP_BATCH)]
    buffers = [np.empty((LOOP_BATCH, *stream.cube_shape), stream.dtype) for _ in range(threads)]

    def work(k: int) -> None:
        for ids in batches[k::threads]:
            stream.read(ids, buffers[k][: len(ids)])

    return lambda: cubes / on_threads(threads, work)


def loop_rate(setup: Setup, **settings: Any) -> Callable[[], float]:
    """Stream mode as a training loop reads it: shuffled epochs of ``Batches`` over
    ``CubeStream`` (of the article's cubes, or of the cubes ``settings`` define), each
    batch dropped once handed out; a call times the next epoch."""
    loader = Batches(open_stream(setup.config(**settings)), LOOP_BATCH, shuffle=True, seed=1)
    return lambda: setup.cubes / timed(lambda: [None for _ in loader])


def stacked_peer(setup: Setup, dtype: str | None = None) -> Callable[[], float]:
    """The article's step 3 over ``np.stack([df.to_numpy() for df in frames])``: each
    frame stays column-major, so ``arr[:, :dim, cols]`` copies runs and never
    transposes (its cubes are not C-ordered)."""
    stacked = np.stack([frame.to_numpy() for frame in read_frames(setup)])
    stacked = stacked.astype(dtype or setup.dtype, copy=False)
    columns = setup.columns(setup.cubes)
    return lambda: article_step3(stacked, setup.dim, columns, setup.threads)


def on_article_job(stage: Callable[[DatasetCut, int], float], setup: Setup) -> Callable[[], float]:
    """``stage`` on the job of the article's cubes (see :func:`_job`)."""
    job = _job(setup, setup.cubes, setup.threads)
    return lambda: stage(job, setup.threads)


def ceiling(setup: Setup) -> Callable[[], float]:
    rate = cut_ceiling(setup, setup.threads)
    return lambda: rate(setup.cubes)


#: Every row: its key, what measures it (built in its own interpreter from the setup),
#: and the key of its ceiling.
STAGES: list[tuple[Key, Callable[[Setup], Callable[[], float]], Key | None]] = [
    (Key.CUT_KERNEL, kernel_rate, Key.CUT_CEILING),
    (Key.CUTTER, partial(on_article_job, cutter_rate), Key.CUT_CEILING),
    (Key.GENERATION, partial(on_article_job, tasks_rate), Key.CUT_CEILING),
    (Key.STREAM_READS, stream_read_rate, Key.CUT_CEILING),
    (Key.STREAM_LOOP, loop_rate, Key.CUT_CEILING),
    (Key.STEP3_STACKED, stacked_peer, Key.CUT_CEILING),
    (Key.CUT_CEILING, ceiling, None),
    (Key.STREAM_LOOP_FLOAT32, partial(loop_rate, dtype="float32"), None),
    (Key.STEP3_STACKED_FLOAT32, partial(stacked_peer, dtype="float32"), None),
    (Key.STREAM_LOOP_ROW_WINDOWS, partial(loop_rate, row_mode="window"), None),
]


def measure(setup: Setup) -> list[Row]:
    """Every stage of the cut and its peers, each held warm in an interpreter of its own
    (as a training run holds one stream), in alternating rounds; medians."""
    with ExitStack() as held:
        measurements = {key: held.enter_context(Resident(make, setup)) for key, make, _ in STAGES}
        rates = median_of_rounds(measurements, ROUNDS)
    note = f"(median of {ROUNDS} alternating rounds, each warm in its own process)"
    return [Row(key, rates[key], CUBES_PER_S, ceiling, note) for key, _, ceiling in STAGES]
