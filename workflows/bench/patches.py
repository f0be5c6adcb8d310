"""The 3-D patch libraries side by side: grid, weighted and label-balanced windows.

The frames store is the volume (frames x rows x columns), the patch is the windows'
shape of :func:`bench.definitions.window_shape` (a tenth of the frames by ``dim`` x
``dim``), batches hold 16 patches, and torch runs on one thread or the setup's threads,
whichever is faster (:func:`at_best_threads`). Each method
is held warm in an interpreter of its own, so that its peak memory (in the row's note)
is its own, and timed once it has run once, beside the others of its kind in
alternating rounds (:func:`measure`):

- daskcubes: stream mode through ``Batches`` (shuffled), for uniform random windows,
  grid windows, weighted windows and label-balanced windows;
- TorchIO, as its documentation runs it: a ``Subject`` of in-memory images, the
  samplers called for patches (``UniformSampler``, ``WeightedSampler``,
  ``LabelSampler``) and stacked into batches; ``GridSampler`` iterated uncollated; and
  patch training's ``Queue`` + ``SubjectsLoader``;
- MONAI's dictionary transforms on a channel-first tensor (``RandSpatialCropSamplesd``,
  ``RandWeightedCropd``, ``RandCropByPosNegLabeld``, each ``num_samples=16``: a batch a
  call) and ``GridPatchDataset`` over ``PatchIter``.

The grid windows' values are checked against TorchIO's ``GridSampler`` patches and
xbatcher's (:mod:`bench.definitions`), window by window.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from bench.cut_rows import ROUNDS
from bench.data import Setup
from bench.definitions import window_shape
from bench.probes import Resident, in_fresh_process, median_of_rounds
from bench.rows import CUBES_PER_S, SECONDS, Key, Row, importable
from daskcubes import Batches, open_stream
from daskcubes.cut.job import cut_recipes

BATCH = 16
#: A held measurement: a call runs it once more and returns its patches per second.
Rate = Callable[[], float]
#: Windows in every axis, for the uniform, weighted and label-balanced rows.
WINDOWS = {"frame_mode": "window", "row_mode": "window", "column_mode": "window"}
GRID = {"frame_mode": "grid", "row_mode": "grid", "column_mode": "grid"}
#: Label-balanced windows: as many of class 1 (a box in the volume) as of class 0.
RATIOS = {0: 1.0, 1: 1.0}


def patch_shape(setup: Setup) -> tuple[int, int, int]:
    shape = window_shape(setup)
    return shape["depth"], shape["height"], shape["width"]


def write_maps(setup: Setup) -> tuple[str, str]:
    """A weight map (0 over the first half of the rows, random elsewhere) and a label
    volume (class 1 in a box of a quarter of each axis' middle, 0 elsewhere), as zarr
    arrays of the volume's shape under scratch."""
    shape = (setup.n_frames, setup.n_rows, setup.n_cols)
    weights_path, labels_path = (str(Path(setup.scratch) / n) for n in ("w.zarr", "l.zarr"))
    rng = np.random.default_rng(0)
    weights = zarr.open_array(
        weights_path, mode="w", shape=shape, dtype="float64", chunks=(1, *shape[1:])
    )
    labels = zarr.open_array(
        labels_path, mode="w", shape=shape, dtype="uint8", chunks=(1, *shape[1:])
    )
    box = tuple(slice(n * 3 // 8, n * 5 // 8 + 1) for n in shape)
    for frame in range(shape[0]):
        layer = rng.random(shape[1:])
        layer[: shape[1] // 2] = 0.0
        weights[frame] = layer
        label = np.zeros(shape[1:], dtype="uint8")
        if box[0].start <= frame < box[0].stop:
            label[box[1], box[2]] = 1
        labels[frame] = label
    return weights_path, labels_path


def volume(setup: Setup, path: str | None = None) -> np.ndarray:
    """The frames store (or a map) as one in-memory (frames, rows, columns) array."""
    array = zarr.open_array(path or setup.frames_store, path="" if path else "frames", mode="r")
    return np.asarray(array[:])


# -- daskcubes -----------------------------------------------------------------------------


def daskcubes_config(setup: Setup, kind: str, maps: tuple[str, str], n: int) -> Any:
    depth, height, width = patch_shape(setup)
    shape = {"depth": depth, "height": height, "width": width}
    if kind == "grid":
        n_grid = int(
            np.prod(
                [s // p for s, p in zip(volume_shape(setup), (depth, height, width), strict=True)]
            )
        )
        return setup.config(cubes=min(n, n_grid), **GRID, **shape)
    extra: dict[str, Any] = {}
    if kind == "weighted":
        extra = {"weights": maps[0]}
    elif kind == "labels":
        extra = {"labels": maps[1], "label_ratios": RATIOS, "label_fraction": 0.5}
    return setup.config(cubes=n, **WINDOWS, **shape, **extra)


def volume_shape(setup: Setup) -> tuple[int, int, int]:
    return setup.n_frames, setup.n_rows, setup.n_cols


def daskcubes_patches(setup: Setup, kind: str, maps: tuple[str, str], n: int) -> Rate:
    """Stream-mode ``Batches`` of ``kind`` windows; a call times the next epoch."""
    stream = open_stream(daskcubes_config(setup, kind, maps, n))  # the map summarised here
    batches = Batches(stream, BATCH, shuffle=True, seed=1, threads=setup.threads)

    def epoch() -> float:
        started = time.perf_counter()
        count = sum(len(batch.indices) for batch in batches)
        return count / (time.perf_counter() - started)

    return epoch


def plan_weighted(setup: Setup, maps: tuple[str, str], n: int) -> tuple[float, float]:
    """Seconds to summarise the weight map, and to plan ``n`` weighted windows (one core)."""
    started = time.perf_counter()
    stream = open_stream(daskcubes_config(setup, "weighted", maps, n))
    summarised = time.perf_counter()
    cut_recipes(stream.job, np.arange(n))
    return summarised - started, time.perf_counter() - summarised


# -- TorchIO -------------------------------------------------------------------------------


def _torchio_subject(setup: Setup, kind: str, maps: tuple[str, str]) -> Any:
    """A subject of the volume, and of the one map that ``kind`` samples by (a sampler
    crops every image of a subject)."""
    import torch
    import torchio as tio

    images: dict[str, Any] = {
        "image": tio.ScalarImage(tensor=torch.from_numpy(volume(setup)[None]))
    }
    if kind == "weighted":
        weights = torch.from_numpy(volume(setup, maps[0])[None])
        images["weights"] = tio.Image(tensor=weights, type=tio.SAMPLING_MAP)
    if kind == "labels":
        labels = torch.from_numpy(volume(setup, maps[1])[None].astype(np.int64))
        images["label"] = tio.LabelMap(tensor=labels)
    return tio.Subject(**images)


def at_best_threads(setup: Setup, rate: Rate) -> Rate:
    """``rate`` with torch on one thread or on the setup's threads, whichever ran it
    faster (once, untimed): torch's threads spin while they wait, and on cores that other
    work shares two of them ran TorchIO's ``UniformSampler`` 5-30x slower than one."""
    import torch

    def run_on(threads: int) -> float:
        torch.set_num_threads(threads)
        return rate()

    torch.set_num_threads(max(sorted({1, setup.threads}), key=run_on))
    return rate


def torchio_patches(setup: Setup, kind: str, maps: tuple[str, str], n: int) -> Rate:
    """A TorchIO sampler (``kind``), ``n`` patches a call, in batches of 16 stacked;
    ``GridSampler`` iterated uncollated; or (``queue``) patch training's loader; with
    torch on its best count of threads."""
    return at_best_threads(setup, _torchio(setup, kind, maps, n))


def _torchio(setup: Setup, kind: str, maps: tuple[str, str], n: int) -> Rate:
    import torch
    import torchio as tio

    subject = _torchio_subject(setup, kind, maps)
    shape = patch_shape(setup)
    if kind == "queue":
        return _torchio_queue(setup, subject, n)
    if kind == "grid":
        grid = tio.GridSampler(subject, patch_size=shape, patch_overlap=0)
        count = min(n, len(grid))

        def grid_patches() -> float:
            started = time.perf_counter()
            for k in range(count):
                grid[k]["image"].data  # noqa: B018 - a patch, taken and dropped
            return count / (time.perf_counter() - started)

        return grid_patches
    samplers: dict[str, Callable[[], Any]] = {
        "uniform": lambda: tio.UniformSampler(shape),
        "weighted": lambda: tio.WeightedSampler(shape, probability_map="weights"),
        "labels": lambda: tio.LabelSampler(shape, label_name="label", label_probabilities=RATIOS),
    }
    sampler = samplers[kind]()

    def sampled() -> float:
        started = time.perf_counter()
        patches = sampler(subject, num_patches=n)
        count = 0
        while count < n:
            batch = torch.stack([next(patches)["image"].data for _ in range(BATCH)])
            count += len(batch)
        return count / (time.perf_counter() - started)

    return sampled


def _torchio_queue(setup: Setup, subject: Any, n: int) -> Rate:
    import torchio as tio

    # The patch-training loop of TorchIO's documentation: a queue of patches filled by
    # worker processes, read through a SubjectsLoader, an epoch a call.
    queue = tio.Queue(
        tio.SubjectsDataset([subject]),
        max_length=n,
        samples_per_volume=n,
        sampler=tio.UniformSampler(patch_shape(setup)),
        num_workers=setup.threads,
    )
    loader = tio.SubjectsLoader(queue, batch_size=BATCH, num_workers=0)

    def epoch() -> float:
        started = time.perf_counter()
        count = sum(len(batch["image"][tio.DATA]) for batch in loader)
        return count / (time.perf_counter() - started)

    return epoch


def check_grid_against_torchio(setup: Setup, few: int) -> None:
    """The first ``few`` grid windows hold TorchIO's ``GridSampler`` patches' values."""
    import torch
    import torchio as tio

    data = volume(setup)
    subject = tio.Subject(image=tio.ScalarImage(tensor=torch.from_numpy(data[None])))
    sampler = tio.GridSampler(subject, patch_size=patch_shape(setup), patch_overlap=0)
    stream = open_stream(daskcubes_config(setup, "grid", ("", ""), few))
    cubes = stream.read(np.arange(min(few, len(stream))))
    for k, cube in enumerate(cubes):
        theirs = sampler[k]["image"].data[0].numpy()
        if not np.array_equal(theirs.astype(cube.dtype), cube):
            raise AssertionError(f"TorchIO grid patch {k} differs from daskcubes' grid cube {k}")


# -- MONAI ---------------------------------------------------------------------------------


def monai_patches(setup: Setup, kind: str, maps: tuple[str, str], n: int) -> Rate:
    """A MONAI transform of 16 samples a call, or GridPatchDataset; ``n`` patches a call;
    with torch on its best count of threads."""
    return at_best_threads(setup, _monai(setup, kind, maps, n))


def _monai(setup: Setup, kind: str, maps: tuple[str, str], n: int) -> Rate:
    import torch
    from monai import transforms
    from monai.data import GridPatchDataset, PatchIter

    shape = patch_shape(setup)
    # The volume, and the one map that ``kind`` crops by (MONAI copies the other items
    # of the dictionary into every sample).
    data = {"image": torch.from_numpy(volume(setup)[None])}
    if kind == "weighted":
        data["weights"] = torch.from_numpy(volume(setup, maps[0])[None])
    if kind == "labels":
        data["label"] = torch.from_numpy(volume(setup, maps[1])[None])
    if kind == "grid":
        dataset = GridPatchDataset(data=[data["image"]], patch_iter=PatchIter(patch_size=shape))

        def grid_patches() -> float:
            started = time.perf_counter()
            count = 0
            for _ in dataset:
                count += 1
                if count >= n:
                    break
            return count / (time.perf_counter() - started)

        return grid_patches
    made: dict[str, Callable[[], Any]] = {
        "uniform": lambda: transforms.RandSpatialCropSamplesd(
            ["image"], roi_size=shape, num_samples=BATCH, random_size=False
        ),
        "weighted": lambda: transforms.RandWeightedCropd(
            ["image"], w_key="weights", spatial_size=shape, num_samples=BATCH
        ),
        "labels": lambda: transforms.RandCropByPosNegLabeld(
            ["image"], label_key="label", spatial_size=shape, pos=1, neg=1, num_samples=BATCH
        ),
    }
    transform = made[kind]()

    def cropped() -> float:
        started = time.perf_counter()
        count = 0
        while count < n:
            batch = torch.stack([sample["image"] for sample in transform(data)])
            count += len(batch)
        return count / (time.perf_counter() - started)

    return cropped


# -- the rows ------------------------------------------------------------------------------

#: The methods compared, kind by kind: the row, what measures it, and the module it needs.
KINDS: dict[str, list[tuple[Key, Callable[..., Rate], str]]] = {
    "uniform": [
        (Key.PATCH_UNIFORM, daskcubes_patches, "daskcubes"),
        (Key.TORCHIO_UNIFORM, torchio_patches, "torchio"),
        (Key.MONAI_UNIFORM, monai_patches, "monai"),
    ],
    "queue": [(Key.TORCHIO_QUEUE, torchio_patches, "torchio")],
    "grid": [
        (Key.PATCH_GRID, daskcubes_patches, "daskcubes"),
        (Key.TORCHIO_GRID, torchio_patches, "torchio"),
        (Key.MONAI_GRID, monai_patches, "monai"),
    ],
    "weighted": [
        (Key.PATCH_WEIGHTED, daskcubes_patches, "daskcubes"),
        (Key.TORCHIO_WEIGHTED, torchio_patches, "torchio"),
        (Key.MONAI_WEIGHTED, monai_patches, "monai"),
    ],
    "labels": [
        (Key.PATCH_LABELS, daskcubes_patches, "daskcubes"),
        (Key.TORCHIO_LABELS, torchio_patches, "torchio"),
        (Key.MONAI_LABELS, monai_patches, "monai"),
    ],
}


def measure(setup: Setup) -> list[Row]:
    """The patch libraries' rows, and daskcubes' beside them on the same volume.

    The methods of one kind of window are each held warm in an interpreter of their own
    (:class:`bench.probes.Resident`: loaded, compiled and run once before any timing, as
    a training loop runs epoch after epoch), so that a row's peak memory is its own, and
    run in :data:`~bench.cut_rows.ROUNDS` alternating rounds; each row is its median.
    """
    maps = write_maps(setup)
    # Whole batches: the libraries' samplers hand patches out 16 at a time.
    # Two runs' cubes a pass (whole batches), so that a pass of the fastest takes a while.
    n, few = -(-2 * setup.cubes // BATCH) * BATCH, max(setup.few * BATCH // 4, BATCH)
    if importable("torchio"):
        in_fresh_process(check_grid_against_torchio, setup, setup.few)
    rows: dict[Key, Row] = {}
    for kind, methods in KINDS.items():
        methods = [m for m in methods if importable(m[2])]
        counts = {
            key: n if module == "daskcubes" or kind in FAST else few for key, _, module in methods
        }
        with ExitStack() as held:
            residents = {
                key: held.enter_context(Resident(make, setup, kind, maps, counts[key]))
                for key, make, _ in methods
            }
            rates = median_of_rounds(residents, ROUNDS)
            peaks = {key: resident.peak_mib() for key, resident in residents.items()}
        for key in residents:
            note = f"({counts[key]} patches, median of {ROUNDS} rounds, peak {peaks[key]:,.0f} MiB)"
            rows[key] = Row(key, rates[key], CUBES_PER_S, note=note)
    summary, planned = in_fresh_process(plan_weighted, setup, maps, setup.plan_cubes)
    note = f"({setup.plan_cubes:,} windows; the map summarised first in {summary:.1f} s)"
    rows[Key.PLAN_WEIGHTED] = Row(Key.PLAN_WEIGHTED, planned, SECONDS, note=note)
    return [rows[key] for key in ORDER if key in rows]


#: Kinds whose library samplers keep up with daskcubes' count of patches (the weighted
#: and label-balanced samplers of the libraries take ``few``).
FAST = ("uniform", "queue", "grid")
#: The rows' order in the table.
ORDER = [
    Key.PATCH_UNIFORM,
    Key.PATCH_GRID,
    Key.PATCH_WEIGHTED,
    Key.PATCH_LABELS,
    Key.PLAN_WEIGHTED,
    Key.TORCHIO_UNIFORM,
    Key.TORCHIO_QUEUE,
    Key.TORCHIO_GRID,
    Key.TORCHIO_WEIGHTED,
    Key.TORCHIO_LABELS,
    Key.MONAI_UNIFORM,
    Key.MONAI_GRID,
    Key.MONAI_WEIGHTED,
    Key.MONAI_LABELS,
]
