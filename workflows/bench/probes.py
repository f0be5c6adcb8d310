"""Planning time and peak memory, each measured in a fresh interpreter; and
:class:`Resident`, a measurement held warm in an interpreter of its own."""

from __future__ import annotations

import multiprocessing
import resource
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import daskcubes
from bench.data import Setup, scratch_path
from bench.rows import MIB, SECONDS, Key, Row
from daskcubes import jobs
from daskcubes.runtime.tasks import SampleJob, sample_tasks


def _peak_mib() -> float:
    """This process's peak resident memory in MiB."""
    # ru_maxrss survives exec, so a child started from a big parent would report the
    # parent's peak; the kernel's high-water mark of this address space does not.
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def plan_in_process(setup: Setup, store: str) -> tuple[float, float]:
    """Seconds and peak MiB of planning ``plan_cubes`` cubes: the job (its plan, the
    frames store's facts) and the task graph of a fresh run.

    The public API plans and runs in one call, so this row calls :mod:`daskcubes.jobs`
    and the runtime layer's :mod:`daskcubes.runtime.tasks`; what the store's creation
    adds (writing its metadata) does not grow with the cubes."""
    started = time.perf_counter()
    config = setup.config(cubes=setup.plan_cubes, out=store)
    job = SampleJob(jobs.cut_job(config), config.out, uuid.uuid4().hex)
    assert sample_tasks(job, set(), set()).graph
    return time.perf_counter() - started, _peak_mib()


def sample_in_process(setup: Setup, cubes: int, store: str) -> float:
    """Peak MiB of a whole daskcubes ``sample`` run of ``cubes`` cubes."""
    daskcubes.sample(setup.config(cubes=cubes, out=store), mode="overwrite", progress=False)
    return _peak_mib()


def in_fresh_process(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` in a new interpreter, so its peak memory is its own."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


K = TypeVar("K")
T = TypeVar("T")

#: What the interpreter of a :class:`Resident` holds: its measurement, once built.
_held: list[Callable[[], Any]] = []


def _hold(make: Callable[..., Callable[[], Any]], *args: Any) -> None:
    _held[:] = [make(*args)]
    _held[0]()  # warm: sources loaded, kernels compiled, buffers touched


def _run_held() -> Any:
    return _held[0]()


class Resident:
    """A measurement held in an interpreter of its own, as a training run holds its
    loader: ``make(*args)`` builds it there once and runs it once untimed (start-up: the
    source loaded, code compiled, buffers touched), then each call runs it again and
    returns what it returns (a rate). Measurements that alternate in rounds so keep
    nothing of each other's: no slab that another replaced (a process keeps one), no
    allocator state that another left. ``peak_mib`` is the interpreter's peak memory.
    """

    def __init__(self, make: Callable[..., Callable[[], Any]], *args: Any) -> None:
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        try:
            self._pool.submit(_hold, make, *args).result()
        except BaseException:
            self.close()
            raise

    def __call__(self) -> Any:
        return self._pool.submit(_run_held).result()

    def peak_mib(self) -> float:
        return float(self._pool.submit(_peak_mib).result())

    def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in this measurement's interpreter (e.g. to read what the
        measurement recorded there)."""
        return self._pool.submit(function, *args).result()

    def close(self) -> None:
        self._pool.shutdown()

    def __enter__(self) -> Resident:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def median_of_rounds(measurements: Mapping[K, Callable[[], float]], rounds: int) -> dict[K, float]:
    """Each measurement's median over ``rounds`` rounds, each round running every one in
    turn: a disturbance hits every measurement of a round, not all rounds of one."""
    rates: dict[K, list[float]] = {key: [] for key in measurements}
    for _ in range(rounds):
        for key, measure in measurements.items():
            rates[key].append(measure())
    return {key: statistics.median(values) for key, values in rates.items()}


def measure_planning_and_memory(setup: Setup) -> list[Row]:
    """Planning ``plan_cubes`` cubes (time, peak memory); peak memory of two run sizes."""
    with scratch_path(setup, "plan.zarr") as path:
        seconds, plan_mib = in_fresh_process(plan_in_process, setup, str(path))
    planned = f"({setup.plan_cubes:,} cubes)"
    rows = [
        Row(Key.PLAN_TIME, seconds, SECONDS, note=planned),
        Row(Key.PLAN_MEMORY, plan_mib, MIB, note=planned),
    ]
    # Runs this size would fill tmpfs, so they write under memory_dir (disk by default).
    with tempfile.TemporaryDirectory(dir=setup.memory_dir) as folder:
        sizes = zip([Key.MEMORY_SMALL, Key.MEMORY_LARGE], setup.memory_cubes, strict=True)
        for key, cubes in sizes:
            store = str(Path(folder) / f"cubes-{cubes}.zarr")
            mib = in_fresh_process(sample_in_process, setup, cubes, store)
            shutil.rmtree(store)
            rows.append(Row(key, mib, MIB, note=f"({cubes:,} cubes)"))
    return rows
