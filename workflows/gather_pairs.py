"""The device gather run on the CPU (``open_stream(config, "cpu", gather="device")``)
against the same gather at another commit, epochs of ``Batches`` in alternating pairs::

    python workflows/gather_pairs.py --against HEAD~1 [--cubes 32] [--pairs 5]

Both cut the same cubes from one frames store of the article's shapes (100 random frames
of 1000 x 1000, made in ``--scratch`` and deleted at the end), in batches of 16 in random
order; the other commit's ``daskcubes/train/device.py`` is loaded from git beside this
one. It prints, per dtype, the median rate of each and the median of the pairs' ratios.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
from bench.data import make_frames_store, random_frames

from daskcubes import Batches, Config, open_stream

ROOT = Path(__file__).resolve().parent.parent
BATCH = 16


def device_module_at(commit: str) -> types.ModuleType:
    """``daskcubes/train/device.py`` as it was at ``commit``, as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{commit}:daskcubes/train/device.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType(f"device_at_{commit}")
    sys.modules[module.__name__] = module
    exec(compile(source, f"{commit}:daskcubes/train/device.py", "exec"), module.__dict__)
    return module


def epoch_seconds(batches: Batches) -> float:
    started = time.perf_counter()
    for _ in batches:
        pass
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="HEAD~1", help="the commit to compare with")
    parser.add_argument("--cubes", type=int, default=32, help="cubes an epoch")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--dtype", nargs="+", default=["float32", "float64"])
    parser.add_argument("--scratch", default="/dev/shm/daskcubes-gather-pairs")
    args = parser.parse_args(argv)
    other = device_module_at(args.against)
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        store = make_frames_store(str(scratch / "frames.zarr"), random_frames(100, 1000, 1000))
        for dtype in args.dtype:
            config = Config(
                synthetic=False, frames_store=store, cubes=args.cubes, dim=100, dtype=dtype
            )
            this = open_stream(config, "cpu", gather="device")
            that = other.DeviceStream(open_stream(config).job, "cpu")
            rates: dict[str, list[float]] = {"this": [], args.against: []}
            ratios = []
            for stream in (this, that):
                stream.read(np.arange(1))  # the slab, outside the timing
            for _ in range(args.pairs):
                pair = []
                for name, stream in (("this", this), (args.against, that)):
                    batches = Batches(stream, BATCH, shuffle=True, seed=1, prefetch=0)
                    pair.append(args.cubes / epoch_seconds(batches))
                    rates[name].append(pair[-1])
                ratios.append(pair[0] / pair[1])
            medians = ", ".join(f"{k} {statistics.median(v):,.1f}" for k, v in rates.items())
            print(
                f"{dtype}: cubes/s, median of {args.pairs}: {medians}; "
                f"this / {args.against}, median of the pairs: {statistics.median(ratios):.2f}x"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
