"""The stages of a run: generate → ingest → sample.

Each stage takes what it makes as plain values (a job), the executor it runs on and the
terms of the lease it holds; :mod:`daskcubes.jobs` makes those from the settings. Each
stage validates its inputs before writing anything, holds the lease of the store
it writes (see :mod:`daskcubes.io.lease`), runs only the tasks whose work is not yet
recorded as finished, records each finished task in the store (see
:mod:`daskcubes.io.progress`), and marks the store complete at the end. ``mode`` says
what to do with existing output: refuse it (``new``), replace it (``overwrite``) or
finish it (``resume``).
"""

from __future__ import annotations

import errno
import html
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

import numpy as np
from dask.typing import Key
from tqdm.auto import tqdm as auto_tqdm

from daskcubes.core.plan import Tiling
from daskcubes.cut.cutter import warm_worker
from daskcubes.cut.job import for_workers
from daskcubes.errors import UserError
from daskcubes.io.layout import (
    WriteMode,
    create_cube_store,
    create_frames_store,
    mark_complete,
    store_arrays,
)
from daskcubes.io.lease import LeaseTerms, hold_lease
from daskcubes.io.progress import Progress, ProgressRecord, Work
from daskcubes.io.sources import VolumeSource, check_dataset
from daskcubes.io.storage import Storage, StorageUnavailable
from daskcubes.io.synthetic import (
    SyntheticFrames,
    check_synthetic_frames,
    prepare_frame_directory,
    synthetic_frames_made,
    synthetic_tasks,
)
from daskcubes.runtime.executors import Executor
from daskcubes.runtime.tasks import SampleJob, ingest_tasks, sample_tasks
from daskcubes.runtime.workers import check_workers_see


@dataclass(frozen=True)
class StageResult:
    """What a stage made: ``items`` things of ``unit`` (of which ``resumed`` had been made
    by an earlier, interrupted run), ``nbytes`` bytes, at ``path``, in ``tasks`` tasks.

    ``startup`` seconds went to fixed costs before the first task (starting a cluster,
    loading the source slab on the workers, opening the store), ``seconds`` to the tasks:
    the rate is the tasks' alone, so that a small job does not report mostly start-up.
    """

    stage: str
    items: int
    unit: str
    nbytes: int
    seconds: float
    path: str
    resumed: int = 0
    startup: float = 0.0
    tasks: int = 0
    #: The output was complete before this run: it had nothing to do.
    already_complete: bool = False

    @property
    def rate(self) -> float:
        made = self.items - self.resumed
        return made / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        if self.already_complete:
            return f"{self.stage}: {self.path} was already complete ({self.items} {self.unit})"
        earlier = f" ({self.resumed} made by an earlier run)" if self.resumed else ""
        return (
            f"{self.stage}: {self.items} {self.unit}{earlier}, {self.nbytes / 1e9:.2f} GB; "
            # The tasks' time to the millisecond: the benchmark reads it from this line,
            # and a run of 188 tiny tasks takes less than 0.05 s.
            f"start-up {self.startup:.1f} s, {self.tasks} tasks {self.seconds:.3f} s, "
            f"{self.rate:.1f} {self.unit}/s -> {self.path}"
        )

    def __str__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:  # how a notebook shows it
        return _html_table([self])


def _rate(result: StageResult) -> str:
    return "complete already" if result.already_complete else f"{result.rate:.1f} {result.unit}/s"


def _html_table(results: list[StageResult], caption: str = "") -> str:
    head = "".join(f"<th>{name}</th>" for name in ("stage", "made", "GB", "s", "rate", "path"))
    rows = "".join(
        f"<tr><td>{r.stage}</td><td>{r.items} {r.unit}</td><td>{r.nbytes / 1e9:.2f}</td>"
        f"<td>{r.seconds:.1f}</td><td>{_rate(r)}</td>"
        f"<td><code>{html.escape(r.path)}</code></td></tr>"
        for r in results
    )
    title = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{title}<tr>{head}</tr>{rows}</table>"


