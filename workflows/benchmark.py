"""The article's ladder and daskcubes, measured side by side in one run on this machine.

    python workflows/benchmark.py            # the article's shapes (a few minutes)
    python workflows/benchmark.py --quick    # about a minute

Every measurement is a plain function ``measure_*(setup) -> list[Row]``; :data:`MEASUREMENTS`
lists them in table order. Plain ``(method, rate, unit)`` tuples are rows too, so a function
``measure(frames_store, scratch, cubes, threads, dtype, dim)`` of another workflow joins the
table through :func:`joined`.

The run prints one table (method, rate, ratio to the article's step 3, ratio to the row's
ceiling), checks the targets, and writes ``benchmark.json``, ``ladder.png`` and
``threads.png`` into ``--out``. Big data lives under ``--scratch`` (tmpfs when present) and
is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import bench_distributed  # sibling workflows: run as `python workflows/benchmark.py`
import bench_reading
import dask
import dask.array as da
import numpy as np
import pandas as pd
import zarr
from dask.typing import Key

from daskcubes import pipeline
from daskcubes.config import Config
from daskcubes.executors import LocalExecutor
from daskcubes.plan import cube_columns
from daskcubes.sample import make_cube_batch, sample_job, worker_slab
from daskcubes.shards import write_shard
from daskcubes.storage import Storage
from daskcubes.synthetic import write_synthetic_frame

CUBES_PER_S = "cubes/s"
FILES_PER_S = "files/s"
STEP3 = "article step 3: numpy + ThreadPool"
IO_CEILING = "I/O ceiling: ndarray.tofile"
MEMORY_CEILING = "memory ceiling: copy each cube's bytes"


class Row(NamedTuple):
    """One line of the table; a plain ``(method, rate, unit)`` tuple converts with ``Row(*t)``.

    ``ceiling`` names the row whose rate bounds this one (``None``: no ceiling applies).
    """

    method: str
    rate: float
    unit: str
    ceiling: str | None = None


@dataclass(frozen=True)
class Setup:
    """What every measurement gets: the data it works on and how hard to work.

    ``cubes`` is the count for fast methods; ``few`` for the slow ones (the article's
    steps 0-2 and the plain dask.array attempt).
    """

    frames: str
    csv_frames: str
    frames_store: str
    scratch: str
    n_frames: int
    n_rows: int
    n_cols: int
    dim: int
    cubes: int
    few: int
    threads: int
    dtype: str
    sweep: tuple[int, ...]
    plan_cubes: int
    memory_cubes: tuple[int, int]
    memory_dir: str

    def config(self, **overrides: Any) -> Config:
        """A daskcubes config on this setup's frames store, writing into scratch."""
        values: dict[str, Any] = {
            "frames": self.frames,
            "synthetic": False,
            "frames_store": self.frames_store,
            "out": str(Path(self.scratch) / "cubes.zarr"),
            "n_frames": self.n_frames,
            "n_rows": self.n_rows,
            "n_cols": self.n_cols,
            "dim": self.dim,
            "cubes": self.cubes,
            "dtype": self.dtype,
            "scheduler": "threads",
            "workers": self.threads,
        }
        return Config(**{**values, **overrides})

    def columns(self, n: int) -> list[np.ndarray]:
        """Random columns of ``n`` cubes, chosen like daskcubes chooses them."""
        return [cube_columns(0, i, self.n_cols, self.dim) for i in range(n)]

    @property
    def cube_bytes(self) -> int:
        return self.n_frames * self.dim * self.dim * np.dtype(self.dtype).itemsize


@dataclass
class Results:
    """Everything a run measured, as written to ``benchmark.json``."""

    machine: dict[str, Any]
    command: str
    setup: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    threads: dict[str, dict[int, float]] = field(default_factory=dict)


