"""Benchmark of the training side: reading stored cubes and streaming them.

    python workflows/bench_reading.py [--cubes 256] [--threads 2] [--dtype float64]

Measured side by side in one run, everything in tmpfs:

- random-order batches read from a cube store (``Batches``, no prefetch) against reading
  the same bytes of the same shard files with ``numpy.fromfile`` (target >= 0.8x);
- stream mode (cubes cut on demand from the frames store) against the article's step 3,
  ``arr[:, :dim, cols]`` on an in-memory numpy array in a ThreadPool (target >= 5x).

Without ``--frames-store`` it makes 100 synthetic 1000x1000 frames under ``--scratch``
first, and deletes the scratch directory at the end.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr

from daskcubes import open_cubes, pipeline
from daskcubes.batches import Batches
from daskcubes.config import Config
from daskcubes.plan import cube_columns
from daskcubes.stream import open_stream

BATCH = 16
REPEATS = 2  # best of: the machine is shared, the best run is the least disturbed


def drain(batches: Batches) -> Callable[[], None]:
    """One epoch of ``batches``, each dropped once read, as a training loop would."""

    def run() -> None:
        for _ in batches:
            pass

    return run


def best_rate(items: int, run: Callable[[], object]) -> float:
    rates = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        run()
        rates.append(items / (time.perf_counter() - started))
    return max(rates)


def fromfile_batches(config: Config, batches: list[np.ndarray]) -> Callable[[], None]:
    """Reads of the same cubes' bytes with numpy.fromfile, one call per cube."""
    store = open_cubes(config.out)
    count = int(np.prod(store.cube_shape))
    nbytes = count * store.dtype.itemsize
    shards = Path(config.out) / "cubes" / "c"

    def run() -> None:
        for indices in batches:
            out = np.empty((len(indices), *store.cube_shape), dtype=store.dtype)
            for k, i in enumerate(indices):
                shard, local = divmod(int(i), config.shard_size)
                path = shards / str(shard) / "0" / "0" / "0"
                out[k] = np.fromfile(path, store.dtype, count, offset=local * nbytes).reshape(
                    store.cube_shape
                )

    # Uncompressed shards hold their chunks in cube order: check that it reads right.
    sample = batches[0][:1]
    shard, local = divmod(int(sample[0]), config.shard_size)
    raw = np.fromfile(
        shards / str(shard) / "0" / "0" / "0", store.dtype, count, offset=local * nbytes
    )
    assert np.array_equal(raw.reshape(store.cube_shape), store[int(sample[0])])
    return run


def step3(config: Config, cubes: int, threads: int) -> Callable[[], None]:
    """The article's step 3: every frame in one numpy array, one fancy slice per cube."""
    frames = np.asarray(zarr.open_array(config.frames_store, path="frames", mode="r")[:])
    frames = frames.astype(config.dtype, copy=False)
    n_cols = frames.shape[2]

    def cube(i: int) -> np.ndarray:
        return frames[:, : config.dim, cube_columns(config.seed, i, n_cols, config.dim)]

    def run() -> None:
        with ThreadPoolExecutor(threads) as pool:
            for _ in pool.map(cube, range(cubes)):
                pass

    return run


def measure(
    frames_store: str, scratch: str, cubes: int, threads: int, dtype: str, dim: int = 100
) -> list[tuple[str, float, str]]:
    """Rates (method, rate, unit) of reading and streaming ``cubes`` cubes of edge ``dim``.

    Writes a cube store under ``scratch`` (put it in tmpfs) from ``frames_store``.
    """
    config = Config(
        synthetic=False,
        frames_store=frames_store,
        out=str(Path(scratch) / "bench-cubes.zarr"),
        cubes=cubes,
        dim=dim,
        dtype=dtype,
        workers=threads,
    )
    pipeline.sample(config, mode="overwrite", show_progress=False)
    try:
        store = Batches(open_cubes(config.out), BATCH, shuffle=True, seed=1, prefetch=0)
        batches = store.plan.batches(0)
        stream = Batches(open_stream(config), BATCH, shuffle=True, seed=1, prefetch=0)
        stream.source.read(np.arange(1))  # load the slab outside the timing
        results = [
            ("cube store, random-order batches", best_rate(cubes, drain(store)), "cubes/s"),
            (
                "numpy.fromfile, same bytes",
                best_rate(cubes, fromfile_batches(config, batches)),
                "cubes/s",
            ),
            ("stream mode, random-order batches", best_rate(cubes, drain(stream)), "cubes/s"),
            (
                f"article step 3, {threads} threads",
                best_rate(cubes, step3(config, cubes, threads)),
                "cubes/s",
            ),
        ]
    finally:
        shutil.rmtree(config.out, ignore_errors=True)
    (_, read, _), (_, fromfile, _), (_, streamed, _), (_, article, _) = results
    results.append(("ratio cube store / numpy.fromfile (target >= 0.8)", read / fromfile, "x"))
    results.append(("ratio stream / article step 3 (target >= 5)", streamed / article, "x"))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames-store", help="existing frames store (default: make one)")
    parser.add_argument("--scratch", default="/dev/shm/daskcubes-bench-reading")
    parser.add_argument("--cubes", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    args = parser.parse_args()
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        frames_store = args.frames_store
        if frames_store is None:
            frames_store = str(scratch / "frames.zarr")
            made = Config(frames=str(scratch / "frames"), frames_store=frames_store, cubes=1)
            pipeline.generate(made, mode="overwrite", show_progress=False)
            pipeline.ingest(made, mode="overwrite", show_progress=False)
        for method, rate, unit in measure(
            frames_store, str(scratch), args.cubes, args.threads, args.dtype
        ):
            print(f"{method:55s} {rate:10.2f} {unit}")
    finally:
        if args.frames_store is None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
