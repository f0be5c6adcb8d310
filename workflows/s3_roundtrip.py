"""S3 round trip against local disk, side by side in one run.

Starts an S3-compatible server (moto's standalone server) on loopback, then cuts the
same cubes into a cube store on S3 and into one under /dev/shm, and reads each back
with ``open_cubes``. Prints cubes/s for each and the ratio. A local S3 stand-in
measures the protocol's overhead per request, not a real network.

    python workflows/s3_roundtrip.py --cubes 256
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench.data import make_frames_store, random_frames

import daskcubes
from daskcubes import Config, open_cubes
from daskcubes.testing import s3_server


def measure(out: str, config: Config, storage_options: dict[str, str]) -> tuple[float, float]:
    """Cubes/s writing ``out`` (sample stage) and reading it back whole."""
    written = daskcubes.sample(config, out=out, progress=False)
    store = open_cubes(out, storage_options=storage_options)
    started = time.perf_counter()
    for start in range(0, len(store), config.shard_size):
        store[start : start + config.shard_size]
    return written.rate, len(store) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cubes", type=int, default=256)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--frames", type=int, default=32)
    args = parser.parse_args()

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "roundtrip")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "roundtrip")
    root = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    with s3_server() as endpoint:
        import s3fs

        options = {"endpoint_url": endpoint}
        s3fs.S3FileSystem(endpoint_url=endpoint).mkdir("roundtrip")
        with tempfile.TemporaryDirectory(dir=root) as scratch:
            config = Config(
                frames=f"{scratch}/frames",
                frames_store=f"{scratch}/frames.zarr",
                n_frames=args.frames,
                n_rows=max(args.dim, 100),
                n_cols=1000,
                cubes=args.cubes,
                dim=args.dim,
                storage_options=options,
            )
            frames = random_frames(config.n_frames, config.n_rows, config.n_cols)
            make_frames_store(config.frames_store, frames)
            rows = {
                "local (tmpfs)": measure(f"{scratch}/cubes.zarr", config, options),
                "S3 (loopback)": measure("s3://roundtrip/cubes.zarr", config, options),
            }
    local_write, local_read = rows["local (tmpfs)"]
    print(f"{args.cubes} cubes of {args.frames}x{args.dim}x{args.dim} float64")
    print(f"{'store':16} {'write cubes/s':>14} {'ratio':>6} {'read cubes/s':>13} {'ratio':>6}")
    for name, (write, read) in rows.items():
        print(
            f"{name:16} {write:14.1f} {write / local_write:6.2f} "
            f"{read:13.1f} {read / local_read:6.2f}"
        )


if __name__ == "__main__":
    main()
