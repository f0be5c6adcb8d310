"""The stages of a run, wired from a :class:`Config`: generate → ingest → sample.

Each stage validates its inputs before writing anything, holds a lock on the store it
writes, runs only the tasks whose work is not yet recorded as finished, records each
finished task in the store (see :mod:`daskcubes.progress`), and marks the store
complete at the end. ``mode`` says what to do with existing output: refuse it
(``new``), replace it (``overwrite``) or finish it (``resume``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import numpy as np
from dask.base import tokenize
from dask.core import flatten
from dask.typing import Key
from tqdm import tqdm

from daskcubes.config import Config
from daskcubes.errors import UserError
from daskcubes.executors import Executor, open_executor
from daskcubes.frames import find_frame_files
from daskcubes.ingest import ingest_graph, inspect_frames
from daskcubes.progress import ProgressRecord
from daskcubes.sample import check_slab_fits, sample_graph, sample_job
from daskcubes.storage import Storage
from daskcubes.store import (
    WriteMode,
    create_cube_store,
    cube_plan_attrs,
    mark_complete,
    store_lock,
)
from daskcubes.synthetic import (
    prepare_frame_directory,
    synthetic_frame_path,
    write_synthetic_frame,
)


@dataclass(frozen=True)
class StageResult:
    """What a stage made: ``items`` things of ``unit`` (of which ``resumed`` had been made
    by an earlier, interrupted run), ``nbytes`` bytes, at ``path``."""

    stage: str
    items: int
    unit: str
    nbytes: int
    seconds: float
    path: str
    resumed: int = 0

    @property
    def rate(self) -> float:
        made = self.items - self.resumed
        return made / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        earlier = f" ({self.resumed} made by an earlier run)" if self.resumed else ""
        return (
            f"{self.stage}: {self.items} {self.unit}{earlier}, {self.nbytes / 1e9:.2f} GB, "
            f"{self.seconds:.1f} s, {self.rate:.1f} {self.unit}/s -> {self.path}"
        )


@contextmanager
def _progress_bar(total: int, what: str, enabled: bool) -> Iterator[Callable[[], object]]:
    with tqdm(total=total, desc=what, unit="task", disable=not enabled, leave=False) as bar:
        yield bar.update


def _execute(
    config: Config,
    graph: Any,
    keys: list[Key],
    finished: Callable[[Key], None],
    record: ProgressRecord | None,
    what: str,
    show_progress: bool,
    executor: Executor | None,
) -> float:
    """Run the tasks ``keys`` of ``graph``, calling ``finished(key)`` as each ends; seconds.

    Runs on ``executor``, or on one opened from ``config`` for this stage alone. The
    record is saved however the run ends (an error, Ctrl-C), so that ``--resume`` redoes
    only what did not finish.
    """
    with open_executor(config, executor) as run_on:
        started = time.perf_counter()
        with _progress_bar(len(keys), what, show_progress) as advance:

            def on_done(key: Key) -> None:
                finished(key)
                advance()

            try:
                run_on.run(graph, keys, on_done)
            finally:
                if record is not None:
                    with suppress(OSError):  # a full disk: the error being raised says so
                        record.save()
        return time.perf_counter() - started


def generate(
    config: Config,
    mode: WriteMode = "new",
    show_progress: bool = True,
    executor: Executor | None = None,
) -> StageResult:
    """Write ``n_frames`` synthetic frame files into the ``frames`` directory.

    Frame files are written whole or not at all, so resuming writes only the missing ones.
    """
    storage = Storage.of(config.storage_options)
    prepare_frame_directory(config.frames, mode, storage)
    token = tokenize(config)
    fmt = config.frame_format
    todo = [
        i
        for i in range(config.n_frames)
        if not storage.exists(synthetic_frame_path(config.frames, fmt, i))
    ]
    graph: dict[Key, Any] = {
        (f"generate-{token}", i): (
            write_synthetic_frame,
            config.frames,
            fmt,
            config.seed,
            i,
            config.n_rows,
            config.n_cols,
            storage,
        )
        for i in todo
    }
    seconds = _execute(
        config, graph, list(graph), _ignore, None, "generate", show_progress, executor
    )
    files, spec = inspect_frames(find_frame_files(config.frames, storage), storage)
    if (len(files), spec.n_rows, spec.n_cols) != (config.n_frames, config.n_rows, config.n_cols):
        raise UserError(
            f"frames '{config.frames}': holds {len(files)} frames of {spec.n_rows} x "
            f"{spec.n_cols}; this run makes {config.n_frames} of {config.n_rows} x "
            f"{config.n_cols} (pass --overwrite to replace them)"
        )
    return StageResult(
        "generate",
        config.n_frames,
        "frames",
        sum(f.size for f in files),
        seconds,
        config.frames,
        resumed=config.n_frames - len(todo),
    )


def _ignore(key: Key) -> None:
    """Generated frames need no record: a frame file exists only once it is whole."""


def ingest(
    config: Config,
    mode: WriteMode = "new",
    show_progress: bool = True,
    executor: Executor | None = None,
) -> StageResult:
    """Read the frame files into the zarr frames store, then mark it complete."""
    storage = Storage.of(config.storage_options)
    files, spec = inspect_frames(find_frame_files(config.frames, storage), storage)
    nbytes = len(files) * spec.n_rows * spec.n_cols * np.dtype(spec.dtype).itemsize
    path = config.frames_store
    with store_lock(path, "frames store"):
        stored, attrs = ingest_graph(files, spec, path, config.allow_nonfinite, mode, storage)
        if attrs["complete"]:
            return StageResult("ingest", len(files), "frames", nbytes, 0.0, path, len(files))
        record = ProgressRecord(path, storage)
        done = set(record.done.get("frames", ()))
        # Write tasks are keyed (name, frame, row chunk, col chunk); a frame is finished
        # once all its chunks are written.
        keys = [key for key in flatten(stored.__dask_keys__()) if key[1] not in done]
        chunks_left = Counter(key[1] for key in keys)

        def finished(key: Key) -> None:
            frame: int = key[1]  # type: ignore[index,assignment]
            chunks_left[frame] -= 1
            if not chunks_left[frame]:
                record.finished("frames", [frame])

        graph = stored.__dask_graph__()
        seconds = _execute(config, graph, keys, finished, record, "ingest", show_progress, executor)
        mark_complete(path, storage, frames=len(files))
    return StageResult("ingest", len(files), "frames", nbytes, seconds, path, len(done))


def sample(
    config: Config,
    mode: WriteMode = "new",
    show_progress: bool = True,
    executor: Executor | None = None,
) -> StageResult:
    """Cut ``cubes`` cubes from the frames store into the cube store, then mark it complete."""
    job = sample_job(config)
    plan = job.plan
    nbytes = plan.n_cubes * plan.depth * plan.dim**2 * np.dtype(config.dtype).itemsize
    provenance = {
        "config": config.model_dump(exclude={"storage_options"}),  # may hold credentials
        "seed": config.seed,
        "frames_store": {"path": job.frames.path, "fingerprint": job.frames.fingerprint},
    }
    plan_attrs = cube_plan_attrs(plan, config.dtype, config.compressor, job.frames.fingerprint)
    with open_executor(config, executor) as executor, store_lock(config.out, "cube store"):
        check_slab_fits(job, executor.worker_memory())
        attrs = create_cube_store(config.out, plan_attrs, provenance, mode, job.storage)
        if attrs["complete"]:
            return StageResult(
                "sample", plan.n_cubes, "cubes", nbytes, 0.0, config.out, plan.n_cubes
            )
        record = ProgressRecord(config.out, job.storage)
        done = record.done.setdefault("shards", set())
        resumed = sum(len(range(*plan.shard_bounds(s))) for s in done)
        graph, finishes = sample_graph(job, done, record.done.setdefault("recipes", set()))

        def finished(key: Key) -> None:
            kind, units = finishes[key]
            record.finished(kind, units)

        seconds = _execute(
            config, graph, list(graph), finished, record, "sample", show_progress, executor
        )
        mark_complete(config.out, job.storage, cubes=plan.n_cubes)
    return StageResult("sample", plan.n_cubes, "cubes", nbytes, seconds, config.out, resumed)


def run(config: Config, mode: WriteMode = "new", show_progress: bool = True) -> list[StageResult]:
    """The whole job: (synthetic frames →) frames store → cube store, on one executor."""
    with open_executor(config) as executor:
        results = [generate(config, mode, show_progress, executor)] if config.synthetic else []
        results.append(ingest(config, mode, show_progress, executor))
        results.append(sample(config, mode, show_progress, executor))
    return results
