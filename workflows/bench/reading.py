"""The training side: reading stored cubes, streaming them, and both through torch.

Measured side by side in one run, everything in tmpfs:

- random-order batches read from a cube store (``Batches``, no prefetch) against reading
  the same bytes of the same shard files with ``numpy.fromfile``;
- stream mode: the same batches cut on demand from the frames store;
- stream mode on ``device="cpu"``: the same batches handed out as torch tensors (the
  host's cutter, no copy), against stream mode; and the device stream's own path on the
  CPU (``gather="device"``: its gather there is the host's compiled kernel), on fewer cubes;
- torch ``DataLoader`` over ``CubeDataset`` (2 worker processes), for the store and the
  stream, against the same ``Batches`` read directly (skipped, and said so, without torch).

Alone (``python workflows/bench_reading.py``) it also runs the article's step 3
(:func:`bench.anchors.article_step3`) on the frames store's array, and prints the targets
these rows decide.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import zarr

import daskcubes
from bench.anchors import article_step3
from bench.data import make_frames_store, random_frames
from bench.rows import CUBES_PER_S, RATIO, Key, Row, Workload, importable
from bench.targets import TARGETS, target_lines
from daskcubes import Batches, Config, open_cubes, open_stream
from daskcubes.core.plan import cube_columns
from daskcubes.io.shards import CHECKSUM, has_chunk_checksums

BATCH = 16
#: Cubes the device stream's path cuts on the CPU: a few batches tell its rate.
DEVICE_GATHER_CUBES = 64
#: Alternating pairs of epochs that compare stream mode on device="cpu" with stream mode.
DEVICE_PAIRS = 5
REPEATS = 2  # best of: the machine is shared, the best run is the least disturbed
TORCH_WORKERS = 2


def drain(batches: Iterable[object]) -> Callable[[], None]:
    """One epoch of ``batches`` (``Batches`` or a ``DataLoader``), each dropped once read,
    as a training loop would."""

    def run() -> None:
        for _ in batches:
            pass

    return run


def best_rate(items: int, run: Callable[[], object]) -> float:
    rates = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        run()
        rates.append(items / (time.perf_counter() - started))
    return max(rates)


def fromfile_batches(config: Config, batches: list[np.ndarray]) -> Callable[[], None]:
    """Reads of the same cubes' bytes with numpy.fromfile, one call per cube."""
    store = open_cubes(config.out)
    count = int(np.prod(store.cube_shape))
    nbytes = count * store.dtype.itemsize
    # Chunks lie one after another, each followed by its crc32c where the store has them.
    stride = nbytes + CHECKSUM * has_chunk_checksums(store.cubes)
    # The cubes array's grid is its shards' (zarr's sharding codec): its key of a grid
    # cell is the shard's file.
    metadata = store.cubes.metadata

    def shard_file(shard: int) -> Path:
        return Path(config.out) / "cubes" / metadata.encode_chunk_key((shard, 0, 0, 0))

    def run() -> None:
        for indices in batches:
            out = np.empty((len(indices), *store.cube_shape), dtype=store.dtype)
            for k, i in enumerate(indices):
                shard, local = divmod(int(i), config.shard_size)
                out[k] = np.fromfile(
                    shard_file(shard), store.dtype, count, offset=local * stride
                ).reshape(store.cube_shape)

    # Uncompressed shards hold their chunks in cube order: check that it reads right.
    sample = batches[0][:1]
    shard, local = divmod(int(sample[0]), config.shard_size)
    raw = np.fromfile(shard_file(shard), store.dtype, count, offset=local * stride)
    assert np.array_equal(raw.reshape(store.cube_shape), store[int(sample[0])])
    return run


def torch_rate(source: str | Config, cubes: int) -> float:
    """Cubes per second of a torch ``DataLoader`` over ``CubeDataset(source)``, built as the
    README says: random-order batches of ``BATCH``, ``CubeDataset.collate``,
    ``TORCH_WORKERS`` worker processes (started, and their source opened, in an untimed
    first epoch)."""
    import torch
    from torch.utils.data import DataLoader

    from daskcubes.loaders.torch import CubeDataset

    loader = DataLoader(
        CubeDataset(source),
        batch_size=BATCH,
        shuffle=True,
        generator=torch.Generator().manual_seed(1),
        collate_fn=CubeDataset.collate,
        num_workers=TORCH_WORKERS,
        persistent_workers=True,
        timeout=600,  # a stuck worker fails the run instead of hanging it
    )

    drain(loader)()
    return best_rate(cubes, drain(loader))