@dataclass(frozen=True)
class RunResult:
    """The stages of a whole run, the last of which made the cube store."""

    stages: list[StageResult]

    @property
    def path(self) -> str:
        """The cube store the run made."""
        return self.stages[-1].path

    def summary(self) -> str:
        """One line: the cubes made, the rate of cutting them, and where they are."""
        last = self.stages[-1]
        if last.already_complete:
            return f"daskcubes: cube store {last.path} was already complete ({last.items} cubes)"
        startup = sum(stage.startup for stage in self.stages)
        return (
            f"daskcubes: {last.items} cubes, {last.nbytes / 1e9:.2f} GB; cutting "
            f"{last.seconds:.1f} s in {last.tasks} tasks, {last.rate:.1f} cubes/s (start-up "
            f"{startup:.1f} s apart); cube store {last.path}"
        )

    def __str__(self) -> str:
        return "\n".join([*(stage.summary() for stage in self.stages), self.summary()])

    def _repr_html_(self) -> str:
        return _html_table(self.stages, self.summary())


#: What a stage's ``prepare`` hands its ``work``: what its tasks carry, made for the workers.
Prepared = TypeVar("Prepared")


@dataclass(frozen=True)
class Stage(Generic[Prepared]):
    """One stage, as its lifecycle (:func:`run_stage`) needs it.

    ``name`` makes ``total`` things of ``unit`` (``nbytes`` bytes) at ``path``, which
    errors call ``what``, on ``storage``; the tasks read ``inputs`` (``(what, path)``
    pairs), which the workers must see. The callables, in the order they are called:

    - ``prepare(executor)``: check what the tasks need of the workers before anything
      is written; returns what ``load`` and ``work`` need (the stage's lease is taken
      next, and the workers' view of the stores checked);
    - ``load(executor, prepared)``: load on the workers what every task needs (start-up);
    - ``open(mode)``: create the output, or reopen it to resume (checking that it was
      started with the same settings); return its progress, or None if it is complete;
    - ``work(prepared, done)``: the tasks not yet done, given what ``prepare`` returned
      and the finished units by kind;
    - ``made(done)``: how many of ``total`` the finished units stand for;
    - ``finish()``: mark the output complete, once every task has finished.
    """

    name: str
    what: str
    path: str
    unit: str
    total: int
    nbytes: int
    prepare: Callable[[Executor], Prepared]
    open: Callable[[WriteMode], Progress | None]
    work: Callable[[Prepared, dict[str, set[int]]], Work]
    made: Callable[[dict[str, set[int]]], int]
    finish: Callable[[], None]
    storage: Storage
    inputs: tuple[tuple[str, str], ...] = ()
    load: Callable[[Executor, Prepared], None] = lambda executor, prepared: None


#: Least seconds between two publications of a stage's progress to the executor.
PUBLISH_INTERVAL = 0.5


class _Watch:
    """Publishes a stage's progress (units made of the total, tasks done) through the
    executor, at most every :data:`PUBLISH_INTERVAL` seconds and once at the end."""

    def __init__(
        self, stage: Stage, executor: Executor, progress: Progress, tasks: int, resumed: int
    ) -> None:
        self._stage, self._executor, self._progress = stage, executor, progress
        self._record: dict[str, Any] = {
            "stage": stage.name,
            "path": stage.path,
            "unit": stage.unit,
            "total": stage.total,
            "resumed": resumed,
            "made": resumed,
            "tasks": tasks,
            "tasks_done": 0,
            "started": time.time(),
            "finished": None,
        }
        self._published = 0.0
        self.publish()

    def task_done(self) -> None:
        self._record["tasks_done"] += 1
        if time.monotonic() - self._published >= PUBLISH_INTERVAL:
            self.publish()

    def publish(self, finished: bool = False) -> None:
        self._record["made"] = self._stage.made(self._progress.done)
        if finished:
            self._record["finished"] = time.time()
        self._executor.publish(self._record)
        self._published = time.monotonic()


#: Least seconds between two lines of progress where stderr is not a terminal.
LOG_INTERVAL = 30.0


