"""The rows of the benchmark table: their keys, groups and units.

Every row is keyed by a :class:`Key`; targets, ceilings, the charts and other workflows
refer to rows by these keys only, so that a renamed row cannot leave a target behind.
"""

from __future__ import annotations

import importlib
from enum import StrEnum
from typing import NamedTuple

CUBES_PER_S = "cubes/s"
FILES_PER_S = "files/s"
SECONDS = "s"
MIB = "MiB"
RATIO = "x"


class Key(StrEnum):
    """Every row of the table; the value is the row's label in the table and charts."""

    READ_CSV = "article read: pandas.read_csv"
    READ_PARQUET = "article read: pandas.read_parquet"
    STEP0 = "article step 0: re-read every file per cube"
    STEP1 = "article step 1: dict of DataFrames"
    STEP2 = "article step 2: numpy arr[:, :dim, cols]"
    STEP3 = "article step 3: numpy + ThreadPool"
    STEP3_STACKED = "article step 3 on np.stack(DataFrame.to_numpy())"
    PLAIN_DASK = "plain dask.array: slice per cube, to_zarr"
    INGEST = "daskcubes ingest: files -> frames store"
    GENERATION = "daskcubes generation (no store)"
    END_TO_END = "daskcubes end to end into the cube store"
    END_TO_END_FLOAT32 = "daskcubes end to end, float32"
    WRITE_DASKCUBES = "write path: daskcubes whole shards"
    WRITE_ZARR = "write path: zarr-python codec pipeline"
    WRITE_ZARRS = "write path: zarrs codec pipeline"
    IO_CEILING = "I/O ceiling: ndarray.tofile"
    MEMORY_CEILING = "memory ceiling: copy one cache-resident cube"
    CUT_CEILING = "cut ceiling: copy cubes from a source beyond the cache"
    PLAN_TIME = "planning: time"
    PLAN_MEMORY = "planning: peak memory"
    MEMORY_SMALL = "peak memory of the smaller run"
    MEMORY_LARGE = "peak memory of the larger run"
    THREADED = "daskcubes on the threaded scheduler"
    CLUSTER = "daskcubes on a LocalCluster (2 workers x 1 thread)"
    CLUSTER_RATIO = "LocalCluster / threaded scheduler, median of alternating pairs"
    STORE_BATCHES = "cube store, random-order batches"
    FROMFILE = "numpy.fromfile, same bytes"
    STREAM_BATCHES = "stream mode, random-order batches"
    DEVICE_CPU_STREAM = 'stream mode on device="cpu" (torch tensors), random-order batches'
    DEVICE_CPU_RATIO = 'stream mode on device="cpu" / stream mode, median of alternating pairs'
    DEVICE_GATHER_CPU = "stream mode, torch's device gather run on the CPU"
    TORCH_STORE = "torch DataLoader, cube store (2 workers)"
    TORCH_STREAM = "torch DataLoader, stream mode (2 workers)"
    ROW_WINDOWS = "daskcubes generation, random row windows"
    WINDOWS = "daskcubes generation, windows in every axis"
    XBATCHER = "xbatcher.BatchGenerator over xarray.open_zarr, same windows"
    OUT_OF_CORE_PEAK = "out of core: peak memory / (budget + one batch)"


ARTICLE = "the article's ladder"
BASELINE = "other baselines"
DASKCUBES = "daskcubes"
CEILING = "the machine's ceilings"

GROUP: dict[Key, str] = {
    **dict.fromkeys(
        [
            Key.READ_CSV,
            Key.READ_PARQUET,
            Key.STEP0,
            Key.STEP1,
            Key.STEP2,
            Key.STEP3,
            Key.STEP3_STACKED,
        ],
        ARTICLE,
    ),
    **dict.fromkeys(
        [Key.PLAIN_DASK, Key.WRITE_ZARR, Key.WRITE_ZARRS, Key.FROMFILE, Key.XBATCHER], BASELINE
    ),
    **dict.fromkeys([Key.IO_CEILING, Key.MEMORY_CEILING, Key.CUT_CEILING], CEILING),
}
GROUP.update({key: DASKCUBES for key in Key if key not in GROUP})


class Row(NamedTuple):
    """One line of the table.

    ``ceiling`` is the key of the row whose rate bounds this one (``None``: none applies);
    ``note`` completes the label with what varies between runs, e.g. ``(500 cubes)``.
    """

    key: Key
    rate: float
    unit: str
    ceiling: Key | None = None
    note: str = ""

    @property
    def method(self) -> str:
        """The row's label in the table."""
        return f"{self.key} {self.note}".rstrip()


class Workload(NamedTuple):
    """What a joined workflow's ``measure(workload) -> list[Row]`` gets from the run:
    the frames store, a scratch folder (tmpfs), and the run's cubes, threads, dtype, edge."""

    frames_store: str
    scratch: str
    cubes: int
    threads: int
    dtype: str
    dim: int


#: Rows measured only where torch is installed.
TORCH_ROWS = frozenset(
    {
        Key.DEVICE_CPU_STREAM,
        Key.DEVICE_CPU_RATIO,
        Key.DEVICE_GATHER_CPU,
        Key.TORCH_STORE,
        Key.TORCH_STREAM,
    }
)


def importable(module: str) -> bool:
    """Whether ``module`` imports (rows that need it are skipped, and said so, if not)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
