"""The stages of a run, wired from a :class:`Config`: generate → ingest → sample.

Each stage validates its inputs before writing anything, holds the lease of the store
it writes (see :mod:`daskcubes.lease`), runs only the tasks whose work is not yet
recorded as finished, records each finished task in the store (see
:mod:`daskcubes.progress`), and marks the store complete at the end. ``mode`` says
what to do with existing output: refuse it (``new``), replace it (``overwrite``) or
finish it (``resume``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, replace

import numpy as np
from dask.base import tokenize
from dask.typing import Key
from tqdm import tqdm

from daskcubes.config import Config
from daskcubes.errors import UserError
from daskcubes.executors import Executor, open_executor
from daskcubes.frames import find_frame_files
from daskcubes.ingest import ingest_tasks, inspect_frames
from daskcubes.lease import check_workers_see, hold_lease
from daskcubes.progress import Progress, ProgressRecord, Work
from daskcubes.sample import sample_job, sample_tasks, warm_worker
from daskcubes.schema import CubeSchema
from daskcubes.storage import Storage, StorageUnavailable
from daskcubes.store import WriteMode, create_cube_store, create_frames_store, mark_complete
from daskcubes.synthetic import (
    prepare_frame_directory,
    synthetic_frame_path,
    write_synthetic_frame,
)


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

    @property
    def rate(self) -> float:
        made = self.items - self.resumed
        return made / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        earlier = f" ({self.resumed} made by an earlier run)" if self.resumed else ""
        return (
            f"{self.stage}: {self.items} {self.unit}{earlier}, {self.nbytes / 1e9:.2f} GB; "
            f"start-up {self.startup:.1f} s, {self.tasks} tasks {self.seconds:.1f} s, "
            f"{self.rate:.1f} {self.unit}/s -> {self.path}"
        )


@dataclass(frozen=True)
class Stage:
    """One stage, as its lifecycle (:func:`run_stage`) needs it.

    ``name`` makes ``total`` things of ``unit`` (``nbytes`` bytes) at ``path``, which
    errors call ``what``, on ``storage``; the tasks read ``inputs`` (``(what, path)``
    pairs), which the workers must see. The callables, in the order they are called:

    - ``prepare(executor)``: check what the tasks need of the workers before anything
      is written (the stage's lease is taken next, and the workers' view of the stores
      checked);
    - ``load(executor)``: load on the workers what every task needs (start-up);
    - ``open(mode)``: create the output, or reopen it to resume (checking that it was
      started with the same settings); return its progress, or None if it is complete;
    - ``work(done)``: the tasks not yet done, given the finished units by kind;
    - ``made(done)``: how many of ``total`` the finished units stand for;
    - ``finish()``: mark the output complete, once every task has finished.
    """

    name: str
    what: str
    path: str
    unit: str
    total: int
    nbytes: int
    prepare: Callable[[Executor], None]
    open: Callable[[WriteMode], Progress | None]
    work: Callable[[dict[str, set[int]]], Work]
    made: Callable[[dict[str, set[int]]], int]
    finish: Callable[[], None]
    storage: Storage
    inputs: tuple[tuple[str, str], ...] = ()
    load: Callable[[Executor], None] = lambda executor: None


@contextmanager
def _progress_bar(total: int, what: str, enabled: bool) -> Iterator[Callable[[], object]]:
    with tqdm(total=total, desc=what, unit="task", disable=not enabled, leave=False) as bar:
        yield bar.update


def run_stage(
    stage: Stage,
    config: Config,
    mode: WriteMode,
    show_progress: bool,
    executor: Executor | None,
) -> StageResult:
    """The lifecycle every stage shares: take the output's lease, check that the workers
    see the output and the inputs, create or resume the output, run the tasks whose work
    is not yet recorded as finished, recording each as it ends, and mark the output
    complete if the lease is still this run's.

    Runs on ``executor``, or on one opened from ``config`` for this stage alone. The
    record is saved however the run ends (an error, Ctrl-C), so that ``--resume`` redoes
    only what did not finish.
    """
    entered = time.perf_counter()
    with ExitStack() as stack:
        run_on = stack.enter_context(open_executor(config, executor))
        stage.prepare(run_on)
        held = stack.enter_context(
            hold_lease(
                stage.path,
                stage.what,
                stage.storage,
                config.lease_seconds,
                config.break_lease,
                config.write_without_lease,
            )
        )
        try:
            cluster = config.cluster_address or f"this {config.scheduler} run"
            check_workers_see(run_on, held, stage.inputs, stage.storage, cluster)
            stage.load(run_on)
            progress = stage.open(mode)
            if progress is None:
                return StageResult(
                    stage.name, stage.total, stage.unit, stage.nbytes, 0.0, stage.path, stage.total
                )
            resumed = stage.made(progress.done)
            work = stage.work(progress.done)
            started = time.perf_counter()
            with _progress_bar(len(work.graph), stage.name, show_progress) as advance:

                def on_done(key: Key) -> None:
                    held.check()  # a run that lost its lease stops writing
                    progress.finished(*work.finishes[key])
                    advance()

                try:
                    run_on.run(work.graph, list(work.graph), on_done)
                finally:
                    # A full disk, or storage that stopped answering: the error being
                    # raised says so.
                    with suppress(OSError, StorageUnavailable):
                        progress.save()
            seconds = time.perf_counter() - started
            held.confirm()
            stage.finish()
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
        tasks=len(work.graph),
    )


def generate(
    config: Config,
    mode: WriteMode = "new",
    show_progress: bool = True,
    executor: Executor | None = None,
) -> StageResult:
    """Write ``n_frames`` synthetic frame files into the ``frames`` directory.

    Frame files are written whole or not at all, so resuming writes only the missing ones.
    """
    storage = Storage.of(config.storage_options, config.storage_retry_seconds)
    fmt = config.frame_format
    paths = [synthetic_frame_path(config.frames, fmt, i) for i in range(config.n_frames)]

    def open_frames(mode: WriteMode) -> Progress:
        prepare_frame_directory(config.frames, mode, storage)
        return Progress({"frames": {i for i, path in enumerate(paths) if storage.exists(path)}})

    def work(done: dict[str, set[int]]) -> Work:
        token = tokenize(config)
        keys = {
            i: (f"generate-{token}", i) for i in range(config.n_frames) if i not in done["frames"]
        }
        return Work(
            {
                key: (
                    write_synthetic_frame,
                    config.frames,
                    fmt,
                    config.seed,
                    i,
                    config.n_rows,
                    config.n_cols,
                    storage,
                )
                for i, key in keys.items()
            },
            {key: ("frames", [i]) for i, key in keys.items()},
        )

    stage = Stage(
        "generate",
        "frames",
        config.frames,
        "frames",
        config.n_frames,
        0,
        prepare=lambda executor: None,
        open=open_frames,
        work=work,
        made=lambda done: len(done["frames"]),
        finish=lambda: None,  # a frame file exists only once whole: nothing to mark
        storage=storage,
    )
    result = run_stage(stage, config, mode, show_progress, executor)
    files, spec = inspect_frames(find_frame_files(config.frames, storage), storage)
    if (len(files), spec.n_rows, spec.n_cols) != (config.n_frames, config.n_rows, config.n_cols):
        raise UserError(
            f"frames '{config.frames}': holds {len(files)} frames of {spec.n_rows} x "
            f"{spec.n_cols}; this run makes {config.n_frames} of {config.n_rows} x "
            f"{config.n_cols} (pass --overwrite to replace them)"
        )
    return replace(result, nbytes=sum(f.size for f in files))


def ingest(
    config: Config,
    mode: WriteMode = "new",
    show_progress: bool = True,
    executor: Executor | None = None,
) -> StageResult:
    """Read the frame files into the zarr frames store, then mark it complete."""
    storage = Storage.of(config.storage_options, config.storage_retry_seconds)
    files, spec = inspect_frames(find_frame_files(config.frames, storage), storage)
    path = config.frames_store

    def open_store(mode: WriteMode) -> Progress | None:
        attrs = create_frames_store(path, files, spec, mode, storage)
        return None if attrs["complete"] else ProgressRecord(path, storage)

    stage = Stage(
        "ingest",
        "frames store",
        path,
        "frames",
        len(files),
        len(files) * spec.n_rows * spec.n_cols * np.dtype(spec.dtype).itemsize,
        prepare=lambda executor: None,
        open=open_store,
        work=lambda done: ingest_tasks(
            files, spec, path, config.allow_nonfinite, storage, done.get("frames", set())
        ),
        made=lambda done: len(done.get("frames", ())),
        finish=lambda: mark_complete(path, storage, frames=len(files)),
        storage=storage,
        inputs=(("frame file", files[0].path),),
    )
    return run_stage(stage, config, mode, show_progress, executor)


def sample(
    config: Config,
    mode: WriteMode = "new",
    show_progress: bool = True,
    executor: Executor | None = None,
) -> StageResult:
    """Cut ``cubes`` cubes from the frames store into the cube store, then mark it complete."""
    job = sample_job(config)

    def prepare(executor: Executor) -> None:
        # The source budget depends on the workers: known once the executor is open. A
        # source kept whole is loaded on every worker (load): start-up, not cutting.
        nonlocal job
        job = sample_job(config, executor.worker_memory(), executor.worker_threads())

    plan = job.plan
    schema = CubeSchema(plan, config.dtype, config.compressor, job.frames.fingerprint)
    provenance = {
        "config": config.model_dump(exclude={"storage_options"}),  # may hold credentials
        "seed": config.seed,
        "frames_store": {"path": job.frames.path, "fingerprint": job.frames.fingerprint},
    }

    def open_store(mode: WriteMode) -> Progress | None:
        attrs = create_cube_store(config.out, schema, provenance, mode, job.storage)
        return None if attrs["complete"] else ProgressRecord(config.out, job.storage)

    stage = Stage(
        "sample",
        "cube store",
        config.out,
        "cubes",
        plan.n_cubes,
        plan.n_cubes * int(np.prod(plan.cube_shape)) * np.dtype(config.dtype).itemsize,
        prepare=prepare,
        load=lambda executor: executor.on_each_worker(warm_worker, job),
        open=open_store,
        work=lambda done: sample_tasks(job, done.get("shards", set()), done.get("recipes", set())),
        made=lambda done: sum(len(range(*plan.shard_bounds(s))) for s in done.get("shards", ())),
        finish=lambda: mark_complete(config.out, job.storage, cubes=plan.n_cubes),
        storage=job.storage,
        inputs=(("frames store", config.frames_store),),
    )
    return run_stage(stage, config, mode, show_progress, executor)


def run(config: Config, mode: WriteMode = "new", show_progress: bool = True) -> list[StageResult]:
    """The whole job: (synthetic frames →) frames store → cube store, on one executor.

    Starting the executor (a cluster) counts as the first stage's start-up.
    """
    entered = time.perf_counter()
    with open_executor(config) as executor:
        opened = time.perf_counter() - entered
        results = [generate(config, mode, show_progress, executor)] if config.synthetic else []
        results.append(ingest(config, mode, show_progress, executor))
        results.append(sample(config, mode, show_progress, executor))
    results[0] = replace(results[0], startup=results[0].startup + opened)
    return results
