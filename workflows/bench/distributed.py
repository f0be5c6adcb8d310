"""A LocalCluster of 2 single-threaded workers against the threaded scheduler.

Both cut the same cubes from the same frames store into tmpfs; the cluster is started
before timing (a long run pays that once), and a first, untimed run of each loads its
source slab. The methods then take turns, ``repeats`` pairs, and the ratio is the median
of the pairs' ratios, so that both see the same load of a shared machine. The two stores
are checked to be byte-identical. Alone: ``python workflows/bench_distributed.py``.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import dask

import daskcubes
from bench.data import make_frames_store, random_frames, store_digest
from bench.rows import CUBES_PER_S, RATIO, Key, Row, Workload
from daskcubes import Config

if TYPE_CHECKING:
    from distributed import Client

#: The settings daskcubes gives the LocalCluster it starts for ``scheduler: distributed``
#: (daskcubes.runtime.executors): no root-task queuing (4 ms a task, measured, for tasks
#: of 1 ms on single-threaded workers) and glibc's own mmap threshold in the workers
#: (the nannies' MALLOC_TRIM_THRESHOLD_ cost 1.6x the CPU time of a sampling run).
CLUSTER_SETTINGS = {
    "distributed.scheduler.worker-saturation": math.inf,
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
}


@contextmanager
def local_cluster(workers: int = 2, threads_per_worker: int = 1) -> Iterator[Client]:
    """A client of a LocalCluster of process workers on 127.0.0.1, set up as daskcubes
    sets up its own, for the public API's ``client=``: one cluster serves many runs."""
    from distributed import Client, LocalCluster

    with dask.config.set(CLUSTER_SETTINGS):
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            silence_logs=logging.WARNING,
        )
    with cluster, Client(cluster, set_as_default=False) as client:
        yield client


def _rate(config: Config, client: Client | None = None) -> float:
    return daskcubes.sample(config, client=client, mode="overwrite", progress=False).rate


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
    cluster = Config.model_validate({**job, "out": f"{work.scratch}/cluster.zarr"})
    threads_rates, cluster_rates = [], []
    with local_cluster() as client:
        _rate(threaded)  # loads the slab
        _rate(cluster, client)
        for _ in range(repeats):  # interleaved, so that both see the same machine load
            threads_rates.append(_rate(threaded))
            cluster_rates.append(_rate(cluster, client))
    if store_digest(threaded.out) != store_digest(cluster.out):
        raise AssertionError("the LocalCluster's cube store differs from the threaded one")
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
            str(scratch / "frames.zarr"), random_frames(args.n_frames, args.n_rows, args.n_cols)
        )
        work = Workload(frames_store, str(scratch), args.cubes, args.threads, args.dtype, 100)
        rows = measure(work, repeats=args.repeats)
    finally:
        shutil.rmtree(scratch)
    print(f"{args.cubes} cubes, {args.dtype}, frames store {frames_store}")
    for row in rows:
        print(f"{row.method:55s} {row.rate:10.2f} {row.unit}")
