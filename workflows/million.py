"""Benchmark: a million cubes with the article's task count, on threads and on a LocalCluster.

Tiny frames (4 frames of 8 x 8) and cubes of 4 x 2 x 2 float64 keep the store small
(about 130 MB for 1,000,000 cubes) while the run has what a million article cubes
would have: 62,500 tasks of 16 cubes, 62,500 shard files, a completion record of
62,500 shards. Each run is a real ``python -m daskcubes.workflow sample`` process, so
that its memory is its own and it can be killed:

1. a clean run on threads (2 threads) and one on a LocalCluster (2 workers x 1 thread);
   a run that fails is reported as failed, and the benchmark goes on;
2. a run on threads SIGKILLed once its completion record shows about half the shards,
   then resumed; the shards whose files existed at the kill but were not in the record
   are the work the resume redid; the resumed store must hash the same as the clean one;
3. ``verify`` of the resumed store, and the cost of one save of the completion record
   as the kill left it;
4. the article's shapes (100 frames of 1000 x 1000, cubes of 100^3 float64): a short
   run on threads, on a LocalCluster and in stream mode, projected to 1,000,000 cubes.

Peak memory is each process's high-water mark (``VmHWM``), polled. A LocalCluster's
scheduler (and its nannies) run inside the driver process, so its driver row covers
both. Standalone::

    python workflows/million.py             # the full benchmark, under /dev/shm
    python workflows/million.py --quick     # 20,000 cubes, no article-shape runs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from daskcubes import jobs, open_stream
from daskcubes.config import Config
from daskcubes.errors import UserError
from daskcubes.io.layout import frames_store_info, store_attrs
from daskcubes.io.progress import ProgressRecord, recorded_progress
from daskcubes.io.schema import CubeSchema
from daskcubes.io.storage import Storage
from daskcubes.runtime.verify import verify_cube_store

#: ``(key, value, unit)``: one row of the benchmark table.
Row = tuple[str, float, str]

SHARD = 16  # cubes per shard and per task, as for the article's cubes
SMALL_FRAMES = {"n_frames": 4, "n_rows": 8, "n_cols": 8}
SMALL_DIM = 2
ARTICLE_FRAMES = {"n_frames": 100, "n_rows": 1000, "n_cols": 1000}
ARTICLE_DIM = 100
THREADS_ARGS = ["--scheduler", "threads", "--workers", "2"]
CLUSTER_ARGS = ["--scheduler", "distributed", "--workers", "2", "--threads-per-worker", "1"]
CLUSTER_SETTINGS = {"scheduler": "distributed", "workers": 2, "threads_per_worker": 1}
GIB = 2**30


@dataclass(frozen=True)
class RunKeys:
    """Row keys of one scheduler's run of many small cubes."""

    name: str

    @property
    def finished(self) -> str:
        return f"many small cubes, {self.name}: finished (1 yes, 0 no)"

    @property
    def seconds(self) -> str:
        return f"many small cubes, {self.name}: sample time"

    @property
    def tasks_per_second(self) -> str:
        return f"many small cubes, {self.name}: tasks/s"

    @property
    def per_task(self) -> str:
        return f"many small cubes, {self.name}: time per task"

    @property
    def driver_peak(self) -> str:
        return f"many small cubes, {self.name}: driver peak RSS"

    @property
    def worker_peak(self) -> str:
        return f"many small cubes, {self.name}: peak RSS of the largest worker"


CUBES = "many small cubes: cubes per run"
TASKS = "many small cubes: tasks per run"
THREADS = RunKeys("threads (2 threads)")
CLUSTER = RunKeys("LocalCluster (2 workers x 1 thread; scheduler in the driver)")
CLUSTER_VS_THREADS = "many small cubes: LocalCluster time / threads time"
CLUSTER_IDENTICAL = "many small cubes: LocalCluster store identical to threads (1 yes, 0 no)"
RECORD_SAVE = "completion record: one save at the kill's state"
RECORD_BYTES = "completion record: the group's zarr.json at the kill"
RECORD_RANGES = "completion record: shard ranges at the kill"
KILLED_AT = "resume after SIGKILL: shards recorded at the kill"
REDONE = "resume after SIGKILL: batches redone"
REDONE_SHARE = "resume after SIGKILL: share of batches redone"
IDENTICAL = "resume after SIGKILL: identical to the clean run (1 yes, 0 no)"
VERIFY = "verify of the resumed store"


def article_keys(method: str) -> tuple[str, str]:
    """Keys of the rate, and of the projected hours for 1,000,000 cubes, of ``method``."""
    return (
        f"article shapes, {method}: rate",
        f"article shapes, {method}: 1,000,000 cubes projected",
    )


ARTICLE_METHODS = ("threads (2 threads)", "LocalCluster (2 workers x 1 thread)", "stream mode")
ARTICLE_BYTES = "article shapes: 1,000,000 cubes stored"


