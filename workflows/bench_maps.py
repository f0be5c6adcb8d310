"""Cubes drawn from a weight map or a label volume at the article's volume: seconds and
peak memory of the run that reads the map and cuts the cubes.

    python workflows/bench_maps.py setup            # frames store, weights and labels
    python workflows/bench_maps.py weights          # one measured run (a fresh process)
    python workflows/bench_maps.py labels

``setup`` writes, under ``--root`` (default ``/dev/shm/bench_maps``), a 100 x 1000 x 1000
float32 frames store, a float32 weight map of the same shape (random weights, a fifth of
each frame 0) and an int8 label volume (classes 0, 1, 2 in blobs of 50 rows by 50 columns
by 10 frames). A run cuts 2,000 windows of 10 x 100 x 100 (``frame_mode``, ``row_mode``,
``column_mode``: window) drawn from one of them, on the threaded scheduler, and prints one
line: the kind, seconds, the process's peak resident memory, and the recipe it recorded.
Compare versions by running this script with another ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import zarr

SHAPE = (100, 1000, 1000)
WINDOWS = {"frame_mode": "window", "row_mode": "window", "column_mode": "window"}


def setup(root: Path) -> None:
    import daskcubes

    rng = np.random.default_rng(0)
    frames = zarr.open_array(
        str(root / "source.zarr"), mode="w", shape=SHAPE, chunks=(1, *SHAPE[1:]), dtype="f4"
    )
    weights = zarr.open_array(
        str(root / "weights.zarr"), mode="w", shape=SHAPE, chunks=(1, *SHAPE[1:]), dtype="f4"
    )
    labels = zarr.open_array(
        str(root / "labels.zarr"), mode="w", shape=SHAPE, chunks=(1, *SHAPE[1:]), dtype="i1"
    )
    blobs = rng.integers(0, 3, size=(SHAPE[0] // 10 + 1, 21, 21)).astype(np.int8)
    for frame in range(SHAPE[0]):
        frames[frame] = rng.random(SHAPE[1:], dtype=np.float32)
        layer = rng.random(SHAPE[1:], dtype=np.float32)
        layer[800:, :] = 0.0
        weights[frame] = layer
        labels[frame] = np.kron(blobs[frame // 10], np.ones((50, 50), dtype=np.int8))[
            : SHAPE[1], : SHAPE[2]
        ]
    config = daskcubes.Config(
        frames=str(root / "source.zarr"),
        frames_store=str(root / "frames.zarr"),
        out=str(root / "unused.zarr"),
        synthetic=False,
        n_frames=SHAPE[0],
        n_rows=SHAPE[1],
        n_cols=SHAPE[2],
    )
    daskcubes.ingest(config, mode="overwrite", progress=False)


def measure(root: Path, kind: str, cubes: int) -> None:
    import daskcubes

    maps: dict[str, object]
    if kind == "weights":
        maps = {"weights": str(root / "weights.zarr")}
    else:
        maps = {
            "labels": str(root / "labels.zarr"),
            "label_ratios": {0: 1.0, 1: 1.0, 2: 1.0},
            "label_fraction": 0.5,
        }
    config = daskcubes.Config(
        frames=str(root / "source.zarr"),
        frames_store=str(root / "frames.zarr"),
        out=str(root / f"cubes-{kind}.zarr"),
        synthetic=False,
        n_frames=SHAPE[0],
        n_rows=SHAPE[1],
        n_cols=SHAPE[2],
        cubes=cubes,
        depth=10,
        height=100,
        width=100,
        dtype="float32",
        scheduler="threads",
        **WINDOWS,
        **maps,
    )
    started = time.perf_counter()
    daskcubes.sample(config, mode="overwrite", progress=False)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    recipe = daskcubes.open_cubes(config.out).attrs["plan"].get("recipe")
    print(f"{kind}: {seconds:.1f} s, peak RSS {peak:.2f} GiB, recipe {recipe}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["setup", "weights", "labels"])
    parser.add_argument("--root", default="/dev/shm/bench_maps")
    parser.add_argument("--cubes", type=int, default=2000)
    args = parser.parse_args()
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    if args.what == "setup":
        setup(root)
    else:
        measure(root, args.what, args.cubes)


if __name__ == "__main__":
    main()