class _ProgressLines:
    """Progress as a line now and then (every :data:`LOG_INTERVAL` seconds, and at the
    end), for a log file or a batch job's output, where a redrawn bar would leave
    thousands of redraws."""

    def __init__(self, total: int, what: str) -> None:
        self.total, self.what, self.done = total, what, 0
        self.started = self.written = time.monotonic()

    def update(self) -> None:
        self.done += 1
        if time.monotonic() - self.written >= LOG_INTERVAL:
            self.write()

    def write(self) -> None:
        seconds = time.monotonic() - self.started
        rate = self.done / seconds if seconds > 0 else 0.0
        left = f", {(self.total - self.done) / rate:.0f} s left" if rate > 0 else ""
        share = self.done / self.total if self.total else 1.0
        print(
            f"daskcubes: {self.what}: {self.done} of {self.total} tasks ({share:.0%}), "
            f"{rate:.1f} tasks/s{left if self.done < self.total else ''}",
            file=sys.stderr,
            flush=True,
        )
        self.written = time.monotonic()


@contextmanager
def _progress_bar(total: int, what: str, enabled: bool) -> Iterator[Callable[[], object]]:
    """A progress bar in a terminal or a notebook (tqdm's auto mode picks the widget);
    elsewhere a line now and then; nothing when not ``enabled``."""
    if not enabled:
        yield lambda: None
    elif sys.stderr.isatty() or "ipykernel" in sys.modules:
        with auto_tqdm(total=total, desc=what, unit="task", leave=False) as bar:
            yield bar.update
    else:
        lines = _ProgressLines(total, what)
        yield lines.update
        lines.write()


@dataclass(frozen=True)
class StageOptions:
    """How a stage runs, whatever it makes: on ``executor``, holding a lease of ``lease``
    terms on its output, which ``mode`` refuses (``new``), replaces (``overwrite``) or
    finishes (``resume``); ``show_progress`` draws a progress bar."""

    executor: Executor
    lease: LeaseTerms = LeaseTerms()  # noqa: RUF009 (frozen: one shared default)
    mode: WriteMode = "new"
    show_progress: bool = True


def run_stage(stage: Stage[Any], options: StageOptions) -> StageResult:
    """The lifecycle every stage shares: take the output's lease, check that the workers
    see the output and the inputs, create or resume the output, run the tasks whose work
    is not yet recorded as finished, recording each as it ends, and mark the output
    complete if the lease is still this run's.

    The record is saved however the run ends (an error, Ctrl-C), so that ``--resume``
    redoes only what did not finish.
    """
    entered = time.perf_counter()
    with ExitStack() as stack:
        run_on = options.executor
        prepared = stage.prepare(run_on)
        held = stack.enter_context(hold_lease(stage.path, stage.what, stage.storage, options.lease))
        try:
            check_workers_see(run_on, held, stage.inputs, stage.storage, run_on.where)
            stage.load(run_on, prepared)
            progress = stage.open(options.mode)
            if progress is None:
                return StageResult(
                    stage.name,
                    stage.total,
                    stage.unit,
                    stage.nbytes,
                    0.0,
                    stage.path,
                    stage.total,
                    already_complete=True,
                )
            resumed = stage.made(progress.done)
            work = stage.work(prepared, progress.done)
            started = time.perf_counter()
            watch = _Watch(stage, run_on, progress, len(work.finishes), resumed)
            with _progress_bar(len(work.finishes), stage.name, options.show_progress) as advance:

                def on_done(key: Key) -> None:
                    held.check()  # a run that lost its lease stops writing
                    progress.finished(*work.finishes[key])
                    advance()
                    watch.task_done()

                try:
                    run_on.run(work.graph, list(work.finishes), on_done)
                finally:
                    # A full disk, or storage that stopped answering: the error being
                    # raised says so.
                    with suppress(OSError, StorageUnavailable):
                        progress.save()
            watch.publish(finished=True)
            seconds = time.perf_counter() - started
            held.confirm()
            stage.finish()
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
            # A full disk stops any task, which rarely knows the store it was writing.
            raise OSError(
                error.errno, os.strerror(error.errno), f"{stage.what} '{stage.path}'"
            ) from error
        except StorageUnavailable as error:
            raise UserError(
                f"{stage.what} '{stage.path}': storage {error.endpoint} did not answer for "
                f"{error.seconds:.0f} s ({error.reason}); the store is not marked complete: run "
                "the same command with --resume to finish it"
            ) from None
    return StageResult(
        stage.name,
        stage.total,
        stage.unit,
        stage.nbytes,
        seconds,
        stage.path,
        resumed,
        startup=started - entered,
        tasks=len(work.finishes),
    )