def device_rows(config: Config, cubes: int) -> list[Row]:
    """Stream mode on ``device="cpu"`` against stream mode, epochs of ``Batches`` taking
    turns (``DEVICE_PAIRS`` pairs, so that both see the same load of a shared machine),
    and the device gather on the CPU over its first ``DEVICE_GATHER_CUBES`` cubes."""
    host = Batches(open_stream(config), BATCH, shuffle=True, seed=1, prefetch=0)
    on_cpu = Batches(open_stream(config, "cpu"), BATCH, shuffle=True, seed=1, prefetch=0)
    on_cpu.source.read(np.arange(1))  # the slab, outside the timing
    rates, ratios = [], []
    for _ in range(DEVICE_PAIRS):
        host_rate = cubes / timed(drain(host))
        rates.append(cubes / timed(drain(on_cpu)))
        ratios.append(rates[-1] / host_rate)
    gather = open_stream(config, "cpu", gather="device")
    gather.read(np.arange(1))
    few = Batches(gather, BATCH, shuffle=True, seed=1).plan.batches(0)
    few = few[: max(1, DEVICE_GATHER_CUBES // BATCH)]

    def cut_few() -> None:
        for ids in few:
            gather.read(ids)

    pairs = f"({DEVICE_PAIRS} pairs)"
    return [
        Row(Key.DEVICE_CPU_STREAM, statistics.median(rates), CUBES_PER_S),
        Row(Key.DEVICE_CPU_RATIO, statistics.median(ratios), RATIO, note=pairs),
        Row(Key.DEVICE_GATHER_CPU, best_rate(sum(map(len, few)), cut_few), CUBES_PER_S),
    ]


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def measure(work: Workload) -> list[Row]:
    """Rows of reading and streaming ``work.cubes`` cubes of edge ``work.dim``.

    Writes a cube store under ``work.scratch`` (put it in tmpfs) from ``work.frames_store``.
    """
    config = Config(
        synthetic=False,
        frames_store=work.frames_store,
        out=str(Path(work.scratch) / "bench-cubes.zarr"),
        cubes=work.cubes,
        dim=work.dim,
        dtype=work.dtype,
        workers=work.threads,
    )
    daskcubes.sample(config, mode="overwrite", progress=False)
    try:
        store = Batches(open_cubes(config.out), BATCH, shuffle=True, seed=1, prefetch=0)
        stream = Batches(open_stream(config), BATCH, shuffle=True, seed=1, prefetch=0)
        stream.source.read(np.arange(1))  # load the slab outside the timing
        fromfile = fromfile_batches(config, store.plan.batches(0))
        rows = [
            Row(Key.STORE_BATCHES, best_rate(work.cubes, drain(store)), CUBES_PER_S),
            Row(Key.FROMFILE, best_rate(work.cubes, fromfile), CUBES_PER_S),
            Row(
                Key.STREAM_BATCHES,
                best_rate(work.cubes, drain(stream)),
                CUBES_PER_S,
                Key.CUT_CEILING,
            ),
        ]
        if importable("torch"):
            rows.extend(device_rows(config, work.cubes))
            rows.append(Row(Key.TORCH_STORE, torch_rate(config.out, work.cubes), CUBES_PER_S))
            rows.append(Row(Key.TORCH_STREAM, torch_rate(config, work.cubes), CUBES_PER_S))
        else:
            note = "note: torch is not importable: the device and DataLoader rows are skipped"
            print(note, file=sys.stderr)
    finally:
        shutil.rmtree(config.out, ignore_errors=True)
    return rows


def step3_on_frames_store(work: Workload) -> Row:
    """The article's step 3 on the frames store's array, loaded into memory."""
    frames = np.asarray(zarr.open_array(work.frames_store, path="frames", mode="r")[:])
    frames = frames.astype(work.dtype, copy=False)
    columns = [cube_columns(0, i, frames.shape[2], work.dim) for i in range(work.cubes)]
    return Row(Key.STEP3, article_step3(frames, work.dim, columns, work.threads), CUBES_PER_S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames-store", help="existing frames store (default: make one)")
    parser.add_argument("--scratch", default="/dev/shm/daskcubes-bench-reading")
    parser.add_argument("--cubes", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    args = parser.parse_args()
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        frames_store = args.frames_store
        if frames_store is None:
            # The default preset's frames: 100 of 1000 x 1000.
            frames_store = make_frames_store(
                str(scratch / "frames.zarr"), random_frames(100, 1000, 1000)
            )
        work = Workload(frames_store, str(scratch), args.cubes, args.threads, args.dtype, 100)
        rows = [*measure(work), step3_on_frames_store(work)]
    finally:
        if args.frames_store is None:
            shutil.rmtree(scratch, ignore_errors=True)
    for row in rows:
        print(f"{row.method:55s} {row.rate:10.2f} {row.unit}")
    decided = [target for target in TARGETS if target.keys <= {row.key for row in rows}]
    print("targets:", *target_lines(decided, rows), sep="\n")
