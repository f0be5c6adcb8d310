"""Many volumes with labels: label-balanced 3-D patches from a dataset of volumes of
different shapes, daskcubes beside TorchIO and MONAI (issue 27).

Run only when asked (``python workflows/benchmark.py --only volumes``): it makes a
dataset of its own (about 400 MB at the default size) and takes minutes.

**The dataset** (:func:`make_dataset`, deterministic from a seed): ``volume_count``
volumes of float32 frames, each of its own shape, about ``volume_frames`` frames of
``volume_size`` x ``volume_size`` (each axis within +-12.5 % of it: 56-72 frames of
224-288 x 224-288 at the default size), and an int8 label volume of each: class 0 the
background, class 1 in a few ellipsoid blobs, class 2 in a box. It is written once into
scratch (tmpfs) as ``.npy`` files, and ingested once into a daskcubes frames store with
its labels paired.

**The patches**: cubes of ``volume_patch`` voxels a side with their label patches,
balanced 1:1 between classes 0 and 1. What makes a patch one of a class differs
between the libraries, as far as their APIs allow it to be the same:

- daskcubes: a window counts for a class when at least ``label_fraction`` (0.5) of its
  voxels are of it;
- TorchIO's ``LabelSampler`` and MONAI's ``RandCropByLabelClassesd`` pick the patch's
  centre voxel among the voxels of the class (``label_probabilities={0: 1, 1: 1}``;
  ``ratios=[1, 1, 0]``, so that class 2 is never a centre, as it never counts for
  daskcubes): a class-1 patch has its centre in class 1, however few of its voxels are.

Each row reports, beside its rate, the share of its patches at least half of class 1
(:func:`half_class_one`, counted on the warm-up's patches, untimed), so that the
meanings can be compared on the same data.

**The rows**, all ``volume_patches`` patches a call, batches of 16, on ``threads`` (2)
threads or worker processes, each held warm in an interpreter of its own
(:class:`bench.probes.Resident`) and timed in alternating rounds (medians of
:data:`~bench.cut_rows.ROUNDS`):

- daskcubes stream mode: ``open_stream`` of the ingested frames store with
  ``label_ratios`` (the ingested labels), through shuffled ``Batches``; and the same
  under a source budget of a quarter of the dataset (``max_slab_bytes``);
- TorchIO, as its patch-training documentation runs it: a ``SubjectsDataset`` of
  in-memory ``Subject`` s (``ScalarImage`` + ``LabelMap``), a ``Queue`` filled by
  ``LabelSampler`` in ``threads`` worker processes, read through a ``SubjectsLoader``;
- MONAI, as its 3-D segmentation tutorials run it: a ``CacheDataset`` of dictionaries
  (in-memory channel-first tensors), the deterministic ``ClassesToIndicesd`` cached
  (MONAI's documented speed-up for ``RandCropByLabelClassesd``), the random crop of 4
  samples per volume in a ``DataLoader`` of ``threads`` workers, 4 volumes a batch;
- stored mode of the same dataset: ``daskcubes.sample`` on threads and on a LocalCluster
  (2 workers x 1 thread), the StageResult's rate (its tasks' time).

Peak memory is each interpreter's own high-water mark (``VmHWM``) and the peak of its
process tree, polled every 20 ms during the timed calls: its resident memory plus the
unique memory (USS) of its worker processes (TorchIO's and MONAI's loader workers, a
LocalCluster's nannies and workers), which they share nothing of with it.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

import daskcubes
from bench.cut_rows import ROUNDS
from bench.data import Setup
from bench.probes import Resident, median_of_rounds
from bench.rows import CUBES_PER_S, MIB, RATIO, SECONDS, Key, Row, importable

BATCH = 16
#: TorchIO's Queue and MONAI's crop: patches a volume gives each time it is loaded.
MONAI_SAMPLES = 4
RATIOS = {0: 1.0, 1: 1.0}
FRACTION = 0.5
#: Each axis of a volume is within this share of the asked size.
SPREAD = 0.125
#: A measurement held warm: each call runs it once more and returns patches per second.
Rate = Callable[[], float]


# -- the dataset ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """The volumes written under ``folder``: ``names[k]`` is ``<folder>/<name>.npy``
    (float32 frames) and ``<folder>/<name>-labels.npy`` (int8 classes), and the frames
    store that holds them all (``frames_store``), ingested with their labels."""

    folder: str
    names: tuple[str, ...]
    shapes: tuple[tuple[int, int, int], ...]
    frames_store: str
    patch: int
    patches: int
    threads: int

    @property
    def frame_bytes(self) -> int:
        """Bytes of the float32 frames of every volume."""
        return sum(int(np.prod(shape)) * 4 for shape in self.shapes)

    def image(self, name: str) -> np.ndarray:
        return np.load(Path(self.folder) / f"{name}.npy")

    def labels(self, name: str) -> np.ndarray:
        return np.load(Path(self.folder) / f"{name}-labels.npy")

    @property
    def patch_shape(self) -> tuple[int, int, int]:
        return (self.patch, self.patch, self.patch)


def volume_shapes(setup: Setup) -> list[tuple[int, int, int]]:
    """Each volume's (frames, rows, columns), each within :data:`SPREAD` of the asked
    size, drawn from the seed."""
    rng = np.random.default_rng(setup.volume_seed)
    low, high = 1 - SPREAD, 1 + SPREAD
    sizes = (setup.volume_frames, setup.volume_size, setup.volume_size)
    return [
        tuple(int(rng.integers(round(n * low), round(n * high) + 1)) for n in sizes)  # type: ignore[misc]
        for _ in range(setup.volume_count)
    ]


def volume_labels(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Class 1 in three ellipsoid blobs (each half to two thirds of every axis wide), class
    2 in a box of a quarter of every axis (drawn over the blobs), 0 elsewhere."""
    labels = np.zeros(shape, dtype=np.int8)
    axes = np.ogrid[tuple(slice(0, n) for n in shape)]
    for _ in range(3):
        radii = [rng.uniform(0.25, 0.33) * n for n in shape]
        centre = [rng.uniform(r, n - r) for r, n in zip(radii, shape, strict=True)]
        distance = np.zeros(shape, dtype=np.float32)
        for axis, c, r in zip(axes, centre, radii, strict=True):
            distance += ((axis - c) / r) ** 2
        labels[distance <= 1] = 1
    box = [int(rng.integers(0, n - n // 4)) for n in shape]
    labels[tuple(slice(b, b + n // 4) for b, n in zip(box, shape, strict=True))] = 2
    return labels


def make_dataset(setup: Setup) -> Dataset:
    """The volumes and their labels as ``.npy`` files under scratch, and their frames
    store, ingested through ``daskcubes.ingest`` with the labels paired."""
    folder = Path(setup.scratch) / "volumes"
    folder.mkdir(parents=True, exist_ok=True)
    shapes = volume_shapes(setup)
    names = tuple(f"v{k:02d}" for k in range(len(shapes)))
    rng = np.random.default_rng(setup.volume_seed + 1)
    for name, shape in zip(names, shapes, strict=True):
        labels = volume_labels(shape, rng)
        image = rng.standard_normal(shape, dtype=np.float32)
        image += labels  # the classes differ in mean, as tissues do
        np.save(folder / f"{name}.npy", image)
        np.save(folder / f"{name}-labels.npy", labels)
    patches = setup.volume_patches
    dataset = Dataset(
        str(folder),
        names,
        tuple(shapes),
        str(Path(setup.scratch) / "volumes.zarr"),
        setup.volume_patch,
        patches,
        setup.threads,
    )
    return dataset


def ingest(dataset: Dataset) -> float:
    """Seconds to ingest every volume and its labels into the frames store."""
    started = time.perf_counter()
    daskcubes.ingest(
        frames={name: dataset.image(name) for name in dataset.names},
        labels={name: dataset.labels(name) for name in dataset.names},
        frames_store=dataset.frames_store,
        mode="overwrite",
        progress=False,
    )
    return time.perf_counter() - started


def half_class_one(labels: Any) -> float:
    """Share of label patches (n, d, h, w) at least half of whose voxels are class 1."""
    values = np.asarray(labels)
    ones = (values == 1).reshape(len(values), -1).mean(axis=1)
    return float((ones >= FRACTION).mean())


# -- the process tree's memory -------------------------------------------------------------


def _tree_mib(me: psutil.Process) -> float:
    """This process's resident MiB plus its descendants' unique MiB (USS)."""
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        with suppress(psutil.Error):  # ended meanwhile
            total += child.memory_full_info().uss
    return total / 2**20


#: The held measurement's records: the tree's peak, and the warm-up's share of class 1.
_records: dict[str, float] = {"tree": 0.0, "ones": float("nan")}


@contextmanager
def _tree_polled() -> Iterator[None]:
    """Polls the tree's memory every 20 ms while the block runs, into ``_records``."""
    me, done = psutil.Process(), threading.Event()

    def poll() -> None:
        while not done.wait(0.02):
            _records["tree"] = max(_records["tree"], _tree_mib(me))

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        yield
    finally:
        done.set()
        poller.join()
        _records["tree"] = max(_records["tree"], _tree_mib(me))


def records() -> dict[str, float]:
    """The held measurement's records (run in its interpreter)."""
    return dict(_records)


def _held(timed: Callable[[bool], int]) -> Rate:
    """``timed(first)`` runs the patches once (``first``: noting their share of class 1)
    and returns their count; a call of the result times it with the tree polled."""
    first = [True]

    def call() -> float:
        with _tree_polled():
            started = time.perf_counter()
            count = timed(first[0])
            seconds = time.perf_counter() - started
        first[0] = False
        return count / seconds

    return call


# -- daskcubes -----------------------------------------------------------------------------


def stream_settings(dataset: Dataset, **extra: Any) -> dict[str, Any]:
    edge = dataset.patch
    return {
        "frames_store": dataset.frames_store,
        "cubes": dataset.patches,
        "depth": edge,
        "height": edge,
        "width": edge,
        "frame_mode": "window",
        "row_mode": "window",
        "column_mode": "window",
        "label_ratios": RATIOS,
        "label_fraction": FRACTION,
        "dtype": "float32",
        "seed": 0,
        **extra,
    }


def _parts(batch: Any) -> tuple[Any, Any]:
    """A batch's cubes and label patches: a source with paired arrays hands out a
    ``Batch`` whose ``cubes`` maps array names to arrays."""
    arrays = batch.cubes
    return arrays["cubes"], arrays["labels"]


def daskcubes_stream(dataset: Dataset, budget: int | None, cubes: int | None = None) -> Rate:
    """Stream mode with labels through shuffled ``Batches`` (``cubes`` of them, by default
    the dataset's patches); an epoch a call."""
    extra: dict[str, Any] = {} if budget is None else {"max_slab_bytes": budget}
    if cubes is not None:
        extra["cubes"] = cubes
    stream = daskcubes.open_stream(**stream_settings(dataset, **extra))
    batches = daskcubes.Batches(stream, batch_size=BATCH, shuffle=True, threads=dataset.threads)

    def epoch(first: bool) -> int:
        count, ones = 0, []
        for batch in batches:
            cubes, labels = _parts(batch)
            count += len(cubes)
            if first:
                ones.append(half_class_one(labels))
        if first:
            _records["ones"] = statistics.fmean(ones)
        return count

    return _held(epoch)


def daskcubes_sample(dataset: Dataset, scheduler: str) -> Rate:
    """Stored mode: ``daskcubes.sample`` into a fresh store each call, on threads or on a
    LocalCluster (2 workers x 1 thread) held from call to call; the StageResult's rate."""
    from bench.distributed import local_cluster

    held = ExitStack()
    client = None
    if scheduler == "distributed":
        client = held.enter_context(local_cluster(dataset.threads, 1))
    out = str(Path(dataset.folder).parent / f"volumes-{scheduler}.zarr")
    rates = []

    def run(first: bool) -> int:
        result = daskcubes.sample(
            **stream_settings(dataset),
            out=out,
            scheduler="threads" if client is None else "distributed",
            workers=dataset.threads,
            client=client,
            mode="overwrite",
            progress=False,
        )
        if first:
            store = daskcubes.open_cubes(out)
            _records["ones"] = half_class_one(store.read(np.arange(len(store)))["labels"])
        rates.append(result.rate)
        return result.items

    timed = _held(run)

    def call() -> float:
        timed()
        return rates[-1]  # the tasks' own rate, as the StageResult says

    _keep.append(held)
    return call


#: Held for the interpreter's life: the LocalCluster of the stored row.
_keep: list[ExitStack] = []


# -- TorchIO -------------------------------------------------------------------------------


def torchio_queue(dataset: Dataset) -> Rate:
    """TorchIO's patch training: ``Queue`` of ``LabelSampler`` patches over a
    ``SubjectsDataset`` of in-memory subjects, through a ``SubjectsLoader``; an epoch
    of the queue (every subject once, ``patches / volumes`` patches each) a call."""
    import torch
    import torchio as tio

    torch.set_num_threads(dataset.threads)
    subjects = [
        tio.Subject(
            image=tio.ScalarImage(tensor=torch.from_numpy(dataset.image(name)[None])),
            label=tio.LabelMap(tensor=torch.from_numpy(dataset.labels(name)[None])),
        )
        for name in dataset.names
    ]
    per_volume = dataset.patches // len(subjects)
    queue = tio.Queue(
        tio.SubjectsDataset(subjects),
        max_length=max(per_volume, dataset.patches // 4),
        samples_per_volume=per_volume,
        sampler=tio.LabelSampler(
            dataset.patch_shape, label_name="label", label_probabilities=RATIOS
        ),
        num_workers=dataset.threads,
    )
    # The queue's loader runs in the main process (its documentation: num_workers=0).
    loader = tio.SubjectsLoader(queue, batch_size=BATCH, num_workers=0)

    def epoch(first: bool) -> int:
        count, ones = 0, []
        for batch in loader:
            count += len(batch["image"][tio.DATA])
            if first:
                ones.append(half_class_one(batch["label"][tio.DATA][:, 0]))
        if first:
            _records["ones"] = statistics.fmean(ones)
        return count

    return _held(epoch)


# -- MONAI ---------------------------------------------------------------------------------


def monai_loader(dataset: Dataset) -> Rate:
    """MONAI's 3-D segmentation training: a ``CacheDataset`` of dictionaries, its
    deterministic transforms cached, ``RandCropByLabelClassesd`` in a ``DataLoader`` of
    worker processes; ``patches`` patches a call (the volumes drawn in random order)."""
    import torch
    from monai import transforms
    from monai.data import CacheDataset, DataLoader

    torch.set_num_threads(dataset.threads)
    items = [
        {
            "image": torch.from_numpy(dataset.image(name)[None]),
            "label": torch.from_numpy(dataset.labels(name)[None]),
        }
        for name in dataset.names
    ]
    pipeline = transforms.Compose(
        [
            transforms.ClassesToIndicesd("label", num_classes=3, indices_postfix="_cls_indices"),
            transforms.RandCropByLabelClassesd(
                ["image", "label"],
                label_key="label",
                spatial_size=dataset.patch_shape,
                ratios=[1, 1, 0],
                num_classes=3,
                num_samples=MONAI_SAMPLES,
                indices_key="label_cls_indices",
            ),
            transforms.DeleteItemsd("label_cls_indices"),
        ]
    )
    cached = CacheDataset(
        items, pipeline, num_workers=dataset.threads, progress=False, copy_cache=False
    )
    draws = torch.utils.data.RandomSampler(cached, num_samples=dataset.patches // MONAI_SAMPLES)
    loader = DataLoader(
        cached,
        batch_size=BATCH // MONAI_SAMPLES,
        sampler=draws,
        num_workers=dataset.threads,
        persistent_workers=True,
    )

    def epoch(first: bool) -> int:
        count, ones = 0, []
        for batch in loader:
            count += len(batch["image"])
            if first:
                ones.append(half_class_one(batch["label"][:, 0]))
        if first:
            _records["ones"] = statistics.fmean(ones)
        return count

    return _held(epoch)


# -- the rows ------------------------------------------------------------------------------


def _row(
    key: Key, rate: float, resident: Resident, dataset: Dataset, patches: int
) -> tuple[Row, float]:
    """The row, and its process tree's peak MiB."""
    held = resident.run(records)
    note = (
        f"({patches:,} patches of {dataset.patch}^3, median of {ROUNDS} rounds; "
        f"{held['ones']:.0%} at least half class 1; peak {resident.peak_mib():,.0f} MiB, "
        f"with its workers {held['tree']:,.0f} MiB)"
    )
    return Row(key, rate, CUBES_PER_S, note=note), held["tree"]


Method = tuple[Key, Callable[..., Rate], tuple[Any, ...], str]


def measure_volumes(setup: Setup) -> list[Row]:
    """The dataset made and ingested, then the stream, budget and peer rows in
    alternating rounds, then the stored rows (threads, LocalCluster) in theirs."""
    dataset = make_dataset(setup)
    seconds = ingest(dataset)
    gib = dataset.frame_bytes / 2**30
    note = f"({len(dataset.names)} volumes and labels, {gib:.2f} GiB of frames)"
    rows = [Row(Key.VOLUMES_INGEST, seconds, SECONDS, note=note)]
    budget = dataset.frame_bytes // 4
    # Under the budget, a shuffled batch reloads most of its volumes (bench note in
    # BENCHMARKS.md): that row takes a sixteenth of the patches.
    few = max(BATCH, dataset.patches // 16)
    streamed: list[Method] = [
        (Key.VOLUMES_STREAM, daskcubes_stream, (dataset, None), "daskcubes"),
        (Key.VOLUMES_STREAM_QUARTER, daskcubes_stream, (dataset, budget, few), "daskcubes"),
        (Key.VOLUMES_TORCHIO, torchio_queue, (dataset,), "torchio"),
        (Key.VOLUMES_MONAI, monai_loader, (dataset,), "monai"),
    ]
    stored: list[Method] = [
        (Key.VOLUMES_THREADS, daskcubes_sample, (dataset, "threads"), "daskcubes"),
        (Key.VOLUMES_CLUSTER, daskcubes_sample, (dataset, "distributed"), "daskcubes"),
    ]
    peaks: dict[Key, float] = {}
    for group in (streamed, stored):
        methods = [m for m in group if importable(m[3])]
        with ExitStack() as held:
            residents = {
                key: held.enter_context(Resident(make, *args)) for key, make, args, _ in methods
            }
            rates = median_of_rounds(residents, ROUNDS)
            for key, resident in residents.items():
                count = few if key == Key.VOLUMES_STREAM_QUARTER else dataset.patches
                row, peaks[key] = _row(key, rates[key], resident, dataset, count)
                rows.append(row)
    found = {row.key: row.rate for row in rows}
    ratio = found[Key.VOLUMES_STREAM_QUARTER] / found[Key.VOLUMES_STREAM]
    note = f"(max_slab_bytes {budget:,} bytes, a quarter of the frames)"
    rows.append(Row(Key.VOLUMES_QUARTER_RATIO, ratio, RATIO, note=note))
    rows.append(Row(Key.VOLUMES_STREAM_PEAK, peaks[Key.VOLUMES_STREAM], MIB))
    measured = [key for key in (Key.VOLUMES_TORCHIO, Key.VOLUMES_MONAI) if key in found]
    if measured:
        faster = max(measured, key=found.__getitem__)
        note = f"({faster.value.removeprefix('many volumes: ').split(' ')[0]})"
        rows.append(Row(Key.VOLUMES_FASTER_PEER, found[faster], CUBES_PER_S, note=note))
        rows.append(Row(Key.VOLUMES_PEER_PEAK, peaks[faster], MIB, note=note))
    return rows
