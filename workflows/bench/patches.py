"""The 3-D patch libraries side by side: grid, weighted and label-balanced windows.

The frames store is the volume (frames x rows x columns), the patch is the windows'
shape of :func:`bench.definitions.window_shape` (a tenth of the frames by ``dim`` x
``dim``), batches hold 16 patches, and torch runs on the setup's threads. Each method
runs in a fresh interpreter, so that its peak memory (in the row's note) is its own:

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
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from bench.data import Setup
from bench.definitions import window_shape
from bench.probes import _peak_mib, in_fresh_process
from bench.rows import CUBES_PER_S, SECONDS, Key, Row, importable
from daskcubes import Batches, open_stream
from daskcubes.cut.job import job_recipes

BATCH = 16
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


def daskcubes_run(setup: Setup, kind: str, maps: tuple[str, str], n: int) -> tuple[float, float]:
    """Patches per second of stream-mode ``Batches`` of ``kind`` windows, and peak MiB."""
    stream = open_stream(daskcubes_config(setup, kind, maps, n))  # the map summarised here
    batches = Batches(stream, BATCH, shuffle=True, seed=1, threads=setup.threads)
    next(iter(batches.epoch(0)))  # the source loaded: a run's start-up, not its rate
    started = time.perf_counter()
    count = sum(len(batch.indices) for batch in batches.epoch(1))
    return count / (time.perf_counter() - started), _peak_mib()


def plan_weighted(setup: Setup, maps: tuple[str, str], n: int) -> tuple[float, float]:
    """Seconds to summarise the weight map, and to plan ``n`` weighted windows (one core)."""
    started = time.perf_counter()
    stream = open_stream(daskcubes_config(setup, "weighted", maps, n))
    summarised = time.perf_counter()
    job_recipes(stream.job, np.arange(n))
    return summarised - started, time.perf_counter() - summarised


# -- TorchIO -------------------------------------------------------------------------------


def _torchio_subject(setup: Setup, kind: str, maps: tuple[str, str]) -> Any:
    """A subject of the volume, and of the one map that ``kind`` samples by (a sampler
    crops every image of a subject)."""
    import torch
    import torchio as tio

    torch.set_num_threads(setup.threads)
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


def torchio_run(setup: Setup, kind: str, maps: tuple[str, str], n: int) -> tuple[float, float]:
    """Patches per second of a TorchIO sampler (``kind``), batches of 16 stacked."""
    import torch
    import torchio as tio

    subject = _torchio_subject(setup, kind, maps)
    shape = patch_shape(setup)
    if kind == "grid":
        sampler = tio.GridSampler(subject, patch_size=shape, patch_overlap=0)
        started = time.perf_counter()
        count = 0
        for k in range(min(n, len(sampler))):
            sampler[k]["image"].data  # noqa: B018 - a patch, taken and dropped
            count += 1
        return count / (time.perf_counter() - started), _peak_mib()
    if kind == "queue":
        return _torchio_queue(setup, subject, n)
    samplers: dict[str, Callable[[], Any]] = {
        "uniform": lambda: tio.UniformSampler(shape),
        "weighted": lambda: tio.WeightedSampler(shape, probability_map="weights"),
        "labels": lambda: tio.LabelSampler(shape, label_name="label", label_probabilities=RATIOS),
    }
    patches = samplers[kind]()(subject, num_patches=n)
    started = time.perf_counter()
    count = 0
    while count < n:
        batch = torch.stack([next(patches)["image"].data for _ in range(BATCH)])
        count += len(batch)
    return count / (time.perf_counter() - started), _peak_mib()


def _torchio_queue(setup: Setup, subject: Any, n: int) -> tuple[float, float]:
    import torchio as tio

    # The patch-training loop of TorchIO's documentation: a queue of patches filled by
    # worker processes, read through a SubjectsLoader.
    queue = tio.Queue(
        tio.SubjectsDataset([subject]),
        max_length=n,
        samples_per_volume=n,
        sampler=tio.UniformSampler(patch_shape(setup)),
        num_workers=setup.threads,
    )
    loader = tio.SubjectsLoader(queue, batch_size=BATCH, num_workers=0)
    started = time.perf_counter()
    count = sum(len(batch["image"][tio.DATA]) for batch in loader)
    return count / (time.perf_counter() - started), _peak_mib()


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


def monai_run(setup: Setup, kind: str, maps: tuple[str, str], n: int) -> tuple[float, float]:
    """Patches per second of a MONAI transform of 16 samples a call, or GridPatchDataset."""
    import torch
    from monai import transforms
    from monai.data import GridPatchDataset, PatchIter

    torch.set_num_threads(setup.threads)
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
        started = time.perf_counter()
        count = 0
        for _ in dataset:
            count += 1
            if count >= n:
                break
        return count / (time.perf_counter() - started), _peak_mib()
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
    started = time.perf_counter()
    count = 0
    while count < n:
        batch = torch.stack([sample["image"] for sample in transform(data)])
        count += len(batch)
    return count / (time.perf_counter() - started), _peak_mib()


# -- the rows ------------------------------------------------------------------------------

DASKCUBES_ROWS = {
    "uniform": Key.PATCH_UNIFORM,
    "grid": Key.PATCH_GRID,
    "weighted": Key.PATCH_WEIGHTED,
    "labels": Key.PATCH_LABELS,
}
TORCHIO_ROWS = {
    "uniform": Key.TORCHIO_UNIFORM,
    "queue": Key.TORCHIO_QUEUE,
    "grid": Key.TORCHIO_GRID,
    "weighted": Key.TORCHIO_WEIGHTED,
    "labels": Key.TORCHIO_LABELS,
}
MONAI_ROWS = {
    "uniform": Key.MONAI_UNIFORM,
    "grid": Key.MONAI_GRID,
    "weighted": Key.MONAI_WEIGHTED,
    "labels": Key.MONAI_LABELS,
}


def _row(key: Key, rate_and_peak: tuple[float, float], n: int) -> Row:
    rate, peak = rate_and_peak
    return Row(key, rate, CUBES_PER_S, note=f"({n} patches, peak {peak:,.0f} MiB)")


def measure(setup: Setup) -> list[Row]:
    """The patch libraries' rows, and daskcubes' beside them on the same volume."""
    maps = write_maps(setup)
    # Whole batches: the libraries' samplers hand patches out 16 at a time.
    n, few = -(-setup.cubes // BATCH) * BATCH, max(setup.few * BATCH // 4, BATCH)
    rows = [
        _row(key, in_fresh_process(daskcubes_run, setup, kind, maps, n), n)
        for kind, key in DASKCUBES_ROWS.items()
    ]
    summary, planned = in_fresh_process(plan_weighted, setup, maps, setup.plan_cubes)
    note = f"({setup.plan_cubes:,} windows; the map summarised first in {summary:.1f} s)"
    rows.append(Row(Key.PLAN_WEIGHTED, planned, SECONDS, note=note))
    if importable("torchio"):
        in_fresh_process(check_grid_against_torchio, setup, setup.few)
        for kind, key in TORCHIO_ROWS.items():
            count = few if kind in ("weighted", "labels") else n
            rows.append(_row(key, in_fresh_process(torchio_run, setup, kind, maps, count), count))
    if importable("monai"):
        for kind, key in MONAI_ROWS.items():
            count = few if kind in ("weighted", "labels") else n
            rows.append(_row(key, in_fresh_process(monai_run, setup, kind, maps, count), count))
    return rows
