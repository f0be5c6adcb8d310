"""What a run works on: its :class:`Setup`, the data it prepares, and small helpers."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.rows import Workload
from daskcubes import jobs
from daskcubes.config import Config
from daskcubes.core.plan import cube_columns
from daskcubes.io.storage import Storage
from daskcubes.io.synthetic import write_synthetic_frame


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


def on_threads(threads: int, work: Callable[[int], None]) -> float:
    """Seconds for ``work(0 .. threads - 1)``, each call on its own thread."""
    with ThreadPool(threads) as pool:
        return timed(lambda: pool.map(work, range(threads)))


@contextmanager
def scratch_path(setup: Setup, name: str) -> Iterator[Path]:
    """A fresh path under scratch, deleted afterwards."""
    path = Path(setup.scratch) / name
    shutil.rmtree(path, ignore_errors=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def prepare(setup: Setup) -> None:
    """Synthetic parquet frames, a few CSV frames, and the daskcubes frames store."""
    jobs.generate(setup.config(synthetic=True), mode="overwrite", show_progress=False)
    Path(setup.csv_frames).mkdir(parents=True, exist_ok=True)
    for i in range(min(setup.few, setup.n_frames)):
        write_synthetic_frame(
            setup.csv_frames, "csv", 0, i, setup.n_rows, setup.n_cols, Storage.of()
        )
    jobs.ingest(setup.config(), mode="overwrite", show_progress=False)


def parquet_files(setup: Setup) -> list[Path]:
    return sorted(Path(setup.frames).glob("*.parquet"))


def read_frames(setup: Setup) -> list[pd.DataFrame]:
    """Every parquet frame as a DataFrame, as the article's step 1 holds them."""
    return [pd.read_parquet(path) for path in parquet_files(setup)]


def article_array(frames: list[pd.DataFrame]) -> np.ndarray:
    """The article's ``arr``: all frames in one C-order numpy array."""
    return np.stack([np.ascontiguousarray(frame.to_numpy()) for frame in frames])