def timed(work: Callable[[], object]) -> float:
    """Seconds ``work()`` takes."""
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def in_pool(threads: int, n: int, task: Callable[[int], object]) -> float:
    """Seconds to run ``task(0 .. n-1)`` on a pool of ``threads`` threads."""
    with ThreadPoolExecutor(threads) as pool:
        return timed(lambda: list(pool.map(task, range(n))))


@contextmanager
def scratch_path(setup: Setup, name: str) -> Iterator[Path]:
    """A fresh path under scratch, deleted afterwards."""
    path = Path(setup.scratch) / name
    shutil.rmtree(path, ignore_errors=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- the data ---------------------------------------------------------------------------


def prepare(setup: Setup) -> None:
    """Synthetic parquet frames, a few CSV frames, and the daskcubes frames store."""
    pipeline.generate(setup.config(synthetic=True), mode="overwrite", show_progress=False)
    Path(setup.csv_frames).mkdir(parents=True, exist_ok=True)
    for i in range(min(setup.few, setup.n_frames)):
        write_synthetic_frame(
            setup.csv_frames, "csv", 0, i, setup.n_rows, setup.n_cols, Storage.of()
        )


def parquet_files(setup: Setup) -> list[Path]:
    return sorted(Path(setup.frames).glob("*.parquet"))


def article_array(setup: Setup) -> np.ndarray:
    """The article's ``arr``: all frames in one C-order numpy array."""
    return np.stack(
        [np.ascontiguousarray(pd.read_parquet(path).to_numpy()) for path in parquet_files(setup)]
    )


# -- the article's ladder ---------------------------------------------------------------


def measure_article_reads(setup: Setup) -> list[Row]:
    """The article's reads: pandas.read_csv and pandas.read_parquet, file after file."""
    csv = sorted(Path(setup.csv_frames).glob("*.csv"))
    parquet = parquet_files(setup)
    csv_s = timed(lambda: [pd.read_csv(path) for path in csv])
    parquet_s = timed(lambda: [pd.read_parquet(path) for path in parquet])
    return [
        Row("article read: pandas.read_csv", len(csv) / csv_s, FILES_PER_S),
        Row("article read: pandas.read_parquet", len(parquet) / parquet_s, FILES_PER_S),
    ]


def _stack_cube(frames: Sequence[pd.DataFrame], dim: int, columns: np.ndarray) -> np.ndarray:
    return np.stack([frame.iloc[:dim, columns].to_numpy() for frame in frames])


def measure_article_steps(setup: Setup) -> list[Row]:
    """The article's steps 0-3 and step 3 over ``np.stack`` of ``DataFrame.to_numpy()``."""
    files, dim = parquet_files(setup), setup.dim
    few = setup.columns(setup.few)
    step0_cubes = few[: max(1, setup.few // 8)]
    step0 = timed(
        lambda: [_stack_cube([pd.read_parquet(p) for p in files], dim, c) for c in step0_cubes]
    )
    frames = [pd.read_parquet(path) for path in files]
    step1 = timed(lambda: [_stack_cube(frames, dim, c) for c in few])
    arr = np.stack([np.ascontiguousarray(frame.to_numpy()) for frame in frames])
    step2 = timed(lambda: [arr[:, :dim, c] for c in few])
    many = setup.columns(setup.cubes)
    step3 = in_pool(setup.threads, len(many), lambda i: arr[:, :dim, many[i]])
    # What a user gets by stacking DataFrame.to_numpy(): each frame stays column-major.
    stacked = np.stack([frame.to_numpy() for frame in frames])
    step3_stacked = in_pool(setup.threads, len(many), lambda i: stacked[:, :dim, many[i]])
    return [
        Row("article step 0: re-read every file per cube", len(step0_cubes) / step0, CUBES_PER_S),
        Row("article step 1: dict of DataFrames", len(few) / step1, CUBES_PER_S),
        Row("article step 2: numpy arr[:, :dim, cols]", len(few) / step2, CUBES_PER_S),
        Row(STEP3, len(many) / step3, CUBES_PER_S, MEMORY_CEILING),
        Row(
            "step 3 on np.stack(DataFrame.to_numpy())",
            len(many) / step3_stacked,
            CUBES_PER_S,
            MEMORY_CEILING,
        ),
    ]


def measure_plain_dask(setup: Setup) -> list[Row]:
    """A plain dask.array attempt: one fancy-indexed slice per cube, da.stack, to_zarr."""
    frames = da.from_zarr(setup.frames_store, component="frames")
    cubes = da.stack([frames[:, : setup.dim, c] for c in setup.columns(setup.few)])
    threads = dask.config.set(scheduler="threads", num_workers=setup.threads)
    with scratch_path(setup, "plain-dask.zarr") as path, threads:
        seconds = timed(lambda: cubes.to_zarr(str(path)))
    return [Row("plain dask.array: slice per cube, to_zarr", setup.few / seconds, CUBES_PER_S)]


# -- daskcubes ----------------------------------------------------------------------------


def measure_ingest(setup: Setup) -> list[Row]:
    """daskcubes ingest: parquet frame files into the frames store (writing included)."""
    result = pipeline.ingest(setup.config(), mode="overwrite", show_progress=False)
    return [Row("daskcubes ingest: files -> frames store", result.rate, FILES_PER_S)]


def generation_rate(setup: Setup, threads: int, cubes: int) -> float:
    """Cubes per second made and discarded by daskcubes tasks on ``threads`` threads."""
    job = sample_job(setup.config(cubes=cubes))
    # Loaded once per worker in a real run: not part of the rate.
    worker_slab(job.frames, job.storage, job.plan.dim, job.dtype)
    graph: dict[Key, Any] = {
        ("generate", b): (make_cube_batch, job, *job.plan.batch_bounds(b))
        for b in range(job.plan.n_batches)
    }
    executor = LocalExecutor("threads", threads)
    seconds = timed(lambda: executor.run(graph, list(graph), lambda key: None))
    return cubes / seconds


def end_to_end_rate(setup: Setup, threads: int, cubes: int, dtype: str) -> float:
    """Cubes per second of daskcubes ``sample`` into a fresh cube store under scratch."""
    with scratch_path(setup, "cubes.zarr") as path:
        config = setup.config(out=str(path), cubes=cubes, workers=threads, dtype=dtype)
        return pipeline.sample(config, mode="overwrite", show_progress=False).rate


def measure_daskcubes(setup: Setup) -> list[Row]:
    """daskcubes generation (no store), end to end into scratch, and the float32 row."""
    rows = [
        Row(
            "daskcubes generation (no store)",
            generation_rate(setup, setup.threads, setup.cubes),
            CUBES_PER_S,
            MEMORY_CEILING,
        ),
        Row(
            "daskcubes end to end into the cube store",
            end_to_end_rate(setup, setup.threads, setup.cubes, setup.dtype),
            CUBES_PER_S,
            IO_CEILING,
        ),
    ]
    if setup.dtype != "float32":
        rate = end_to_end_rate(setup, setup.threads, setup.cubes, "float32")
        rows.append(Row("daskcubes end to end, float32", rate, CUBES_PER_S))
    return rows


def write_path_rate(
    setup: Setup, path: Path, write: Callable[[zarr.Array, int, np.ndarray], None]
) -> float:
    """Cubes per second writing whole shards of random cubes into a fresh cube array."""
    size = Config().shard_size
    shape = (setup.n_frames, setup.dim, setup.dim)
    n_shards = -(-setup.cubes // size)
    buffers = [np.random.default_rng(k).random((size, *shape)) for k in range(setup.threads)]
    array = zarr.create_array(
        str(path),
        shape=(n_shards * size, *shape),
        dtype="float64",
        chunks=(1, *shape),
        shards=(size, *shape),
        compressors=None,
        fill_value=0,
    )

    def work(k: int) -> None:
        for shard in range(k, n_shards, setup.threads):
            write(array, shard, buffers[k])

    return n_shards * size / in_pool(setup.threads, setup.threads, work)


def _zarr_write(array: zarr.Array, shard: int, values: np.ndarray) -> None:
    array[shard * len(values) : (shard + 1) * len(values)] = values


def measure_write_paths(setup: Setup) -> list[Row]:
    """Whole-shard writes of float64 cubes: daskcubes' direct path against zarr's pipelines."""
    rows = []
    for method, pipeline_path, write in [
        ("write path: daskcubes whole shards", None, write_shard),
        ("write path: zarr-python codec pipeline", None, _zarr_write),
        ("write path: zarrs codec pipeline", "zarrs.ZarrsCodecPipeline", _zarr_write),
    ]:
        settings = {"codec_pipeline.path": pipeline_path} if pipeline_path else {}
        with zarr.config.set(settings), scratch_path(setup, "write-path.zarr") as path:
            rows.append(Row(method, write_path_rate(setup, path, write), CUBES_PER_S, IO_CEILING))
    return rows


# -- the machine's ceilings ---------------------------------------------------------------


def io_ceiling_rate(setup: Setup, threads: int, cubes: int) -> float:
    """Cubes per second of ``ndarray.tofile`` of the same bytes, one file per batch."""
    batch = Config().shard_size  # a shard file: what auto batches hold at these shapes
    buffers = [
        np.random.default_rng(k).random(batch * setup.cube_bytes // 8) for k in range(threads)
    ]
    n_files = -(-cubes // batch)
    with scratch_path(setup, "io-ceiling") as path:
        path.mkdir()

        def write(k: int) -> None:
            for i in range(k, n_files, threads):
                buffers[k].tofile(path / str(i))

        return n_files * batch / in_pool(threads, threads, write)


def memory_ceiling_rate(setup: Setup, threads: int, cubes: int) -> float:
    """Cubes per second copying one cube's bytes into a batch buffer, per thread."""
    batch = Config().shard_size  # a shard file: what auto batches hold at these shapes
    cube = np.random.default_rng(0).random(setup.cube_bytes // 8)
    buffers = [np.empty((batch, cube.size)) for _ in range(threads)]

    def copy(k: int) -> None:
        for i in range(k, cubes, threads):
            np.copyto(buffers[k][i % batch], cube)

    return cubes / in_pool(threads, threads, copy)


def measure_ceilings(setup: Setup) -> list[Row]:
    """The I/O ceiling (tofile into scratch) and the memory ceiling (copying)."""
    return [
        Row(IO_CEILING, io_ceiling_rate(setup, setup.threads, setup.cubes), CUBES_PER_S),
        Row(MEMORY_CEILING, memory_ceiling_rate(setup, setup.threads, setup.cubes), CUBES_PER_S),
    ]


# -- planning and memory, each in a fresh process ---------------------------------------


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
    """Seconds and peak MiB of everything before compute, for ``plan_cubes`` cubes."""
    from daskcubes.progress import ProgressRecord
    from daskcubes.sample import sample_graph
    from daskcubes.store import create_cube_store, cube_plan_attrs

    started = time.perf_counter()
    config = setup.config(cubes=setup.plan_cubes, out=store)
    job = sample_job(config)
    plan_attrs = cube_plan_attrs(job.plan, config.dtype, config.compressor, job.frames.fingerprint)
    create_cube_store(store, plan_attrs, {}, "new", job.storage)
    record = ProgressRecord(store, job.storage)
    graph, _ = sample_graph(job, record.done.get("shards", set()), set())
    seconds = time.perf_counter() - started
    assert len(graph) == job.plan.n_batches + job.plan.n_recipe_blocks
    return seconds, _peak_mib()


def sample_in_process(setup: Setup, cubes: int, store: str) -> float:
    """Peak MiB of a whole daskcubes ``sample`` run of ``cubes`` cubes."""
    pipeline.sample(setup.config(cubes=cubes, out=store), mode="overwrite", show_progress=False)
    return _peak_mib()


def in_fresh_process(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` in a new interpreter, so its peak memory is its own."""
    import multiprocessing

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def measure_planning_and_memory(setup: Setup) -> list[Row]:
    """Planning ``plan_cubes`` cubes (time, peak memory); peak memory of two run sizes."""
    with scratch_path(setup, "plan.zarr") as path:
        seconds, plan_mib = in_fresh_process(plan_in_process, setup, str(path))
    rows = [
        Row(f"planning {setup.plan_cubes:,} cubes: time", seconds, "s"),
        Row(f"planning {setup.plan_cubes:,} cubes: peak memory", plan_mib, "MiB"),
    ]
    # Runs this size would fill tmpfs, so they write under memory_dir (disk by default).
    with tempfile.TemporaryDirectory(dir=setup.memory_dir) as folder:
        for cubes in setup.memory_cubes:
            store = str(Path(folder) / f"cubes-{cubes}.zarr")
            mib = in_fresh_process(sample_in_process, setup, cubes, store)
            shutil.rmtree(store)
            rows.append(Row(f"peak memory of a {cubes:,}-cube run", mib, "MiB"))
    return rows


def joined(
    measure: Callable[[str, str, int, int, str, int], list[tuple[str, float, str]]],
) -> Callable[[Setup], list[Row]]:
    """The rates of another workflow's ``measure`` as rows (its own ratios left out:
    :func:`targets` computes them against this run's rows)."""

    def rows(setup: Setup) -> list[Row]:
        found = measure(
            setup.frames_store, setup.scratch, setup.cubes, setup.threads, setup.dtype, setup.dim
        )
        return [Row(*row) for row in found if row[2] != "x"]

    return rows


MEASUREMENTS: list[Callable[[Setup], list[Row]]] = [
    measure_article_reads,
    measure_article_steps,
    measure_plain_dask,
    measure_ingest,
    measure_daskcubes,
    measure_write_paths,
    measure_ceilings,
    measure_planning_and_memory,
    joined(bench_distributed.measure),
    joined(bench_reading.measure),
]


def measure_threads(setup: Setup) -> dict[str, dict[int, float]]:
    """Rates against thread count, like the article's final figure."""
    arr = article_array(setup)
    many = setup.columns(setup.cubes)
    curves: dict[str, dict[int, float]] = {STEP3: {}, "daskcubes generation": {}}
    curves.update({"daskcubes end to end": {}, IO_CEILING: {}})
    for threads in setup.sweep:
        step3 = in_pool(threads, len(many), lambda i: arr[:, : setup.dim, many[i]])
        curves[STEP3][threads] = len(many) / step3
        curves["daskcubes generation"][threads] = generation_rate(setup, threads, setup.cubes)
        curves["daskcubes end to end"][threads] = end_to_end_rate(
            setup, threads, setup.cubes, setup.dtype
        )
        curves[IO_CEILING][threads] = io_ceiling_rate(setup, threads, setup.cubes)
    return curves


# -- reporting ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A target ratio: ``method`` against ``reference`` must be at least (or most) ``bound``."""

    text: str
    method: str
    reference: str | None
    bound: float
    at_most: bool = False

    def measured(self, rates: dict[str, float]) -> float | None:
        if self.method not in rates or (self.reference and self.reference not in rates):
            return None
        value = rates[self.method]
        return value / rates[self.reference] if self.reference else value

    def met(self, value: float) -> bool:
        return value <= self.bound if self.at_most else value >= self.bound


def targets(setup: Setup) -> list[Target]:
    plan = f"planning {setup.plan_cubes:,} cubes"
    small, large = setup.memory_cubes
    return [
        Target("generation >= 5x article step 3", "daskcubes generation (no store)", STEP3, 5),
        Target(
            "end to end >= 0.8x I/O ceiling",
            "daskcubes end to end into the cube store",
            IO_CEILING,
            0.8,
        ),
        Target(
            "end to end >= 50x plain dask.array",
            "daskcubes end to end into the cube store",
            "plain dask.array: slice per cube, to_zarr",
            50,
        ),
        Target(
            "ingest >= 1.5x pandas.read_parquet loop",
            "daskcubes ingest: files -> frames store",
            "article read: pandas.read_parquet",
            1.5,
        ),
        Target(
            "LocalCluster >= 0.8x threaded scheduler",
            "LocalCluster (2 workers x 1 thread)",
            f"threads ({setup.threads} threads)",
            0.8,
        ),
        Target(
            "cube store reads >= 0.8x numpy.fromfile",
            "cube store, random-order batches",
            "numpy.fromfile, same bytes",
            0.8,
        ),
        Target("stream mode >= 5x article step 3", "stream mode, random-order batches", STEP3, 5),
        Target(f"{plan} <= 10 s", f"{plan}: time", None, 10, at_most=True),
        Target(f"{plan} <= 1 GiB", f"{plan}: peak memory", None, 1024, at_most=True),
        Target(
            f"peak memory {large:,} cubes <= 1.2x {small:,} cubes",
            f"peak memory of a {large:,}-cube run",
            f"peak memory of a {small:,}-cube run",
            1.2,
            at_most=True,
        ),
    ]


def table(rows: Sequence[Row]) -> list[str]:
    """The table as Markdown lines."""
    rates = {row.method: row.rate for row in rows}
    step3 = rates.get(STEP3)
    lines = [
        "| method | rate | unit | x article step 3 | x ceiling |",
        "|---|---:|---|---:|---:|",
    ]
    for row in rows:
        vs_step3 = f"{row.rate / step3:.2f}" if step3 and row.unit == CUBES_PER_S else ""
        ceiling = rates.get(row.ceiling) if row.ceiling else None
        vs_ceiling = f"{row.rate / ceiling:.2f}" if ceiling else ""
        lines.append(f"| {row.method} | {row.rate:,.2f} | {row.unit} | {vs_step3} | {vs_ceiling} |")
    return lines


def target_lines(setup: Setup, rows: Sequence[Row]) -> list[str]:
    rates = {row.method: row.rate for row in rows}
    lines = []
    for target in targets(setup):
        value = target.measured(rates)
        if value is None:
            continue
        verdict = "met" if target.met(value) else "MISSED"
        lines.append(f"- {target.text}: {value:,.2f} -> {verdict}")
    return lines


def charts(results: Results, out: Path) -> None:
    """``ladder.png`` (cube rates, log scale) and ``threads.png`` (rate against threads)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cube_rows = [row for row in results.rows if row.unit == CUBES_PER_S]
    figure, axes = plt.subplots(figsize=(9, 0.4 * len(cube_rows) + 1.5))
    axes.barh([row.method for row in cube_rows], [row.rate for row in cube_rows])
    axes.set_xscale("log")
    axes.invert_yaxis()
    axes.set_xlabel("cubes/s (log scale)")
    axes.set_title(f"Cubes per second, {results.machine['cores']} cores")
    figure.tight_layout()
    figure.savefig(out / "ladder.png", dpi=100)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, curve in results.threads.items():
        threads = sorted(curve)
        axes.plot(threads, [curve[t] for t in threads], marker="o", label=name)
    axes.set_xlabel("threads")
    axes.set_ylabel("cubes/s")
    axes.set_title("Rate against threads")
    axes.legend()
    figure.tight_layout()
    figure.savefig(out / "threads.png", dpi=100)
    plt.close(figure)


def machine() -> dict[str, Any]:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(pages / 2**30, 1),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }


# -- the command line ---------------------------------------------------------------------


def default_scratch() -> str:
    base = "/dev/shm" if Path("/dev/shm").is_dir() else tempfile.gettempdir()
    return str(Path(base) / f"daskcubes-bench-{os.getpid()}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python workflows/benchmark.py",
        description="The article's cube-cutting ladder and daskcubes, side by side.",
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="small preset that finishes in about a minute")
    add("--cubes", type=int, help="cubes for the fast methods (default 512; quick 96)")
    add("--few", type=int, help="cubes for the slow methods (default 16; quick 4)")
    add("--threads", type=int, default=os.cpu_count() or 1, help="threads (default: cores)")
    add("--dtype", choices=["float64", "float32"], default="float64", help="cube dtype")
    add("--n-frames", type=int, help="number of frames (default 100; quick 20)")
    add("--n-rows", type=int, default=1000, help="rows per frame")
    add("--n-cols", type=int, default=1000, help="columns per frame")
    add("--dim", type=int, default=100, help="cube edge")
    add("--sweep", help="thread counts for the threads chart (default 1,2,..,2x threads)")
    add("--plan-cubes", type=int, default=1_000_000, help="cubes to plan (default 1,000,000)")
    add("--memory-cubes", help="two run sizes whose peak memory is compared (default 500,2000)")
    add("--memory-dir", default=tempfile.gettempdir(), help="where those runs write")
    add("--scratch", default=default_scratch(), help="where data is written (deleted after)")
    add("--out", default="benchmark-results", help="folder for benchmark.json and charts")
    return parser


def setup_from_args(args: argparse.Namespace) -> Setup:
    quick = args.quick
    threads = args.threads
    sweep = args.sweep or ",".join(str(2**k) for k in range(8) if 2**k <= 2 * threads)
    memory = (args.memory_cubes or ("48,192" if quick else "500,2000")).split(",")
    scratch = Path(args.scratch)
    few = args.few or (4 if quick else 16)
    return Setup(
        frames=str(scratch / "frames"),
        csv_frames=str(scratch / "csv-frames"),
        frames_store=str(scratch / "frames.zarr"),
        scratch=str(scratch),
        n_frames=args.n_frames or (20 if quick else 100),
        n_rows=args.n_rows,
        n_cols=args.n_cols,
        dim=args.dim,
        cubes=args.cubes or (96 if quick else 512),
        few=few,
        threads=threads,
        dtype=args.dtype,
        sweep=tuple(int(t) for t in sweep.split(",")),
        plan_cubes=args.plan_cubes,
        memory_cubes=(int(memory[0]), int(memory[1])),
        memory_dir=args.memory_dir,
    )


def run(setup: Setup, command: str, out: Path) -> Results:
    """Measure everything, print the table and targets, write JSON and charts into ``out``."""
    results = Results(machine(), command, asdict(setup))
    Path(setup.scratch).mkdir(parents=True, exist_ok=True)
    try:
        prepare(setup)
        pipeline.ingest(setup.config(), mode="overwrite", show_progress=False)
        for measure in MEASUREMENTS:
            rows = [Row(*row) for row in measure(setup)]
            for row in rows:
                print(f"  {row.method}: {row.rate:,.2f} {row.unit}", file=sys.stderr, flush=True)
            results.rows.extend(rows)
        results.threads = measure_threads(replace(setup, cubes=max(setup.cubes // 2, 1)))
    finally:
        shutil.rmtree(setup.scratch, ignore_errors=True)
    report = [
        f"machine: {results.machine['cores']} cores, {results.machine['memory_gib']} GiB",
        f"command: {command}",
        "",
        *table(results.rows),
        "",
        "targets:",
        *target_lines(setup, results.rows),
    ]
    print("\n".join(report))
    out.mkdir(parents=True, exist_ok=True)
    document = {**asdict(results), "rows": [row._asdict() for row in results.rows]}
    (out / "benchmark.json").write_text(json.dumps(document, indent=2))
    charts(results, out)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    command = " ".join(["python workflows/benchmark.py", *argv])
    run(setup_from_args(args), command, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
