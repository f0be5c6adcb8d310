"""A million cubes with the article's task count, on threads and on a LocalCluster.

Run only when asked (``python workflows/benchmark.py --only million``): it takes minutes
and spawns its own processes. Tiny frames (4 frames of 8 x 8) and cubes of 4 x 2 x 2
float64 keep the store small (about 130 MB for 1,000,000 cubes) while the run has what a
million article cubes would have: 62,500 tasks of 16 cubes, 62,500 shard files, a
completion record of 62,500 shards. Each run is a real ``python -m daskcubes.workflow
sample`` process, so that its memory is its own and it can be killed:

1. a clean run on threads (2 threads) and one on a LocalCluster (2 workers x 1 thread);
   a run that fails is reported as failed (its "finished" row 0), and the benchmark goes on;
2. a run on threads SIGKILLed once its completion record shows about half the shards,
   then resumed; the shards whose files existed at the kill but were not in the record
   are the work the resume redid; the resumed store must hash the same as the clean one;
3. ``verify`` of the resumed store (the command, a process of its own), and the cost of
   one save of the completion record as the kill left it;
4. the article's shapes (100 frames of 1000 x 1000, cubes of 100^3 float64): a short
   run on threads, on a LocalCluster and in stream mode, projected to 1,000,000 cubes.

Peak memory is each process's high-water mark (``VmHWM``), polled. A LocalCluster's
scheduler (and its nannies) run inside the driver process, so its driver row covers both.
"""

from __future__ import annotations

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
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import psutil

import daskcubes
from bench.data import Setup, make_frames_store, random_frames, store_digest
from bench.distributed import local_cluster
from bench.rows import CUBES_PER_S, MIB, RATIO, SECONDS, Key, Row
from daskcubes import Config, open_cubes, open_stream

# The completion record's rows measure the record itself, below the public API.
from daskcubes.io.progress import ProgressRecord, recorded_progress
from daskcubes.io.storage import Storage

if TYPE_CHECKING:
    from distributed import Client

SHARD = 16  # cubes per shard and per task, as for the article's cubes
SMALL_FRAMES = (4, 8, 8)
SMALL_DIM = 2
ARTICLE_FRAMES = (100, 1000, 1000)
ARTICLE_DIM = 100
THREADS_ARGS = ["--scheduler", "threads", "--workers", "2"]
CLUSTER_ARGS = ["--scheduler", "distributed", "--workers", "2", "--threads-per-worker", "1"]
YES_NO = ""  # the unit of a row that is 1 (yes) or 0 (no)


class RunKeys(NamedTuple):
    """The row keys of one scheduler's run of many small cubes."""

    finished: Key
    seconds: Key
    tasks_per_second: Key
    per_task: Key
    driver_peak: Key
    worker_peak: Key


THREADS = RunKeys(
    Key.MILLION_THREADS_FINISHED,
    Key.MILLION_THREADS_SECONDS,
    Key.MILLION_THREADS_TASKS_PER_S,
    Key.MILLION_THREADS_PER_TASK,
    Key.MILLION_THREADS_DRIVER_PEAK,
    Key.MILLION_THREADS_WORKER_PEAK,
)
CLUSTER = RunKeys(
    Key.MILLION_CLUSTER_FINISHED,
    Key.MILLION_CLUSTER_SECONDS,
    Key.MILLION_CLUSTER_TASKS_PER_S,
    Key.MILLION_CLUSTER_PER_TASK,
    Key.MILLION_CLUSTER_DRIVER_PEAK,
    Key.MILLION_CLUSTER_WORKER_PEAK,
)
#: The article-shape methods: the keys of their rate and of a million cubes' hours.
ARTICLE_METHODS = {
    "threads": (Key.MILLION_ARTICLE_THREADS, Key.MILLION_ARTICLE_THREADS_HOURS),
    "cluster": (Key.MILLION_ARTICLE_CLUSTER, Key.MILLION_ARTICLE_CLUSTER_HOURS),
    "stream": (Key.MILLION_ARTICLE_STREAM, Key.MILLION_ARTICLE_STREAM_HOURS),
}


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
    """Shards in ``store``'s completion record, read as it is written (no zarr, no lock)."""
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
    #: The last line the process printed, if it failed.
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


