"""A LocalCluster of 2 single-threaded workers against the threaded scheduler.

Both cut the same cubes from the same frames store into tmpfs; the cluster is started
before timing (a long run pays that once), and a first, untimed run of each loads its
source slab. The methods then take turns, ``repeats`` pairs, and the ratio is the median
of the pairs' ratios, so that both see the same load of a shared machine. The two stores
are checked to be byte-identical. Alone: ``python workflows/bench_distributed.py``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from bench.rows import CUBES_PER_S, RATIO, Key, Row, Workload
from daskcubes import jobs
from daskcubes.config import Config
from daskcubes.runtime.executors import Executor
from daskcubes.testing import assert_stores_identical

CLUSTER = {"scheduler": "distributed", "workers": 2, "threads_per_worker": 1}


def _rate(config: Config, executor: Executor) -> float:
    return jobs.sample(config, "overwrite", show_progress=False, executor=executor).rate


def measure(work: Workload, repeats: int = 5) -> list[Row]:
    """Median rates of the threaded scheduler and of a 2-worker LocalCluster, and the
    median ratio of alternating pairs (stores in scratch)."""
    job = {
        "synthetic": False,
        "frames_store": work.frames_store,
        "cubes": work.cubes,
        "dim": work.dim,
        "dtype": work.dtype,
    }
    threaded = Config.model_validate(
        {**job, "workers": work.threads, "out": f"{work.scratch}/threads.zarr"}
    )
    cluster = Config.model_validate(
        {
            **job,
            **CLUSTER,
            "out": f"{work.scratch}/cluster.zarr",
            "dashboard_address": "127.0.0.1:0",
        }
    )
    threads_rates, cluster_rates = [], []
    with jobs.executor_for(threaded) as on_threads, jobs.executor_for(cluster) as on_cluster:
        _rate(threaded, on_threads)  # loads the slab
        _rate(cluster, on_cluster)
        for _ in range(repeats):  # interleaved, so that both see the same machine load
            threads_rates.append(_rate(threaded, on_threads))
            cluster_rates.append(_rate(cluster, on_cluster))
    assert_stores_identical(threaded.out, cluster.out)
    for config in (threaded, cluster):
        shutil.rmtree(config.out, ignore_errors=True)
    ratios = [c / t for c, t in zip(cluster_rates, threads_rates, strict=True)]
    return [
        Row(
            Key.THREADED,
            statistics.median(threads_rates),
            CUBES_PER_S,
            note=f"({work.threads} threads)",
        ),
        Row(Key.CLUSTER, statistics.median(cluster_rates), CUBES_PER_S),
        Row(Key.CLUSTER_RATIO, statistics.median(ratios), RATIO, note=f"({repeats} pairs)"),
    ]


def make_frames_store(root: Path, n_frames: int, n_rows: int, n_cols: int) -> str:
    """Synthetic frames and their frames store under ``root``; the store's path."""
    config = Config.model_validate(
        {
            "frames": str(root / "frames"),
            "frames_store": str(root / "frames.zarr"),
            "n_frames": n_frames,
            "n_rows": n_rows,
            "n_cols": n_cols,
            "dim": min(100, n_rows, n_cols),
        }
    )
    jobs.generate(config, show_progress=False)
    jobs.ingest(config, show_progress=False)
    return config.frames_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames-store", help="an existing frames store (default: make one)")
    parser.add_argument("--n-frames", type=int, default=100, help="frames of the store made")
    parser.add_argument("--n-rows", type=int, default=100, help="rows of the store made")
    parser.add_argument("--n-cols", type=int, default=1000, help="columns of the store made")
    parser.add_argument("--cubes", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2, help="threads of the threaded run")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--repeats", type=int, default=5, help="alternating pairs of runs")
    parser.add_argument("--scratch", default="/dev/shm", help="where stores are written")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-distributed-", dir=args.scratch))
    try:
        frames_store = args.frames_store or make_frames_store(
            scratch, args.n_frames, args.n_rows, args.n_cols
        )
        work = Workload(frames_store, str(scratch), args.cubes, args.threads, args.dtype, 100)
        rows = measure(work, repeats=args.repeats)
    finally:
        shutil.rmtree(scratch)
    print(f"{args.cubes} cubes, {args.dtype}, frames store {frames_store}")
    for row in rows:
        print(f"{row.method:55s} {row.rate:10.2f} {row.unit}")
