"""The article's ladder, run as its authors ran it, and a plain dask.array attempt.

The article's step 3 (its "PARALLELIZATION" block)::

    with ThreadPool(processes=proc) as pool:
        cubes = pool.imap_unordered(work, (None for i in range(ncubes)))
        for n in range(ncubes):
            c = next(cubes)  # Cube is retrieved here

consumes each cube as it arrives and keeps none. :func:`article_step3` is that block,
and the only one: every row and chart showing step 3 calls it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from multiprocessing.pool import ThreadPool
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd

from bench.data import Setup, article_array, parquet_files, read_frames, scratch_path, timed
from bench.rows import CUBES_PER_S, FILES_PER_S, Key, Row


def article_step3(arr: np.ndarray, dim: int, columns: Sequence[np.ndarray], threads: int) -> float:
    """Cubes per second of the article's step 3: ``arr[:, :dim, cols]`` for each of
    ``columns`` on a ``ThreadPool`` of ``threads``, each cube taken with ``next`` and
    dropped, as in the article.

    The columns are chosen beforehand (like daskcubes chooses them) so that every method
    cuts the same cubes; choosing them is a few microseconds of the article's ``work``.
    """

    def work(cols: np.ndarray) -> np.ndarray:
        return arr[:, :dim, cols]

    with ThreadPool(processes=threads) as pool:
        started = time.perf_counter()
        cubes = pool.imap_unordered(work, columns)
        for _ in range(len(columns)):
            next(cubes)  # the cube is retrieved here, and dropped
        return len(columns) / (time.perf_counter() - started)


def measure_reads(setup: Setup) -> list[Row]:
    """The article's reads: pandas.read_csv and pandas.read_parquet, file after file."""
    csv = sorted(Path(setup.csv_frames).glob("*.csv"))
    parquet = parquet_files(setup)
    csv_s = timed(lambda: [pd.read_csv(path) for path in csv])
    parquet_s = timed(lambda: [pd.read_parquet(path) for path in parquet])
    return [
        Row(Key.READ_CSV, len(csv) / csv_s, FILES_PER_S),
        Row(Key.READ_PARQUET, len(parquet) / parquet_s, FILES_PER_S),
    ]


def _stack_cube(frames: Sequence[pd.DataFrame], dim: int, columns: np.ndarray) -> np.ndarray:
    return np.stack([frame.iloc[:dim, columns].to_numpy() for frame in frames])


def measure_steps(setup: Setup) -> list[Row]:
    """The article's steps 0-3 (step 3 over ``np.stack`` of ``DataFrame.to_numpy()`` is a
    row of :mod:`bench.cut_rows`, beside the cut it is compared with)."""
    files, dim = parquet_files(setup), setup.dim
    few = setup.columns(setup.few)
    step0_cubes = few[: max(1, setup.few // 8)]
    step0 = timed(
        lambda: [_stack_cube([pd.read_parquet(p) for p in files], dim, c) for c in step0_cubes]
    )
    frames = read_frames(setup)
    step1 = timed(lambda: [_stack_cube(frames, dim, c) for c in few])
    arr = article_array(frames)
    step2 = timed(lambda: [arr[:, :dim, c] for c in few])
    many = setup.columns(setup.cubes)
    return [
        Row(Key.STEP0, len(step0_cubes) / step0, CUBES_PER_S),
        Row(Key.STEP1, len(few) / step1, CUBES_PER_S),
        Row(Key.STEP2, len(few) / step2, CUBES_PER_S),
        Row(Key.STEP3, article_step3(arr, dim, many, setup.threads), CUBES_PER_S, Key.CUT_CEILING),
    ]


def measure_plain_dask(setup: Setup) -> list[Row]:
    """A plain dask.array attempt: one fancy-indexed slice per cube, da.stack, to_zarr."""
    frames = da.from_zarr(setup.frames_store, component="frames")
    cubes = da.stack([frames[:, : setup.dim, c] for c in setup.columns(setup.few)])
    threads = dask.config.set(scheduler="threads", num_workers=setup.threads)
    with scratch_path(setup, "plain-dask.zarr") as path, threads:
        seconds = timed(lambda: cubes.to_zarr(str(path)))
    return [Row(Key.PLAIN_DASK, setup.few / seconds, CUBES_PER_S)]