def run_rows(keys: RunKeys, run: Run, tasks: int) -> list[Row]:
    """The rows of one run: whether it finished, its times and its peak memory."""
    rows = [Row(keys.finished, float(run.finished), YES_NO)]
    if run.finished:
        rows += [
            Row(keys.seconds, run.seconds, SECONDS),
            Row(keys.tasks_per_second, tasks / run.seconds, "tasks/s"),
            Row(keys.per_task, run.seconds / tasks * 1e3, "ms"),
        ]
    rows.append(Row(keys.driver_peak, run.driver_mib, MIB))
    if run.worker_mib:
        rows.append(Row(keys.worker_peak, run.worker_mib, MIB))
    return rows


def _say(name: str, run: Run) -> None:
    outcome = "finished" if run.finished else f"FAILED (exit {run.status}: {run.error})"
    print(
        f"million: {name}: {outcome}; sample {run.seconds:.1f} s, process {run.wall:.1f} s, "
        f"driver peak {run.driver_mib:.0f} MiB, largest worker {run.worker_mib:.0f} MiB",
        file=sys.stderr,
    )


# -- many small cubes -----------------------------------------------------------------


def _shard_files(store: str, n_shards: int) -> set[int]:
    """The shards of ``store`` whose files exist (the cubes array's grid is its shards')."""
    metadata = open_cubes(store, allow_incomplete=True).cubes.metadata
    cubes = Path(store) / "cubes"
    return {
        s for s in range(n_shards) if (cubes / metadata.encode_chunk_key((s, 0, 0, 0))).exists()
    }


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


