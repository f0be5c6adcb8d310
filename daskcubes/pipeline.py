"""The stages of a run, wired from a :class:`Config`: generate → ingest → sample.

Each stage validates its inputs before writing anything, runs its tasks on the
configured executor with a progress bar, and returns a :class:`StageResult`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from dask.base import tokenize
from dask.core import flatten
from dask.typing import Key
from tqdm import tqdm

from daskcubes.config import Config
from daskcubes.executors import Executor, OnDone, open_executor
from daskcubes.frames import find_frame_files
from daskcubes.ingest import ingest_graph, inspect_frames
from daskcubes.plan import CubePlan
from daskcubes.sample import SampleJob, sample_graph
from daskcubes.store import create_cube_store, frames_store_info, mark_complete
from daskcubes.synthetic import prepare_frame_directory, write_synthetic_frame


@dataclass(frozen=True)
class StageResult:
    """What a stage made: ``items`` things of ``unit``, ``nbytes`` bytes, at ``path``."""

    stage: str
    items: int
    unit: str
    nbytes: int
    seconds: float
    path: str

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> str:
        return (
            f"{self.stage}: {self.items} {self.unit}, {self.nbytes / 1e9:.2f} GB, "
            f"{self.seconds:.1f} s, {self.rate:.1f} {self.unit}/s -> {self.path}"
        )


@contextmanager
def progress(total: int, what: str, enabled: bool) -> Iterator[OnDone]:
    """A progress bar on stderr, advanced by the ``on_done`` callback it yields."""
    with tqdm(total=total, desc=what, unit="task", disable=not enabled, leave=False) as bar:
        yield lambda key: bar.update()


def generate(
    config: Config,
    overwrite: bool = False,
    show_progress: bool = True,
    executor: Executor | None = None,
) -> StageResult:
    """Write ``n_frames`` synthetic frame files into the ``frames`` directory."""
    prepare_frame_directory(config.frames, overwrite)
    token = tokenize(config)
    graph: dict[Key, Any] = {
        (f"generate-{token}", i): (
            write_synthetic_frame,
            config.frames,
            config.frame_format,
            config.seed,
            i,
            config.n_rows,
            config.n_cols,
        )
        for i in range(config.n_frames)
    }
    with open_executor(config, executor) as run_on:
        started = time.perf_counter()
        with progress(len(graph), "generate", show_progress) as on_done:
            run_on.run(graph, list(graph), on_done)
    seconds = time.perf_counter() - started
    nbytes = sum(f.size for f in inspect_frames(find_frame_files(config.frames))[0])
    return StageResult("generate", config.n_frames, "frames", nbytes, seconds, config.frames)


def ingest(
    config: Config,
    overwrite: bool = False,
    show_progress: bool = True,
    executor: Executor | None = None,
) -> StageResult:
    """Read the frame files into the zarr frames store, then mark it complete."""
    files, spec = inspect_frames(find_frame_files(config.frames))
    stored = ingest_graph(files, spec, config.frames_store, config.allow_nonfinite, overwrite)
    graph, keys = stored.__dask_graph__(), list(flatten(stored.__dask_keys__()))
    with open_executor(config, executor) as run_on:
        started = time.perf_counter()
        with progress(len(keys), "ingest", show_progress) as on_done:
            run_on.run(graph, keys, on_done)
    seconds = time.perf_counter() - started
    mark_complete(config.frames_store, frames=len(files))
    nbytes = len(files) * spec.n_rows * spec.n_cols * np.dtype(spec.dtype).itemsize
    return StageResult("ingest", len(files), "frames", nbytes, seconds, config.frames_store)


def sample_job(config: Config) -> SampleJob:
    """The sampling job for ``config``: the plan checked against the frames store."""
    frames = frames_store_info(config.frames_store)
    depth, n_rows, n_cols = frames.shape
    plan = CubePlan(
        n_cubes=config.cubes,
        dim=config.dim,
        depth=depth,
        n_rows=n_rows,
        n_cols=n_cols,
        seed=config.seed,
        batch_size=config.batch_size,
        shard_size=config.shard_size,
    )
    return SampleJob(frames=frames, out=config.out, plan=plan, dtype=config.dtype)


def sample(
    config: Config,
    overwrite: bool = False,
    show_progress: bool = True,
    executor: Executor | None = None,
) -> StageResult:
    """Cut ``cubes`` cubes from the frames store into the cube store, then mark it complete."""
    job = sample_job(config)
    provenance = {
        "config": config.model_dump(),
        "seed": config.seed,
        "frames_store": {"path": job.frames.path, "fingerprint": job.frames.fingerprint},
    }
    create_cube_store(config.out, job.plan, config.dtype, config.compressor, provenance, overwrite)
    graph = sample_graph(job)
    with open_executor(config, executor) as run_on:
        started = time.perf_counter()
        with progress(len(graph), "sample", show_progress) as on_done:
            run_on.run(graph, list(graph), on_done)
    seconds = time.perf_counter() - started
    mark_complete(config.out, cubes=config.cubes)
    nbytes = config.cubes * job.plan.depth * job.plan.dim**2 * np.dtype(config.dtype).itemsize
    return StageResult("sample", config.cubes, "cubes", nbytes, seconds, config.out)


def run(config: Config, overwrite: bool = False, show_progress: bool = True) -> list[StageResult]:
    """The whole job: (synthetic frames →) frames store → cube store, on one executor."""
    with open_executor(config) as executor:
        results = [generate(config, overwrite, show_progress, executor)] if config.synthetic else []
        results.append(ingest(config, overwrite, show_progress, executor))
        results.append(sample(config, overwrite, show_progress, executor))
    return results
