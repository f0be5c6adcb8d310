"""Counter-based draws: every random choice of cube ``i`` as a pure function of (seed, i).

Hash ``j`` of cube ``i`` is ``mix64(cube_key(i) + (j + 1) * GOLDEN)``, where
``cube_key(i) = mix64(draw_key + (i + 1) * GOLDEN)``: SplitMix64 twice over, so it is
a pure function of (seed, kind of draw, i, j) and any set of cubes is computed at once in
uint64 array arithmetic. Each hash gives two 32-bit draws, its high half then its low
half. A draw becomes an integer in ``[0, n)`` by Lemire's multiply-shift, skipping the
few draws that would favour some values, so every integer is exactly equally likely.
Distinct values are the first ``count`` values drawn that were not seen before:
sequential sampling without replacement, uniform over ordered selections.

Each kind of choice (columns, frames, rows, windows, classes) draws from a key of its
own (``*_DRAWS``), so that changing how one is made leaves the others as they were.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from daskcubes.core.kernels import compiled_draws

GOLDEN = 0x9E3779B97F4A7C15
_LOW32 = np.uint64(0xFFFFFFFF)
#: The kinds of draw of one cube, each from a key of its own.
COLUMN_DRAWS = 0
FRAME_DRAWS = 1
ROW_DRAWS = 2
#: Maps: the uniform that picks a window, and the low-discrepancy one that picks a class.
WINDOW_DRAWS = 3
CLASS_DRAWS = 4
#: Datasets of many volumes: the low-discrepancy draw of each shard's volume.
VOLUME_DRAWS = 5
#: Draws computed at once, bounding the memory of a call (~60 MB of temporaries).
_DRAWS_PER_CHUNK = 1 << 21


def mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (Stafford's variant 13), in place on uint64 ``z``."""
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


@lru_cache(maxsize=64)
def draw_key(seed: int, kind: int) -> int:
    """64-bit key of one kind of draw of a root seed (numpy's SeedSequence hashes any int)."""
    state = np.random.SeedSequence(seed, spawn_key=(kind,)).generate_state(1, np.uint64)
    return int(state[0])


def cube_keys(seed: int, kind: int, cubes: np.ndarray) -> np.ndarray:
    """(n,) uint64 key of each cube's draws of ``kind``."""
    keys = np.asarray(cubes, dtype=np.uint64) + np.uint64(1)
    keys *= np.uint64(GOLDEN)
    keys += np.uint64(draw_key(seed, kind))
    return mix64(keys)


def _draws(keys: np.ndarray, n: int, n_draws: int) -> tuple[np.ndarray, np.ndarray]:
    """Draws ``0 .. n_draws`` (an even number) of each key as integers in ``[0, n)``.

    Returns (len(keys), n_draws) int32 values and a bool mask of the valid ones: an
    invalid draw is one that Lemire's method rejects to keep the values exactly uniform.
    """
    steps = np.arange(1, n_draws // 2 + 1, dtype=np.uint64) * np.uint64(GOLDEN)
    hashes = mix64(keys[:, None] + steps[None, :])
    halves = np.empty((len(keys), n_draws // 2, 2), dtype=np.uint64)
    np.right_shift(hashes, np.uint64(32), out=halves[..., 0])
    np.bitwise_and(hashes, _LOW32, out=halves[..., 1])
    draws = halves.reshape(len(keys), n_draws)
    draws *= np.uint64(n)
    valid = (draws & _LOW32) >= np.uint64((1 << 32) % n)
    return (draws >> np.uint64(32)).astype(np.int32), valid


def _expected_draws(n: int, count: int) -> int:
    """Draws (an even number) that almost always hold ``count`` distinct values below ``n``."""
    # Coupon collector: n * (H(n) - H(n - count)) draws on average.
    mean = n * float(np.sum(1.0 / np.arange(n - count + 1, n + 1)))
    extra = max(mean - count, 0.0)
    draws = count + int(np.ceil(extra + 4 * np.sqrt(extra))) + 4
    return draws + draws % 2


#: The compiled draws keep a flag per value below ``n``: beyond this many (16 MB), the
#: numpy draws, whose memory does not grow with ``n``.
_COMPILED_MAX_N = 1 << 24


def first_distinct(keys: np.ndarray, n: int, count: int) -> np.ndarray:
    """(len(keys), count) int32: for each key, the first ``count`` distinct valid draws in
    ``[0, n)``, in the order drawn.

    Compiled where numba is (:func:`daskcubes.core.compiled.first_distinct`, the same
    values); else in numpy, through the keys in chunks of bounded memory, the rare key
    whose first draws hold too few distinct values done again with twice as many.
    """
    if not 1 <= count <= n < 1 << 31:
        raise ValueError(f"cannot draw {count} distinct integers below {n}")
    out = np.empty((len(keys), count), dtype=np.int32)
    if n <= _COMPILED_MAX_N and compiled_draws(np.ascontiguousarray(keys, np.uint64), n, out):
        return out
    return numpy_first_distinct(keys, n, count, out)


def numpy_first_distinct(keys: np.ndarray, n: int, count: int, out: np.ndarray) -> np.ndarray:
    """:func:`first_distinct` in numpy, into ``out``."""
    n_draws = _expected_draws(n, count)
    todo = np.arange(len(keys))
    while todo.size:
        rows = max(1, _DRAWS_PER_CHUNK // n_draws)
        short = [
            part[_first_distinct_into(out, part, keys[part], n, count, n_draws)]
            for part in np.array_split(todo, -(-todo.size // rows))
        ]
        todo = np.concatenate(short)
        n_draws *= 2
    return out


def _first_distinct_into(
    out: np.ndarray, rows: np.ndarray, keys: np.ndarray, n: int, count: int, n_draws: int
) -> np.ndarray:
    """Fill ``out[rows]`` from ``n_draws`` draws of ``keys``; the mask of rows left short."""
    values, keep = _draws(keys, n, n_draws)
    # Sort each row's draws by value, then by draw number: a value equal to its left
    # neighbour was drawn later, so is no longer new. Invalid draws are labelled with
    # distinct values from ``n`` up. int32 labels, when they fit, sort fastest.
    shift = n_draws.bit_length()
    dtype = np.int32 if (n + n_draws) << shift < 1 << 31 else np.int64
    order = np.arange(n_draws, dtype=dtype)
    labels: np.ndarray = values.astype(dtype)
    labels <<= shift
    labels |= order
    if not keep.all():
        labels = np.where(keep, labels, np.left_shift(n + order, shift) | order)
    labels.sort(axis=1)
    labelled = labels >> shift
    repeats = np.flatnonzero(labelled[:, 1:] == labelled[:, :-1])
    row, at = np.divmod(repeats, n_draws - 1)
    keep[row, labels[row, at + 1] & ((1 << shift) - 1)] = False
    rank = np.cumsum(keep, axis=1, dtype=np.int32)
    full = rank[:, -1] >= count
    if not full.all():
        values, keep, rank = values[full], keep[full], rank[full]
    out[rows[full]] = values[keep & (rank <= count)].reshape(-1, count)
    return ~full