def _verify(store: str, frames_store: str) -> tuple[float, bool]:
    """Seconds of ``python -m daskcubes.workflow verify`` of ``store`` against its frames
    store (the process's whole life), and whether it found no problem."""
    command = [sys.executable, "-m", "daskcubes.workflow", "verify", store]
    started = time.perf_counter()
    done = subprocess.run(
        [*command, "--against", frames_store], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    print(f"million: verify: {done.stdout.strip()}{done.stderr.strip()}", file=sys.stderr)
    return seconds, done.returncode == 0


def measure_small(
    scratch: Path, cubes: int, cluster: bool = True, timeout: float = 900
) -> list[Row]:
    """Rows of ``cubes`` small cubes in tasks of 16: clean runs, a kill and resume, verify.

    A run still going after ``timeout`` seconds is killed and reported as failed.
    """
    frames_store = make_frames_store(str(scratch / "frames.zarr"), random_frames(*SMALL_FRAMES))
    tasks = n_shards = -(-cubes // SHARD)

    def args(out: str, *more: str) -> list[str]:
        return [
            "--frames-store", frames_store, "--out", out, "--cubes", str(cubes),
            "--dim", str(SMALL_DIM), "--shard-size", str(SHARD), "--task-size", str(SHARD),
            "--quiet", *more,
        ]  # fmt: skip

    rows = [
        Row(Key.MILLION_CUBES, cubes, "cubes"),
        Row(Key.MILLION_TASKS, tasks, "tasks"),
    ]
    clean = str(scratch / "threads.zarr")
    threads = run_sample(
        args(clean, "--overwrite", *THREADS_ARGS), clean, scratch / "threads.log", timeout=timeout
    )
    _say("threads", threads)
    rows += run_rows(THREADS, threads, tasks)
    if threads.finished:
        entries = sum(len(folders) + len(files) for _, folders, files in os.walk(clean))
        rows.append(Row(Key.MILLION_ENTRIES_PER_SHARD, entries / n_shards, "entries"))
    if cluster:
        out = str(scratch / "cluster.zarr")
        dashboard = ["--dashboard-address", "127.0.0.1:0"]
        on_cluster = run_sample(
            args(out, "--overwrite", *CLUSTER_ARGS, *dashboard),
            out,
            scratch / "cluster.log",
            timeout=timeout,
        )
        _say("LocalCluster", on_cluster)
        rows += run_rows(CLUSTER, on_cluster, tasks)
        if on_cluster.finished and threads.finished:
            same = store_digest(out) == store_digest(clean)
            rows += [
                Row(Key.MILLION_CLUSTER_VS_THREADS, on_cluster.seconds / threads.seconds, RATIO),
                Row(Key.MILLION_CLUSTER_IDENTICAL, float(same), YES_NO),
            ]
        shutil.rmtree(out, ignore_errors=True)

    killed = str(scratch / "killed.zarr")
    first = run_sample(
        args(killed, "--overwrite", *THREADS_ARGS), killed, scratch / "killed.log", n_shards // 2
    )
    attrs = open_cubes(killed, allow_incomplete=True).attrs
    in_record = recorded_progress(attrs).get("shards", set())
    written = _shard_files(killed, n_shards)
    # What the resume redid: shards already written whole, but not yet in the record.
    redone = len(written - in_record) if not attrs["complete"] else 0
    record_bytes = (Path(killed) / "zarr.json").stat().st_size
    n_ranges = len((attrs.get("progress") or {}).get("shards", []))
    save = _save_seconds(killed)
    print(
        f"million: killed (exit {first.status}) with {len(in_record)} of {n_shards} shards "
        f"recorded and {len(written)} written; one save of the record: {save * 1e3:.2f} ms, "
        f"{record_bytes} bytes, {n_ranges} ranges",
        file=sys.stderr,
    )
    resumed = run_sample(args(killed, "--resume", *THREADS_ARGS), killed, scratch / "resume.log")
    _say("resume", resumed)
    # A first run that ended before the kill leaves a complete store, which the resume
    # finds complete already (it prints no rate): what counts then is the store.
    identical = (
        resumed.status == 0 and threads.finished and store_digest(killed) == store_digest(clean)
    )
    verify_seconds, sound = _verify(killed, frames_store)
    rows += [
        Row(Key.MILLION_RECORD_SAVE, save * 1e3, "ms"),
        Row(Key.MILLION_RECORD_BYTES, record_bytes, "bytes"),
        Row(Key.MILLION_RECORD_RANGES, n_ranges, "ranges"),
        Row(Key.MILLION_KILLED_AT, len(in_record), "shards"),
        Row(Key.MILLION_REDONE, redone, "tasks"),
        Row(Key.MILLION_REDONE_SHARE, 100 * redone / tasks, "%"),
        Row(Key.MILLION_IDENTICAL, float(identical), YES_NO),
        Row(
            Key.MILLION_VERIFY,
            verify_seconds if sound else float("nan"),
            SECONDS,
            note="(the verify command, a process of its own)",
        ),
    ]
    for store in (clean, killed):
        shutil.rmtree(store, ignore_errors=True)
    return rows


# -- the article's shapes -------------------------------------------------------------


def article_frames(root: Path) -> str:
    """The article-shape frames store under ``root``, made once and then kept."""
    print(f"million: the article-shape frames store under {root} (made once)", file=sys.stderr)
    return make_frames_store(str(root / "frames.zarr"), random_frames(*ARTICLE_FRAMES), "resume")


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


def measure_article(frames_store: str, scratch: Path, cubes: int, repeats: int = 2) -> list[Row]:
    """Rates at the article's shapes on threads, a LocalCluster and in stream mode (the
    best of ``repeats`` runs each, so that each has its slab loaded), projected to 1M cubes."""
    job = {"frames_store": frames_store, "cubes": cubes, "dim": ARTICLE_DIM, "synthetic": False}
    config = Config.model_validate({**job, "workers": 2, "out": str(scratch / "article.zarr")})

    def rate(client: Client | None = None) -> float:
        return daskcubes.sample(config, client=client, mode="overwrite", progress=False).rate

    rates = {"threads": max(rate() for _ in range(repeats))}
    try:
        with local_cluster(workers=2, threads_per_worker=1) as client:
            rates["cluster"] = max(rate(client) for _ in range(repeats))
    except Exception as exc:  # a failed cluster run is a finding of the benchmark
        print(f"million: article shapes on a LocalCluster FAILED: {exc!r}", file=sys.stderr)
    shutil.rmtree(config.out, ignore_errors=True)
    rates["stream"] = max(_stream_rate(config) for _ in range(repeats))
    rows: list[Row] = []
    for method, value in rates.items():
        rate_key, hours_key = ARTICLE_METHODS[method]
        rows += [Row(rate_key, value, CUBES_PER_S), Row(hours_key, 1e6 / value / 3600, "h")]
    cube_bytes = ARTICLE_FRAMES[0] * ARTICLE_DIM**2 * 8
    rows.append(Row(Key.MILLION_ARTICLE_BYTES, 1e6 * cube_bytes, "bytes"))
    return rows


# -- the measurement ------------------------------------------------------------------


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
    shapes (frames store made there once and kept)."""
    rows = measure_small(scratch, cubes, cluster, timeout)
    if article_root is not None and article_cubes:
        rows += measure_article(article_frames(article_root), scratch, article_cubes)
    return rows


def measure_million(setup: Setup) -> list[Row]:
    """The measurement ``--only million`` runs, sized by the setup's ``million_*`` options."""
    scratch = Path(setup.scratch) / "million"
    scratch.mkdir(parents=True, exist_ok=True)
    article = Path(setup.article_root) if setup.article_cubes else None
    return measure(
        scratch,
        setup.million_cubes,
        setup.million_cluster,
        article,
        setup.article_cubes,
        setup.million_timeout,
    )