# -- processes ------------------------------------------------------------------------


def _peak_mib(process: psutil.Process) -> float:
    """The process's high-water mark of resident memory in MiB (0 once it has ended)."""
    try:
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float(process.memory_info().rss) / 2**20
    except (OSError, psutil.Error):
        return 0.0


def _is_worker(process: psutil.Process) -> bool:
    try:
        return "resource_tracker" not in " ".join(process.cmdline())
    except psutil.Error:
        return False


def _shards_recorded(store: str) -> int:
    try:
        attrs = json.loads((Path(store) / "zarr.json").read_text())["attributes"]["daskcubes"]
    except (OSError, ValueError, KeyError):
        return 0
    return len(recorded_progress(attrs).get("shards", ()))


@dataclass(frozen=True)
class Run:
    """How one ``sample`` process went."""

    status: int
    #: The sample stage's own time, from its summary line (NaN if it printed none).
    seconds: float
    wall: float
    driver_mib: float
    worker_mib: float
    #: The last line the process printed on stderr, if it failed.
    error: str = ""

    @property
    def finished(self) -> bool:
        return self.status == 0 and not np.isnan(self.seconds)


def run_sample(
    args: list[str],
    store: str,
    log: Path,
    kill_at_shards: int | None = None,
    timeout: float = 1800,
) -> Run:
    """Run ``daskcubes.workflow sample ARGS`` as a process of its own, polling the peak
    memory of it and its workers; SIGKILL its process group once ``store``'s completion
    record lists ``kill_at_shards`` shards, or after ``timeout`` seconds."""
    command = [sys.executable, "-m", "daskcubes.workflow", "sample", *args]
    started = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    driver = psutil.Process(child.pid)
    peaks: dict[int, float] = {}
    driver_mib = 0.0
    late = False
    while child.poll() is None:
        driver_mib = max(driver_mib, _peak_mib(driver))
        try:
            for worker in filter(_is_worker, driver.children(recursive=True)):
                peaks[worker.pid] = max(peaks.get(worker.pid, 0.0), _peak_mib(worker))
        except psutil.Error:
            pass
        late = time.perf_counter() - started > timeout
        if late or (kill_at_shards and _shards_recorded(store) >= kill_at_shards):
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            break
        time.sleep(0.05)
    wall = time.perf_counter() - started
    text = log.read_text()
    found = re.search(r"^sample: .*? tasks ([\d.]+) s, ", text, re.MULTILINE)
    lines = [line for line in text.splitlines() if line.strip()]
    status = child.returncode
    error = "" if status == 0 else (lines[-1] if lines else f"exit {status}")
    if late:
        error = f"still running after {timeout:.0f} s, killed"
    return Run(
        status,
        float(found.group(1)) if found else float("nan"),
        wall,
        driver_mib,
        max(peaks.values(), default=0.0),
        error,
    )


def store_digest(store: str) -> str:
    """A hash of every file of a local store but the group's ``zarr.json`` (which records
    when and how the run went), with the files' paths."""
    digest = hashlib.blake2b(digest_size=16)
    root = Path(store)
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if path == root / "zarr.json":
                continue
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


# -- many small cubes -----------------------------------------------------------------


def _small_frames(scratch: Path) -> str:
    config = Config.model_validate(
        {
            "frames": str(scratch / "frames"),
            "frames_store": str(scratch / "frames.zarr"),
            "dim": SMALL_DIM,
            **SMALL_FRAMES,
        }
    )
    jobs.generate(config, "overwrite", show_progress=False)
    jobs.ingest(config, "overwrite", show_progress=False)
    return config.frames_store


def _run_rows(keys: RunKeys, run: Run, tasks: int) -> list[Row]:
    rows = [(keys.finished, float(run.finished), "")]
    if run.finished:
        rows += [
            (keys.seconds, run.seconds, "s"),
            (keys.tasks_per_second, tasks / run.seconds, "tasks/s"),
            (keys.per_task, run.seconds / tasks * 1e3, "ms"),
        ]
    rows.append((keys.driver_peak, run.driver_mib, "MiB"))
    if run.worker_mib:
        rows.append((keys.worker_peak, run.worker_mib, "MiB"))
    return rows


def _shard_files(store: str, schema: CubeSchema) -> set[int]:
    return {s for s in range(schema.plan.n_shards) if (Path(store) / schema.shard_key(s)).exists()}


