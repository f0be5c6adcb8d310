"""What a run works on: its :class:`Setup`, the data it prepares, and small helpers.

:func:`make_frames_store` is the one way the workflows make a frames store: through
the public :func:`daskcubes.ingest`, from frame files or from an array such as
:func:`random_frames`. This module imports nothing beyond what ``import daskcubes``
imports itself, so that ``workflows/device_check.py`` can use it on a GPU machine.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import numpy as np
import pandas as pd

import daskcubes
from bench.rows import Workload
from daskcubes import Config
from daskcubes.core.plan import cube_columns


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
    #: bench.million: its small cubes, whether it runs a LocalCluster too, the seconds
    #: after which a run counts as failed, and the article-shape runs' cubes and the
    #: folder where their frames store is made once and kept (no such runs at 0 cubes).
    million_cubes: int = 1_000_000
    million_cluster: bool = True
    million_timeout: float = 900
    article_cubes: int = 64
    article_root: str = "/dev/shm/daskcubes-article"
    #: bench.volumes: how many volumes, each about ``volume_frames`` frames of
    #: ``volume_size`` x ``volume_size`` (drawn from ``volume_seed``), the patches' edge,
    #: and the patches of each row's call (a multiple of 4 x ``volume_count``).
    volume_count: int = 24
    volume_frames: int = 64
    volume_size: int = 256
    volume_patch: int = 32
    volume_patches: int = 3072
    volume_seed: int = 27

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

    @property
    def workload(self) -> Workload:
        """What a joined workflow gets."""
        return Workload(
            self.frames_store, self.scratch, self.cubes, self.threads, self.dtype, self.dim
        )


def timed(work: Callable[[], object]) -> float:
    """Seconds ``work()`` takes."""
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


_pools: dict[int, ThreadPool] = {}


def on_threads(threads: int, work: Callable[[int], None]) -> float:
    """Seconds for ``work(0 .. threads - 1)``, each call on a thread of a pool that lives
    as long as the process, as a worker's threads do: what a thread keeps (the cutter's
    buffer) is kept from one call to the next, not made and paged in again."""
    pool = _pools.get(threads) or _pools.setdefault(threads, ThreadPool(threads))
    return timed(lambda: pool.map(work, range(threads), chunksize=1))


@contextmanager
def scratch_path(setup: Setup, name: str) -> Iterator[Path]:
    """A fresh path under scratch, deleted afterwards."""
    path = Path(setup.scratch) / name
    shutil.rmtree(path, ignore_errors=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def random_frames(n_frames: int, n_rows: int, n_cols: int, seed: int = 0) -> da.Array:
    """``n_frames`` frames of ``n_rows`` x ``n_cols`` random float64, one chunk per frame
    (made lazily, a frame at a time)."""
    shape = (n_frames, n_rows, n_cols)
    return da.random.default_rng(seed).random(shape, chunks=(1, n_rows, n_cols))


def make_frames_store(
    frames_store: str, frames: Any, mode: Literal["overwrite", "resume"] = "overwrite"
) -> str:
    """The frames store at ``frames_store``, made by :func:`daskcubes.ingest` from
    ``frames``: a folder of frame files, or a numpy or dask array (frame, row, column).
    ``mode="resume"`` keeps a complete store as it is. Returns ``frames_store``."""
    daskcubes.ingest(frames=frames, frames_store=frames_store, mode=mode, progress=False)
    return frames_store


def write_frame_files(folder: str, frames: da.Array, fmt: str, count: int) -> None:
    """The first ``count`` of ``frames`` as files ``frame_<i>.<fmt>`` (parquet or csv),
    one table of named float columns each, as the article stores its frames."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        table = pd.DataFrame(np.asarray(frames[i]))
        table.columns = [f"c{j}" for j in range(table.shape[1])]
        if fmt == "parquet":
            table.to_parquet(Path(folder) / f"frame_{i}.parquet", index=False)
        else:
            table.to_csv(Path(folder) / f"frame_{i}.csv", index=False)


def prepare(setup: Setup) -> None:
    """Random parquet frames, a few of them as CSV, and their daskcubes frames store
    (ingested from the parquet files)."""
    frames = random_frames(setup.n_frames, setup.n_rows, setup.n_cols)
    write_frame_files(setup.frames, frames, "parquet", setup.n_frames)
    write_frame_files(setup.csv_frames, frames, "csv", min(setup.few, setup.n_frames))
    make_frames_store(setup.frames_store, setup.frames)


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


def parquet_files(setup: Setup) -> list[Path]:
    return sorted(Path(setup.frames).glob("*.parquet"))


def read_frames(setup: Setup) -> list[pd.DataFrame]:
    """Every parquet frame as a DataFrame, as the article's step 1 holds them."""
    return [pd.read_parquet(path) for path in parquet_files(setup)]


def article_array(frames: list[pd.DataFrame]) -> np.ndarray:
    """The article's ``arr``: all frames in one C-order numpy array."""
    return np.stack([np.ascontiguousarray(frame.to_numpy()) for frame in frames])
