"""What a training loop sees, measured through the public API alone, as a check on the
benchmark's rows (``workflows/benchmark.py --only cut_rows,patches``)::

    python workflows/training_loop.py [--rounds 3] [--scratch /dev/shm/daskcubes-loop]

Every measurement is a training run of its own, in a fresh interpreter: it builds its
loader, runs one epoch untimed, then times the next. The runs alternate in rounds, and
each prints its median:

- cubes: ``open_stream`` + ``Batches`` (16 a batch, shuffled) of the article's cubes in
  float64 and float32 and of random row windows, 512 an epoch, beside the article's
  ``arr[:, :100, cols]`` in a ``ThreadPool`` over ``np.stack`` of ``DataFrame.to_numpy()``
  frames (cast to float32 for its float32 peer);
- patches of 10 x 100 x 100, uniform random and grid windows, 960 an epoch, beside
  TorchIO's ``UniformSampler`` (batches of 16 stacked) and ``GridSampler``, torch on 1
  or 2 threads, whichever is faster.

The frames store (100 random frames of 1000 x 1000 float64) is made under ``--scratch``
on the first run and kept.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

import daskcubes
from daskcubes import Batches, open_stream

SHAPE = (100, 1000, 1000)
DIM, CUBES, PATCHES, BATCH = 100, 512, 960, 16
PATCH = {"depth": 10, "height": 100, "width": 100}


def frames(store: str) -> np.ndarray:
    """The frames store's values, made first if it is not there."""
    if not (Path(store) / "zarr.json").exists():
        values = np.random.default_rng(0).random(SHAPE)
        daskcubes.ingest(frames=values, frames_store=store, progress=False)
    return np.asarray(zarr.open_array(store, path="frames", mode="r")[:])


def loop(store: str, n: int, **settings: Any) -> Any:
    batches = Batches(open_stream(frames_store=store, cubes=n, **settings), BATCH, shuffle=True)
    return lambda: sum(len(batch.indices) for batch in batches)


def peer(store: str, dtype: str) -> Any:
    # The article's frames: one DataFrame each, stacked from DataFrame.to_numpy().
    stacked = np.stack([pd.DataFrame(frame).to_numpy() for frame in frames(store)])
    stacked = stacked.astype(dtype, copy=False)
    columns = [np.random.default_rng(i).choice(SHAPE[2], DIM, replace=False) for i in range(CUBES)]

    def step3() -> int:
        with ThreadPool(2) as pool:
            cubes = pool.imap_unordered(lambda cols: stacked[:, :DIM, cols], columns)
            for _ in range(CUBES):
                next(cubes)
        return CUBES

    return step3


def torchio(store: str, kind: str) -> Any:
    import torch
    import torchio as tio

    image = tio.ScalarImage(tensor=torch.from_numpy(frames(store)[None]))
    subject = tio.Subject(image=image)
    shape = (PATCH["depth"], PATCH["height"], PATCH["width"])
    if kind == "grid":
        grid = tio.GridSampler(subject, patch_size=shape, patch_overlap=0)

        def gridded() -> int:
            for k in range(PATCHES):
                grid[k]["image"].data  # noqa: B018 - a patch, taken and dropped
            return PATCHES

        return gridded
    sampler = tio.UniformSampler(shape)

    def sampled() -> int:
        patches = sampler(subject, num_patches=PATCHES)
        for _ in range(PATCHES // BATCH):
            batch: list[Any] = [next(patches) for _ in range(BATCH)]
            torch.stack([patch["image"].data for patch in batch])
        return PATCHES

    return sampled


def at_best_threads(epoch: Any) -> Any:
    """``epoch`` with torch on 1 or 2 threads, whichever ran it faster (torch's threads
    spin while they wait: on shared cores two can be many times slower than one)."""
    import torch

    def run_on(threads: int) -> float:
        torch.set_num_threads(threads)
        started = time.perf_counter()
        epoch()
        return -(time.perf_counter() - started)

    torch.set_num_threads(max([1, 2], key=run_on))
    return epoch


def windows(mode: str) -> dict[str, Any]:
    return {f"{axis}_mode": mode for axis in ("frame", "row", "column")} | PATCH


METHODS: dict[str, Any] = {
    "stream float64": lambda s: loop(s, CUBES, dim=DIM),
    "peer float64": lambda s: peer(s, "float64"),
    "stream float32": lambda s: loop(s, CUBES, dim=DIM, dtype="float32"),
    "peer float32": lambda s: peer(s, "float32"),
    "stream row windows": lambda s: loop(s, CUBES, dim=DIM, row_mode="window"),
    "daskcubes uniform patches": lambda s: loop(s, PATCHES, **windows("window")),
    "TorchIO UniformSampler": lambda s: at_best_threads(torchio(s, "uniform")),
    "daskcubes grid patches": lambda s: loop(s, PATCHES, **windows("grid")),
    "TorchIO GridSampler": lambda s: at_best_threads(torchio(s, "grid")),
}
RATIOS = [
    ("stream float64", "peer float64"),
    ("stream float32", "peer float32"),
    ("stream row windows", "stream float64"),
    ("daskcubes uniform patches", "TorchIO UniformSampler"),
    ("daskcubes grid patches", "TorchIO GridSampler"),
]


def one_run(method: str, store: str) -> float:
    """Items per second of the second epoch of a fresh training run of ``method``."""
    epoch = METHODS[method](store)
    epoch()
    started = time.perf_counter()
    count = epoch()
    return count / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scratch", default="/dev/shm/daskcubes-loop")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a single run, in its own process
    args = parser.parse_args()
    store = str(Path(args.scratch) / "frames.zarr")
    if args.one:
        print(one_run(args.one, store))
        return 0
    frames(store)
    rates: dict[str, list[float]] = {method: [] for method in METHODS}
    for _ in range(args.rounds):
        for method in METHODS:
            command = [sys.executable, __file__, "--one", method, "--scratch", args.scratch]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            rates[method].append(float(done.stdout.split()[-1]))
    print(f"load average {os.getloadavg()[0]:.2f}; rates per second, medians of {args.rounds}:")
    for method, values in rates.items():
        shown = ", ".join(f"{v:,.0f}" for v in values)
        print(f"  {method}: {statistics.median(values):,.0f} ({shown})")
    for ours, theirs in RATIOS:
        ratio = statistics.median(rates[ours]) / statistics.median(rates[theirs])
        print(f"  {ours} / {theirs}: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
