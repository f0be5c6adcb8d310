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
    STEP3_STACKED_FLOAT32 = "article step 3 on np.stack(DataFrame.to_numpy()), float32"
    PLAIN_DASK = "plain dask.array: slice per cube, to_zarr"
    INGEST = "daskcubes ingest: files -> frames store"
    CUT_KERNEL = "cut: the kernel alone, recipes computed beforehand"
    CUTTER = "cut: cut_range on threads (recipes, buffers; no dask)"
    GENERATION = "daskcubes generation (no store)"
    STREAM_READS = "stream mode: CubeStream.read, a batch per thread (no loader)"
    STREAM_LOOP = "stream mode: an epoch of Batches over CubeStream"
    STREAM_LOOP_FLOAT32 = "stream mode, float32: an epoch of Batches"
    STREAM_LOOP_ROW_WINDOWS = "stream mode, random row windows: an epoch of Batches"
    END_TO_END_BOUND = "end to end bound: 1/(1/generation + 1/write path)"
    END_TO_END = "daskcubes end to end into the cube store"
    END_TO_END_FLOAT32 = "daskcubes end to end, float32"
    END_TO_END_CHECKSUMS = "end to end into the cube store, chunk checksums"
    END_TO_END_NO_CHECKSUMS = "end to end into the cube store, no chunk checksums"
    CHECKSUMS_RATIO = "end to end with checksums / without, median of alternating pairs"
    VERIFY = "verify: every chunk of the store read and checked"
    READ_STORE_FILES = "reading the same store's files whole"
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
    DEVICE_GATHER_CPU = 'stream mode, the device stream on the CPU (gather="device")'
    TORCH_STORE = "torch DataLoader, cube store (2 workers)"
    TORCH_STREAM = "torch DataLoader, stream mode (2 workers)"
    WINDOWS = "daskcubes generation, windows in every axis"
    XBATCHER = "xbatcher.BatchGenerator over xarray.open_zarr, same windows"
    OUT_OF_CORE_PEAK = "out of core: peak memory / (budget + one batch)"
    PATCH_UNIFORM = "patches: daskcubes uniform windows (stream, Batches)"
    PATCH_GRID = "patches: daskcubes grid windows (stream, Batches)"
    PATCH_WEIGHTED = "patches: daskcubes weighted windows (stream, Batches)"
    PATCH_LABELS = "patches: daskcubes label-balanced windows (stream, Batches)"
    PLAN_WEIGHTED = "patches: planning weighted windows, one core"
    TORCHIO_UNIFORM = "patches: TorchIO UniformSampler"
    TORCHIO_QUEUE = "patches: TorchIO Queue + SubjectsLoader"
    TORCHIO_GRID = "patches: TorchIO GridSampler, uncollated"
    TORCHIO_WEIGHTED = "patches: TorchIO WeightedSampler"
    TORCHIO_LABELS = "patches: TorchIO LabelSampler"
    MONAI_UNIFORM = "patches: MONAI RandSpatialCropSamplesd"
    MONAI_GRID = "patches: MONAI GridPatchDataset"
    MONAI_WEIGHTED = "patches: MONAI RandWeightedCropd"
    MONAI_LABELS = "patches: MONAI RandCropByPosNegLabeld"
    # bench.million (``--only million``): threads are 2 threads; a LocalCluster is 2
    # workers x 1 thread, its scheduler in the driver process.
    MILLION_CUBES = "many small cubes: cubes per run"
    MILLION_TASKS = "many small cubes: tasks per run"
    MILLION_THREADS_FINISHED = "many small cubes, threads: finished (1 yes, 0 no)"
    MILLION_THREADS_SECONDS = "many small cubes, threads: sample time"
    MILLION_THREADS_TASKS_PER_S = "many small cubes, threads: tasks/s"
    MILLION_THREADS_PER_TASK = "many small cubes, threads: time per task"
    MILLION_THREADS_DRIVER_PEAK = "many small cubes, threads: driver peak RSS"
    MILLION_THREADS_WORKER_PEAK = "many small cubes, threads: peak RSS of the largest worker"
    MILLION_CLUSTER_FINISHED = "many small cubes, LocalCluster: finished (1 yes, 0 no)"
    MILLION_CLUSTER_SECONDS = "many small cubes, LocalCluster: sample time"
    MILLION_CLUSTER_TASKS_PER_S = "many small cubes, LocalCluster: tasks/s"
    MILLION_CLUSTER_PER_TASK = "many small cubes, LocalCluster: time per task"
    MILLION_CLUSTER_DRIVER_PEAK = "many small cubes, LocalCluster: driver peak RSS"
    MILLION_CLUSTER_WORKER_PEAK = "many small cubes, LocalCluster: peak RSS of the largest worker"
    MILLION_CLUSTER_VS_THREADS = "many small cubes: LocalCluster time / threads time"
    MILLION_CLUSTER_IDENTICAL = (
        "many small cubes: LocalCluster store identical to threads (1 yes, 0 no)"
    )
    MILLION_ENTRIES_PER_SHARD = "many small cubes: filesystem entries (files and folders) a shard"
    MILLION_RECORD_SAVE = "completion record: one save at the kill's state"
    MILLION_RECORD_BYTES = "completion record: the group's zarr.json at the kill"
    MILLION_RECORD_RANGES = "completion record: shard ranges at the kill"
    MILLION_KILLED_AT = "resume after SIGKILL: shards recorded at the kill"
    MILLION_REDONE = "resume after SIGKILL: batches redone"
    MILLION_REDONE_SHARE = "resume after SIGKILL: share of batches redone"
    MILLION_IDENTICAL = "resume after SIGKILL: identical to the clean run (1 yes, 0 no)"
    MILLION_VERIFY = "verify of the resumed store"
    MILLION_ARTICLE_THREADS = "article shapes, threads: rate"
    MILLION_ARTICLE_THREADS_HOURS = "article shapes, threads: a million cubes projected"
    MILLION_ARTICLE_CLUSTER = "article shapes, LocalCluster: rate"
    MILLION_ARTICLE_CLUSTER_HOURS = "article shapes, LocalCluster: a million cubes projected"
    MILLION_ARTICLE_STREAM = "article shapes, stream mode: rate"
    MILLION_ARTICLE_STREAM_HOURS = "article shapes, stream mode: a million cubes projected"
    MILLION_ARTICLE_BYTES = "article shapes: 1,000,000 cubes stored"
    # bench.volumes (``--only volumes``): label-balanced patches of many volumes.
    VOLUMES_INGEST = "many volumes: ingest of the volumes and their labels"
    VOLUMES_STREAM = "many volumes: daskcubes stream mode with labels (Batches)"
    VOLUMES_STREAM_QUARTER = "many volumes: stream mode with labels, a quarter-dataset budget"
    VOLUMES_QUARTER_RATIO = "many volumes: quarter budget / in memory, stream mode"
    VOLUMES_THREADS = "many volumes: daskcubes sample with labels, threads"
    VOLUMES_CLUSTER = "many volumes: daskcubes sample with labels, LocalCluster (2 x 1)"
    VOLUMES_TORCHIO = "many volumes: TorchIO Queue + LabelSampler + SubjectsLoader"
    VOLUMES_MONAI = "many volumes: MONAI CacheDataset + RandCropByLabelClassesd + DataLoader"
    VOLUMES_FASTER_PEER = "many volumes: the faster peer's rate"
    VOLUMES_STREAM_PEAK = "many volumes: stream mode's peak memory (with its workers)"
    VOLUMES_PEER_PEAK = "many volumes: the faster peer's peak memory (with its workers)"


