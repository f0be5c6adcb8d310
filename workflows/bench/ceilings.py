"""The machine's ceilings: writing the cubes' bytes, and copying them.

Each ceiling does only what bounds a daskcubes path, on the same threads and with the
same cube shape, so that a row's "x ceiling" says how close that path comes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.data import Setup, on_threads, scratch_path
from bench.rows import CUBES_PER_S, Key, Row
from daskcubes import Config

FALLBACK_CACHE = 64 * 2**20  # bytes, when the machine does not say


def last_level_cache() -> int:
    """Bytes of the largest CPU cache Linux reports (``FALLBACK_CACHE`` elsewhere)."""
    sizes = []
    for size in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = size.read_text().strip()
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
    return max(sizes, default=FALLBACK_CACHE)


def io_ceiling_rate(setup: Setup, threads: int, cubes: int) -> float:
    """Cubes per second of ``ndarray.tofile`` of the same bytes, one file per batch."""
    batch = Config().shard_size
    buffers = [
        np.random.default_rng(k).random(batch * setup.cube_bytes // 8) for k in range(threads)
    ]
    n_files = -(-cubes // batch)
    with scratch_path(setup, "io-ceiling") as path:
        path.mkdir()

        def write(k: int) -> None:
            for i in range(k, n_files, threads):
                buffers[k].tofile(path / str(i))

        return n_files * batch / on_threads(threads, write)


def memory_ceiling_rate(setup: Setup, threads: int, cubes: int) -> float:
    """Cubes per second copying one cube's bytes, again and again, into a batch buffer
    per thread: the source stays in the cache, so this bounds copying, not the cut."""
    batch = Config().shard_size
    cube = np.random.default_rng(0).random(setup.cube_bytes // 8)
    buffers = [np.empty((batch, cube.size)) for _ in range(threads)]

    def copy(k: int) -> None:
        for i in range(k, cubes, threads):
            np.copyto(buffers[k][i % batch], cube)

    return cubes / on_threads(threads, copy)


def cut_ceiling(setup: Setup, threads: int) -> Callable[[int], float]:
    """Cubes per second copying whole cubes out of a source in main memory, for a given
    count of cubes (the source and buffers made once, beforehand).

    The source is an array of distinct random cubes of the run's shape (8 MB at the
    article's shapes), at least four times the last-level cache, like the slab the cut
    gathers from; thread ``k`` copies cubes ``k, k + threads, ...`` of it, wrapping
    around, each into the next place of its own ``batch_size``-cube buffer, as the cut
    fills a batch. A cut reads the same bytes but scattered, so it cannot beat this
    (unless its source fits the cache that this one is four times).
    """
    batch = Config().shard_size
    n_source = max(-(-4 * last_level_cache() // setup.cube_bytes), 2 * threads)
    source = np.random.default_rng(0).random((n_source, setup.cube_bytes // 8))
    buffers = [np.ones((batch, source.shape[1])) for _ in range(threads)]

    def rate(cubes: int) -> float:
        def copy(k: int) -> None:
            for i in range(k, cubes, threads):
                np.copyto(buffers[k][(i // threads) % batch], source[i % n_source])

        return cubes / on_threads(threads, copy)

    return rate


def cut_ceiling_rate(setup: Setup, threads: int, cubes: int) -> float:
    """:func:`cut_ceiling` of ``cubes`` cubes."""
    return cut_ceiling(setup, threads)(cubes)


def measure_ceilings(setup: Setup) -> list[Row]:
    """The I/O ceiling (tofile into scratch) and the memory ceiling (copying); the cut
    ceiling is a row of :mod:`bench.cut_rows`, beside the cut it bounds."""
    return [
        Row(Key.IO_CEILING, io_ceiling_rate(setup, setup.threads, setup.cubes), CUBES_PER_S),
        Row(
            Key.MEMORY_CEILING, memory_ceiling_rate(setup, setup.threads, setup.cubes), CUBES_PER_S
        ),
    ]
