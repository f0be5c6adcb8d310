"""Chunk checksums: what they cost end to end, and how fast ``verify`` reads a store.

End to end with checksums against without: both run ``sample`` into a cube store in
scratch (tmpfs), created just before in the layout under test and then filled by a resume
(a store keeps the layout it was created with), taking turns in pairs; the ratio is the
median of the pairs' ratios, so that a disturbance hits a pair, not one side. ``verify``
reads every chunk and checks its crc32c; its rate is set against reading the same files.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from dataclasses import replace

import daskcubes
from bench.data import Setup, scratch_path
from bench.rows import CUBES_PER_S, RATIO, Key, Row
from daskcubes.io.layout import create_cube_store
from daskcubes.io.storage import Storage
from daskcubes.jobs import cut_job
from daskcubes.runtime.verify import verify_cube_store

#: Pairs of end-to-end runs, with and without checksums, taking turns.
PAIRS = 3


def end_to_end_rate(setup: Setup, path: str, checksums: bool) -> float:
    """Cubes per second of ``sample`` into a fresh store whose chunks have checksums or not."""
    config = setup.config(out=path, cubes=setup.cubes, workers=setup.threads, dtype=setup.dtype)
    job = cut_job(config)
    schema = job.schema(config.compressor)
    create_cube_store(path, replace(schema, checksums=checksums), {}, "new", Storage.of())
    return daskcubes.sample(config, mode="resume", progress=False).rate


def read_files_seconds(path: str) -> float:
    """Seconds to read every file of the store at ``path`` whole, as verify reads them."""
    started = time.perf_counter()
    for folder, _, names in os.walk(path):
        for name in names:
            with open(os.path.join(folder, name), "rb", buffering=0) as file:
                file.read()
    return time.perf_counter() - started


def measure(setup: Setup) -> list[Row]:
    """End to end with chunk checksums and without (alternating pairs), and verify of the
    store against reading its files (alternating too)."""
    rates: dict[bool, list[float]] = {True: [], False: []}
    ratios, verify_rates, read_rates = [], [], []
    # A path per layout: a process keeps the arrays it wrote open (runtime/tasks.py), so a
    # store made again at the same path must keep its layout.
    with scratch_path(setup, "checksums.zarr") as path, scratch_path(setup, "plain.zarr") as plain:
        for pair in range(PAIRS):
            order = (True, False) if pair % 2 == 0 else (False, True)
            for checksums in order:
                out = path if checksums else plain
                shutil.rmtree(out, ignore_errors=True)
                rates[checksums].append(end_to_end_rate(setup, str(out), checksums))
            ratios.append(rates[True][-1] / rates[False][-1])
        for _ in range(PAIRS):  # the last store with checksums
            started = time.perf_counter()
            report = verify_cube_store(str(path), Storage.of(), sample=0)
            verify_rates.append(setup.cubes / (time.perf_counter() - started))
            assert not report.problems, report.problems
            read_rates.append(setup.cubes / read_files_seconds(str(path)))
    pairs = f"({PAIRS} pairs)"
    return [
        Row(Key.END_TO_END_CHECKSUMS, statistics.median(rates[True]), CUBES_PER_S),
        Row(Key.END_TO_END_NO_CHECKSUMS, statistics.median(rates[False]), CUBES_PER_S),
        Row(Key.CHECKSUMS_RATIO, statistics.median(ratios), RATIO, note=pairs),
        Row(Key.VERIFY, statistics.median(verify_rates), CUBES_PER_S),
        Row(Key.READ_STORE_FILES, statistics.median(read_rates), CUBES_PER_S),
    ]