ARTICLE = "the article's ladder"
BASELINE = "other baselines"
DASKCUBES = "daskcubes"
CEILING = "the machine's ceilings"
PATCH_LIBRARIES = "3-D patch libraries"
MILLION = "a million cubes"
VOLUMES = "many volumes"

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
            Key.STEP3_STACKED_FLOAT32,
        ],
        ARTICLE,
    ),
    **dict.fromkeys(
        [
            Key.PLAIN_DASK,
            Key.WRITE_ZARR,
            Key.WRITE_ZARRS,
            Key.FROMFILE,
            Key.XBATCHER,
            Key.READ_STORE_FILES,
        ],
        BASELINE,
    ),
    **dict.fromkeys([Key.IO_CEILING, Key.MEMORY_CEILING, Key.CUT_CEILING], CEILING),
    **dict.fromkeys(
        [key for key in Key if key.name.startswith(("TORCHIO_", "MONAI_"))], PATCH_LIBRARIES
    ),
}
GROUP.update({key: MILLION for key in Key if key.name.startswith("MILLION_")})
GROUP.update({key: VOLUMES for key in Key if key.name.startswith("VOLUMES_")})
GROUP.update({key: DASKCUBES for key in Key if key not in GROUP})

#: Rows measured only when ``--only`` names their measurement (it takes minutes and
#: processes of its own), by that measurement's name.
OPT_IN: dict[Key, str] = {
    **{key: "million" for key in Key if key.name.startswith("MILLION_")},
    **{key: "volumes" for key in Key if key.name.startswith("VOLUMES_")},
}

#: The module a row needs beyond the README's test line: without it the row is skipped.
NEEDS: dict[Key, str] = {
    Key.DEVICE_CPU_STREAM: "torch",
    Key.DEVICE_CPU_RATIO: "torch",
    Key.DEVICE_GATHER_CPU: "torch",
    Key.TORCH_STORE: "torch",
    Key.TORCH_STREAM: "torch",
    **{key: "torchio" for key in Key if key.name.startswith("TORCHIO_")},
    **{key: "monai" for key in Key if key.name.startswith("MONAI_")},
    Key.VOLUMES_TORCHIO: "torchio",
    Key.VOLUMES_MONAI: "monai",
}


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


def derived_rows(rows: list[Row]) -> list[Row]:
    """Rows computed from others: the end-to-end bound that cutting and writing on the
    same cores set, ``1 / (1/generation + 1/write path)``."""
    rates = {row.key: row.rate for row in rows}
    if not {Key.GENERATION, Key.WRITE_DASKCUBES} <= rates.keys():
        return []
    bound = 1 / (1 / rates[Key.GENERATION] + 1 / rates[Key.WRITE_DASKCUBES])
    return [Row(Key.END_TO_END_BOUND, bound, CUBES_PER_S)]


class Workload(NamedTuple):
    """What a joined workflow's ``measure(workload) -> list[Row]`` gets from the run:
    the frames store, a scratch folder (tmpfs), and the run's cubes, threads, dtype, edge."""

    frames_store: str
    scratch: str
    cubes: int
    threads: int
    dtype: str
    dim: int


def importable(module: str) -> bool:
    """Whether ``module`` imports (rows that need it are skipped, and said so, if not)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