def generate(frames: SyntheticFrames, storage: Storage, options: StageOptions) -> StageResult:
    """Write the synthetic ``frames``, one file each, into their directory.

    Frame files are written whole or not at all, so resuming writes only the missing ones.
    """

    def open_frames(mode: WriteMode) -> Progress:
        prepare_frame_directory(frames.directory, mode, storage)
        return Progress({"frames": synthetic_frames_made(frames, storage)})

    stage = Stage(
        "generate",
        "frames",
        frames.directory,
        "frames",
        frames.n_frames,
        0,
        prepare=lambda executor: None,
        open=open_frames,
        work=lambda _, done: synthetic_tasks(frames, storage, done["frames"]),
        made=lambda done: len(done["frames"]),
        finish=lambda: None,  # a frame file exists only once whole: nothing to mark
        storage=storage,
    )
    result = run_stage(stage, options)
    return replace(result, nbytes=check_synthetic_frames(frames, storage))


def ingest(
    volumes: list[VolumeSource], path: str, storage: Storage, options: StageOptions
) -> StageResult:
    """Write the dataset ``volumes`` (their frames and paired arrays) into the zarr frames
    store at ``path``, then mark it complete."""
    check_dataset(volumes)
    arrays = store_arrays(volumes)
    n_frames = sum(source.shape[0] for _, source in arrays)

    def open_store(mode: WriteMode) -> Progress | None:
        attrs = create_frames_store(path, volumes, mode, storage)
        return None if attrs["complete"] else ProgressRecord(path, storage)

    stage = Stage(
        "ingest",
        "frames store",
        path,
        "frames",
        n_frames,
        sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for _, s in arrays),
        prepare=lambda executor: None,
        open=open_store,
        work=lambda _, done: ingest_tasks(arrays, path, storage, done.get("frames", set())),
        made=lambda done: len(done.get("frames", ())),
        finish=lambda: mark_complete(path, storage, frames=n_frames),
        storage=storage,
        inputs=tuple(("frames", s.location) for _, s in arrays if s.location),
    )
    return run_stage(stage, options)


def cubes_in(plan: Tiling, shards: set[int]) -> int:
    """The cubes in ``shards``: each holds ``shard_size``, the last what is left. Counted,
    not summed shard by shard: the count is taken at every publication of a run's
    progress, which then took 20 ms at 62,500 shards."""
    last_short = plan.n_shards * plan.shard_size - plan.n_cubes
    return len(shards) * plan.shard_size - (last_short if plan.n_shards - 1 in shards else 0)


def sample(
    job: SampleJob, compressor: str, provenance: dict[str, Any], options: StageOptions
) -> StageResult:
    """Cut the cubes of ``job`` from its frames store into its cube store (``job.out``,
    with ``compressor`` and the ``provenance`` attributes), then mark it complete."""
    cut = job.cut
    plan, frames, storage = cut.plan, cut.frames, cut.storage

    def prepare(executor: Executor) -> SampleJob:
        # The source budget depends on the workers: known once the executor is open.
        workers = for_workers(cut, executor.worker_memory(), executor.worker_threads())
        return replace(job, cut=workers)

    def load(executor: Executor, ready: SampleJob) -> None:
        # A source kept whole is loaded on every worker now: start-up, not cutting.
        executor.on_each_worker(warm_worker, ready.cut)

    schema = cut.schema(compressor)

    def open_store(mode: WriteMode) -> Progress | None:
        attrs = create_cube_store(job.out, schema, provenance, mode, storage)
        return None if attrs["complete"] else ProgressRecord(job.out, storage)

    stage = Stage(
        "sample",
        "cube store",
        job.out,
        "cubes",
        plan.n_cubes,
        plan.n_cubes * cut.cube_nbytes,
        prepare=prepare,
        load=load,
        open=open_store,
        work=lambda ready, done: sample_tasks(
            ready, done.get("shards", set()), done.get("recipes", set())
        ),
        made=lambda done: cubes_in(plan, done.get("shards", set())),
        finish=lambda: mark_complete(job.out, storage, cubes=plan.n_cubes),
        storage=storage,
        inputs=(("frames store", frames.path),),
    )
    return run_stage(stage, options)