def measure_small(
    scratch: Path, cubes: int, cluster: bool = True, timeout: float = 900
) -> list[Row]:
    """Rows of ``cubes`` small cubes in tasks of 16: clean runs, a kill and resume, verify.

    A run still going after ``timeout`` seconds is killed and reported as failed.
    """
    frames_store = _small_frames(scratch)
    tasks = -(-cubes // SHARD)

    def args(out: str, *more: str) -> list[str]:
        return [
            "--frames-store", frames_store, "--out", out, "--cubes", str(cubes),
            "--dim", str(SMALL_DIM), "--shard-size", str(SHARD), "--batch-size", str(SHARD),
            "--quiet", *more,
        ]  # fmt: skip

    rows: list[Row] = [(CUBES, cubes, "cubes"), (TASKS, tasks, "tasks")]
    clean = str(scratch / "threads.zarr")
    threads = run_sample(
        args(clean, "--overwrite", *THREADS_ARGS), clean, scratch / "threads.log", timeout=timeout
    )
    _say(THREADS.name, threads)
    rows += _run_rows(THREADS, threads, tasks)
    if cluster:
        out = str(scratch / "cluster.zarr")
        dashboard = ["--dashboard-address", "127.0.0.1:0"]
        on_cluster = run_sample(
            args(out, "--overwrite", *CLUSTER_ARGS, *dashboard),
            out,
            scratch / "cluster.log",
            timeout=timeout,
        )
        _say(CLUSTER.name, on_cluster)
        rows += _run_rows(CLUSTER, on_cluster, tasks)
        if on_cluster.finished and threads.finished:
            same = store_digest(out) == store_digest(clean)
            rows += [
                (CLUSTER_VS_THREADS, on_cluster.seconds / threads.seconds, "x"),
                (CLUSTER_IDENTICAL, float(same), ""),
            ]
        shutil.rmtree(out, ignore_errors=True)

    killed = str(scratch / "killed.zarr")
    schema = CubeSchema.from_attrs(store_attrs(Storage.of().open_group(clean, mode="r"))["plan"])
    n_shards = schema.plan.n_shards
    first = run_sample(
        args(killed, "--overwrite", *THREADS_ARGS), killed, scratch / "killed.log", n_shards // 2
    )
    attrs = store_attrs(Storage.of().open_group(killed, mode="r"))
    in_record = recorded_progress(attrs).get("shards", set())
    written = _shard_files(killed, schema)
    # What the resume redid: shards already written whole, but not yet in the record.
    redone = len(written - in_record) if not attrs["complete"] else 0
    record_bytes = (Path(killed) / "zarr.json").stat().st_size
    n_ranges = len((attrs.get("progress") or {}).get("shards", []))
    save = _save_seconds(killed)
    print(
        f"million: killed (exit {first.status}) with {len(in_record)} of {n_shards} shards "
        f"recorded and {len(written)} written; one save of the record: {save * 1e3:.2f} ms, "
        f"{record_bytes} bytes, {n_ranges} ranges"
    )
    resumed = run_sample(args(killed, "--resume", *THREADS_ARGS), killed, scratch / "resume.log")
    _say("resume", resumed)
    identical = (
        resumed.finished and threads.finished and store_digest(killed) == store_digest(clean)
    )
    started = time.perf_counter()
    report = verify_cube_store(killed, Storage.of(), frames_store)
    verify_seconds = time.perf_counter() - started
    print(f"million: verify: {'; '.join(report.facts + report.problems)}")
    rows += [
        (RECORD_SAVE, save * 1e3, "ms"),
        (RECORD_BYTES, record_bytes, "bytes"),
        (RECORD_RANGES, n_ranges, "ranges"),
        (KILLED_AT, len(in_record), "shards"),
        (REDONE, redone, "batches"),
        (REDONE_SHARE, 100 * redone / tasks, "%"),
        (IDENTICAL, float(identical), ""),
        (VERIFY, verify_seconds if not report.problems else float("nan"), "s"),
    ]
    for store in (clean, killed):
        shutil.rmtree(store, ignore_errors=True)
    return rows


def _save_seconds(store: str) -> float:
    """Median seconds of one save of ``store``'s completion record as it stands (on a copy
    of its ``zarr.json``, so the store itself is untouched)."""
    with tempfile.TemporaryDirectory(dir=Path(store).parent) as copy:
        shutil.copy(Path(store) / "zarr.json", Path(copy) / "zarr.json")
        record = ProgressRecord(copy, Storage.of())
        seconds = []
        for _ in range(5):
            started = time.perf_counter()
            record.save()
            seconds.append(time.perf_counter() - started)
    return float(np.median(seconds))


def _say(name: str, run: Run) -> None:
    outcome = "finished" if run.finished else f"FAILED (exit {run.status}: {run.error})"
    print(
        f"million: {name}: {outcome}; sample {run.seconds:.1f} s, process {run.wall:.1f} s, "
        f"driver peak {run.driver_mib:.0f} MiB, largest worker {run.worker_mib:.0f} MiB"
    )


# -- the article's shapes -------------------------------------------------------------


def article_frames(root: Path) -> str:
    """The article-shape frames store under ``root``, made once and then reused."""
    config = Config.model_validate(
        {
            "frames": str(root / "frames"),
            "frames_store": str(root / "frames.zarr"),
            "dim": ARTICLE_DIM,
            **ARTICLE_FRAMES,
        }
    )
    try:
        frames_store_info(config.frames_store, Storage.of())
    except UserError:
        print(f"million: making the article-shape frames store {config.frames_store} (once)")
        jobs.generate(config, "overwrite", show_progress=False)
        jobs.ingest(config, "overwrite", show_progress=False)
    return config.frames_store


def measure_article(frames_store: str, scratch: Path, cubes: int, repeats: int = 2) -> list[Row]:
    """Rates at the article's shapes on threads, a LocalCluster and in stream mode (the
    best of ``repeats`` runs each, so that each has its slab loaded), projected to 1M cubes."""
    job = {"frames_store": frames_store, "cubes": cubes, "dim": ARTICLE_DIM, "synthetic": False}
    threaded = Config.model_validate({**job, "workers": 2, "out": str(scratch / "a-threads.zarr")})
    cluster = Config.model_validate(
        {
            **job,
            **CLUSTER_SETTINGS,
            "out": str(scratch / "a-cluster.zarr"),
            "dashboard_address": "127.0.0.1:0",
        }
    )
    rates: dict[str, float] = {}
    with jobs.executor_for(threaded) as on_threads:
        rates[ARTICLE_METHODS[0]] = max(
            jobs.sample(threaded, "overwrite", False, on_threads).rate for _ in range(repeats)
        )
    shutil.rmtree(threaded.out)
    try:
        with jobs.executor_for(cluster) as on_cluster:
            rates[ARTICLE_METHODS[1]] = max(
                jobs.sample(cluster, "overwrite", False, on_cluster).rate for _ in range(repeats)
            )
    except Exception as exc:  # a failed cluster run is a finding of the benchmark
        print(f"million: article shapes on a LocalCluster FAILED: {type(exc).__name__}: {exc}")
    shutil.rmtree(cluster.out, ignore_errors=True)
    rates[ARTICLE_METHODS[2]] = max(_stream_rate(threaded) for _ in range(repeats))
    cube_bytes = ARTICLE_FRAMES["n_frames"] * ARTICLE_DIM**2 * 8
    rows: list[Row] = []
    for method, rate in rates.items():
        rate_key, hours_key = article_keys(method)
        rows += [(rate_key, rate, "cubes/s"), (hours_key, 1e6 / rate / 3600, "h")]
    rows.append((ARTICLE_BYTES, 1e6 * cube_bytes, "bytes"))
    return rows


def _stream_rate(config: Config) -> float:
    """Cubes/s of reading every cube of ``config`` from a stream, in batches of 16 on 2
    threads (what a training loop's loader threads would do)."""
    stream = open_stream(config)
    batches = [
        np.arange(start, min(start + SHARD, len(stream))) for start in range(0, len(stream), SHARD)
    ]
    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        for _ in pool.map(stream.read, batches):
            pass
    return len(stream) / (time.perf_counter() - started)


# -- entry point ----------------------------------------------------------------------


def measure(
    scratch: Path,
    cubes: int = 1_000_000,
    cluster: bool = True,
    article_root: Path | None = None,
    article_cubes: int = 64,
    timeout: float = 900,
) -> list[Row]:
    """All rows: ``cubes`` small cubes (under ``scratch``; a run still going after
    ``timeout`` seconds counts as failed), then, given ``article_root``, the article's
    shapes (frames store made there once and reused)."""
    rows = measure_small(scratch, cubes, cluster, timeout)
    if article_root is not None and article_cubes:
        rows += measure_article(article_frames(article_root), scratch, article_cubes)
    return rows


def format_rows(rows: list[Row]) -> str:
    return "\n".join(f"| {key} | {value:,.4g} | {unit} |" for key, value, unit in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cubes", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="20,000 cubes, no article shapes")
    parser.add_argument("--no-cluster", action="store_true", help="threads only")
    parser.add_argument("--scratch", default="/dev/shm", help="where the stores go")
    parser.add_argument(
        "--article-root",
        default="/dev/shm/daskcubes-article",
        help="where the article-shape frames are made once and kept",
    )
    parser.add_argument("--article-cubes", type=int, default=64)
    parser.add_argument(
        "--timeout", type=float, default=900, help="seconds after which a run counts as failed"
    )
    args = parser.parse_args(argv)
    cubes = 20_000 if args.quick else args.cubes
    article = None if args.quick or not args.article_cubes else Path(args.article_root)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.scratch, prefix="million-") as scratch:
        rows = measure(
            Path(scratch), cubes, not args.no_cluster, article, args.article_cubes, args.timeout
        )
    print(format_rows(rows))
    print(f"million: {time.perf_counter() - started:.0f} s in all; load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
