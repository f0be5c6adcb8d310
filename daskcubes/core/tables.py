"""Window tables: a weight map or a label volume summarised over where windows may lie,
within a stated memory bound.

Pure arithmetic over a map's values; no I/O. The storage layer (:mod:`daskcubes.io.maps`)
hands the values in twice: frame by frame once (``layer(frame)``, for the digest and the
summary), and then block by block on demand through a :class:`MapReader`. A map is
summarised over the *window starts*: every place a window of the cube's shape may start
(``n - size + 1`` along a ``window`` axis, one along ``all`` frames or the ``first`` rows).

**Blocks.** The starts, in C order (frame start, row start, column start), are cut into
*blocks*: one frame start by ``rows_per_block`` row starts by every column start, a
contiguous run of flat starts. ``rows_per_block`` is the most rows whose starts number at
most :data:`BLOCK_STARTS` (at least one row). A :class:`WindowTable` holds, per block, one
integer per group (the block's total weight, or its count of qualifying starts of each
class); a draw picks the block by those integers first, and then a window within the block
from the block's own window weights or counts, computed again from the map's values over
the block (``depth`` frames by ``rows_per_block + height - 1`` rows by every column). Each
frame a block reads is kept as running sums down its rows (weights in fixed point as
uint32, labels as one count a class in the least unsigned type that holds ``height``), so
that a block costs ``depth`` differences of two rows and one running sum across the
columns. Frames and blocks' windows are kept for all the tables of a process together,
the least recently used let go first, within :data:`CACHED_BYTES`, and read or computed
again when needed after that.

**The bound.** A table holds at most :data:`TABLE_BYTES_PER_BLOCK` bytes per block and
group (an int64 running count for labels; for weights the Python int of the running total
that the exact draw searches), and a process keeps at most :data:`CACHED_BYTES` of frames
and blocks' windows (8 bytes a start, at most :data:`BLOCK_STARTS` starts a block) for all
its tables together, however many maps (volumes) it draws from; while a map is first
read, up to as much again of its frames as read.
:attr:`WindowTable.nbytes` is what a table holds now, :attr:`WindowTable.bound` its bound.
Only a store made by the earlier weight recipe (``splitmix64-distinct`` with a weight
map) still builds the full table of every positive start (16 bytes a start), on first
use, to draw as it did.

- **Weights** over frames x rows x columns: a window weighs the mean of the map over its
  voxels, that is its sum, counted in **fixed point**: each voxel weight ``v`` is the
  integer ``rint(v * 2**scale)`` (at least 1 where ``v > 0``, so a window is drawable
  exactly when it holds a positive weight, as before), computed in the map's float type,
  with ``scale`` the largest that keeps a block's total under 2**61 and ``height`` rows
  of one frame under 2**32 (the largest weight is then 2**24 to 2**25 units for windows
  of 65 to 128 rows). Sums of integers are exact in any order,
  so a block's windows computed again weigh exactly what they weighed when the block's
  total was taken, and the draw is reproducible bit for bit. Window ``i`` takes the
  integer ``t = floor(m * T / 2**53)`` of its uniform ``u = m / 2**53`` and the total ``T``,
  and the window whose interval of the running total holds ``t``: each window is drawn
  with probability its fixed-point weight over ``T`` (to within 2**-53), and a window of
  weight 0 never. Weights shaped as the window starts weigh each start directly.
- **Labels** (whole-number classes) of the frames' shape: a window counts for class
  ``c`` when at least ``fraction`` of its voxels are of class ``c`` (counted exactly, in
  integers). Classes are drawn by their shares and, within class ``k``, the ``j``-th
  qualifying start in C order for ``j = floor(u * n_k)``: the same start as the full table
  of every qualifying start drew, found through the block counts.

The table also holds a digest of the map's values, which a cube store records; a block
computed again whose total differs from the table's (the map rewritten since) is refused.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import sys
import threading
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from daskcubes.errors import UserError

MapKind = Literal["weights", "labels"]
Shape = tuple[int, int, int]

#: A block holds at most this many window starts (but at least one row of them).
BLOCK_STARTS = 8192
#: Bytes of maps' frames and blocks' windows a process keeps for all its tables together,
#: at most (but the last one kept, however large).
CACHED_BYTES = 512 * 2**20
#: Bytes a table holds per block and group, at most (see the module's docstring).
TABLE_BYTES_PER_BLOCK = 64
#: Numbers that name each table's frames and blocks among those a process keeps.
_TOKENS: Iterator[int] = itertools.count()
#: A block's total weight stays under 2**this (so its int64 running sums never overflow).
_BLOCK_BITS = 61
#: Bits of a window's rows of one frame's fixed-point weights, at most.
_FIXED_BITS = 32


@dataclass(frozen=True)
class MapSpec:
    """The map of a plan: its kind, where it is, and (labels) the shares asked for.

    ``fingerprint`` is the digest the map's values must have (a store's record), or None
    for a map not yet read.
    """

    kind: MapKind
    path: str
    ratios: tuple[tuple[int, float], ...] = ()
    fraction: float = 0.5
    fingerprint: str | None = None

    @property
    def what(self) -> str:
        return f"{self.kind} '{self.path}'"


class MapReader(Protocol):
    """A map's values read again, as the storage layer implements it."""

    def read(self, frames: tuple[int, int], rows: tuple[int, int]) -> np.ndarray:
        """(frames, rows, columns) values of frames ``frames[0] .. frames[1] - 1`` and rows
        ``rows[0] .. rows[1] - 1``, every column."""
        ...


def starts_shape(modes: tuple[str, str, str], cube_shape: Shape, frames_shape: Shape) -> Shape:
    """Window starts along each axis: ``n - size + 1`` for a window, else one."""
    counts = [
        n - size + 1 if mode == "window" else 1
        for mode, size, n in zip(modes, cube_shape, frames_shape, strict=True)
    ]
    return counts[0], counts[1], counts[2]


def rows_per_block(starts: Shape) -> int:
    """Row starts per block: as many as keep a block within :data:`BLOCK_STARTS` starts."""
    return max(1, min(starts[1], BLOCK_STARTS // starts[2]))


@dataclass(eq=False)
class WindowTable:
    """Drawable window starts by block: one group for weights, one per class for labels.

    ``shares`` are the cumulative shares of the groups. Block ``b`` is frame start
    ``b // blocks_per_frame`` by row starts ``rows * (b % blocks_per_frame)`` onwards.
    ``counts[k]`` is the running total over blocks of group ``k``: int64 counts of
    qualifying starts for labels; for weights a list of exact Python ints of the running
    fixed-point weight (``scale``: each voxel weight times 2**scale, rounded).
    """

    fingerprint: str
    starts_shape: Shape
    shares: np.ndarray
    kind: MapKind
    spec: MapSpec
    reader: MapReader
    cube_shape: Shape
    by_start: bool
    rows: int
    counts: tuple[np.ndarray | list[int], ...] = field(repr=False)
    scale: int = 0
    #: (classes) voxels of a class a window needs to count for it (labels).
    need: int = 0
    #: The map's shape (the full table of the earlier weight recipe reads whole frames).
    map_shape: Shape = (0, 0, 0)
    #: What names this table's frames and blocks among those a process keeps.
    token: int = field(default_factory=lambda: next(_TOKENS), repr=False)
    _full: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def blocks_per_frame(self) -> int:
        return -(-self.starts_shape[1] // self.rows)

    @property
    def n_blocks(self) -> int:
        return self.starts_shape[0] * self.blocks_per_frame

    @property
    def nbytes(self) -> int:
        """Bytes the table holds now: its block totals and the blocks' windows it keeps
        (and the full table, where the earlier weight recipe built it)."""
        held = self.shares.nbytes
        for count in self.counts:
            if isinstance(count, np.ndarray):
                held += count.nbytes
            else:
                held += sys.getsizeof(count) + sum(sys.getsizeof(value) for value in count)
        held += _KEPT.held(self.token)
        if self._full is not None:
            held += sum(part.nbytes for part in self._full)
        return held

    @property
    def bound(self) -> int:
        """The most bytes :attr:`nbytes` may be (but for the earlier recipe's full table)."""
        groups = len(self.counts)
        frame = self.rows_needed * self.map_shape[2] * 8 * groups  # the most one frame takes
        kept = max(CACHED_BYTES, frame, BLOCK_STARTS * 8 * groups)
        return self.shares.nbytes + TABLE_BYTES_PER_BLOCK * groups * self.n_blocks + kept

    # -- drawing ---------------------------------------------------------------------------

    def draw(self, window_u: np.ndarray, group_u: np.ndarray) -> np.ndarray:
        """(n,) int64 flat window starts for uniforms in [0, 1): ``group_u`` picks the
        group by its share, ``window_u`` a start within it."""
        window_u = np.asarray(window_u, dtype=np.float64)
        groups = np.minimum(
            np.searchsorted(self.shares, group_u, side="right"), len(self.counts) - 1
        )
        blocks = np.empty(len(window_u), dtype=np.int64)
        offsets = np.empty(len(window_u), dtype=np.int64)
        for k, count in enumerate(self.counts):
            mine = np.flatnonzero(groups == k)
            if not mine.size:
                continue
            if isinstance(count, np.ndarray):  # labels: the j-th qualifying start
                n = int(count[-1])
                j = np.minimum((window_u[mine] * n).astype(np.int64), n - 1)
                found = np.searchsorted(count, j, side="right")
                before = np.where(found > 0, count[np.maximum(found - 1, 0)], 0)
                blocks[mine], offsets[mine] = found, j - before
            else:  # weights: the integer t = floor(m T / 2**53) of the running total
                total = count[-1]
                units = np.floor(window_u[mine] * 2.0**53).astype(np.uint64)
                for at, m in zip(mine.tolist(), units.tolist(), strict=True):
                    target = (m * total) >> 53
                    at_block = bisect_right(count, target)
                    blocks[at] = at_block
                    offsets[at] = target - (count[at_block - 1] if at_block else 0)
        out = np.empty(len(window_u), dtype=np.int64)
        per_block = self.rows * self.starts_shape[2]
        for block in np.unique(blocks).tolist():
            mine = np.flatnonzero(blocks == block)
            within = self._windows(block)
            for k in np.unique(groups[mine]).tolist():
                ours = mine[groups[mine] == k]
                if self.kind == "weights":
                    picked = np.searchsorted(within[k], offsets[ours], side="right")
                else:
                    picked = within[k][offsets[ours]]
                out[ours] = self._first_flat(block, per_block) + picked
        return out

    def _first_flat(self, block: int, per_block: int) -> int:
        frame, row_block = divmod(block, self.blocks_per_frame)
        return (frame * self.starts_shape[1]) * self.starts_shape[2] + row_block * per_block

    def _windows(self, block: int) -> tuple[np.ndarray, ...]:
        """Per group, the block's running window weights (weights) or the offsets of its
        qualifying starts (labels), from the cache or computed again."""
        found = _KEPT.get((self.token, "block", block))
        if found is None:
            found = self._compute(block)
            _KEPT.put((self.token, "block", block), found)
        return found

    def _compute(self, block: int) -> tuple[np.ndarray, ...]:
        frame, row_block = divmod(block, self.blocks_per_frame)
        first = row_block * self.rows
        stop = min(first + self.rows, self.starts_shape[1])
        depth, height, width = self.cube_shape
        if self.by_start:
            sums: tuple[np.ndarray, ...] = (self._frame(frame)[first:stop].astype(np.uint64),)
        elif self.kind == "weights":  # the frames' running sums down the rows, summed
            held = np.zeros((stop - first, self.map_shape[2]), dtype=np.uint64)
            for at in range(frame, frame + depth):
                np.add(held, _rows_of(self._frame(at), first, stop, height), out=held)
            sums = (_across_columns(held, width),)
        else:  # each class's running counts down the rows, summed
            classes = len(self.counts)
            counts = np.zeros((classes, stop - first, self.map_shape[2]), dtype=np.int64)
            for at in range(frame, frame + depth):
                np.add(counts, _rows_of(self._frame(at), first, stop, height), out=counts)
            sums = tuple(_across_columns(counts, width))
        found, totals = [], []
        for k, window_sums in enumerate(sums):
            flat = window_sums.reshape(-1)
            if self.kind == "weights":
                running = np.cumsum(flat.astype(np.int64))
                totals.append(int(running[-1]) if running.size else 0)
                found.append(running)
            else:
                offsets = np.flatnonzero(flat >= self.need)
                totals.append(offsets.size)
                found.append(offsets)
            recorded = self.counts[k]
            expected = int(recorded[block]) - (int(recorded[block - 1]) if block else 0)
            if totals[-1] != expected:
                raise UserError(
                    f"{self.spec.what}: not the map these cubes were drawn with (its values "
                    "differ from those it held when first read)"
                )
        return tuple(found)

    def _frame(self, frame: int) -> np.ndarray:
        """The rows windows may reach of one frame of the map, as blocks sum them
        (weights in fixed point), from the cache or read again."""
        kept = _KEPT.get((self.token, "frame", frame))
        if kept is not None:
            return kept[0]
        values = self.reader.read((frame, frame + 1), (0, self.rows_needed))[0]
        if self.kind == "weights":
            values = _fixed(values, self.scale)
            values = values if self.by_start else _down_rows(values)
        else:
            values = _class_rows(values, self.spec, self.cube_shape[1])
        _KEPT.put((self.token, "frame", frame), (values,))
        return values

    @property
    def rows_needed(self) -> int:
        """Rows of the map that some window reaches."""
        return self.starts_shape[1] + (0 if self.by_start else self.cube_shape[1] - 1)

    # -- the earlier weight recipe ---------------------------------------------------------

    def legacy_draw(self, window_u: np.ndarray, group_u: np.ndarray) -> np.ndarray:
        """The draw of the recipe ``splitmix64-distinct``: for labels the same as
        :meth:`draw`; for weights, a search of the float64 running weight of every
        positive start (the full table, built on first use: stores made with it only)."""
        if self.kind == "labels":
            return self.draw(window_u, group_u)
        if self._full is None:
            self._full = _full_weights(self)
        flat, cdf = self._full
        picked = np.searchsorted(cdf, window_u * cdf[-1], side="right")
        return flat[np.minimum(picked, len(flat) - 1)]


#: A map's values frame by frame: ``layer(frame)`` is a (rows, columns) array.
Layer = Callable[[int], np.ndarray]


def summarise(
    spec: MapSpec,
    layer: Layer,
    reader: MapReader,
    map_shape: Shape,
    starts: Shape,
    cube_shape: Shape,
    digest: hashlib.blake2b,
) -> WindowTable:
    """The table of ``spec``'s map, whose values ``layer`` gives frame by frame (adding
    them to ``digest`` as it reads them) and ``reader`` block by block; weights are given
    per window start when ``map_shape`` is ``starts``, else per voxel."""
    by_start = spec.kind == "weights" and map_shape == starts
    token = next(_TOKENS)
    kept = _Frames(token)  # frames as blocks sum them
    if spec.kind == "labels":
        counts, need = _label_counts(spec, layer, starts, cube_shape, kept)
        shares = np.cumsum([share for _, share in spec.ratios if share > 0])
        return WindowTable(
            digest.hexdigest(), starts, shares / shares[-1], "labels", spec, reader,
            cube_shape, False, rows_per_block(starts), counts, need=need, map_shape=map_shape,
            token=token,
        )  # fmt: skip
    scale, totals = _weight_totals(spec, layer, starts, cube_shape, by_start, kept)
    running: list[int] = []
    total = 0
    for value in totals.tolist():
        total += value
        running.append(total)
    return WindowTable(
        digest.hexdigest(), starts, np.ones(1), "weights", spec, reader, cube_shape, by_start,
        rows_per_block(starts), (running,), scale=scale, map_shape=map_shape, token=token,
    )  # fmt: skip


class _Kept:
    """The maps' frames and blocks' windows a process keeps for all its tables, by
    (table, kind, index), within :data:`CACHED_BYTES`: the least recently used go first."""

    def __init__(self) -> None:
        self.items: OrderedDict[tuple[int, str, int], tuple[np.ndarray, ...]] = OrderedDict()
        self.nbytes = 0
        self.lock = threading.Lock()

    def get(self, key: tuple[int, str, int]) -> tuple[np.ndarray, ...] | None:
        with self.lock:
            found = self.items.get(key)
            if found is not None:
                self.items.move_to_end(key)
            return found

    def put(self, key: tuple[int, str, int], value: tuple[np.ndarray, ...]) -> None:
        with self.lock:
            if key in self.items:
                self.nbytes -= sum(part.nbytes for part in self.items.pop(key))
            self.items[key] = value
            self.nbytes += sum(part.nbytes for part in value)
            while self.nbytes > CACHED_BYTES and len(self.items) > 1:
                self.nbytes -= sum(part.nbytes for part in self.items.popitem(last=False)[1])

    def held(self, token: int) -> int:
        with self.lock:
            return sum(
                part.nbytes
                for key, parts in self.items.items()
                if key[0] == token
                for part in parts
            )

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
            self.nbytes = 0


_KEPT = _Kept()


@dataclass(frozen=True)
class _Frames:
    """One table's frames among those the process keeps (while the map is first read)."""

    token: int

    def get(self, frame: int) -> np.ndarray | None:
        found = _KEPT.get((self.token, "frame", frame))
        return None if found is None else found[0]

    def put(self, frame: int, values: np.ndarray) -> None:
        _KEPT.put((self.token, "frame", frame), (values,))


def _keep(frames: OrderedDict[int, np.ndarray], frame: int, values: np.ndarray) -> None:
    """Keep a frame's values read first (while the map is first read) within
    :data:`CACHED_BYTES`: the least recently used go first."""
    frames[frame] = values
    frames.move_to_end(frame)
    held = sum(kept.nbytes for kept in frames.values())
    while held > CACHED_BYTES and len(frames) > 1:
        held -= frames.popitem(last=False)[1].nbytes


def _box_sums(layer: np.ndarray, height: int, width: int, dtype: type) -> np.ndarray:
    """Sums of ``layer`` over every ``height`` x ``width`` box, by the box's first row and
    column, from the layer's summed-area table (exact for integers even where the
    table's own sums wrap around)."""
    n_rows, n_cols = layer.shape
    table = np.zeros((n_rows + 1, n_cols + 1), dtype=dtype)
    np.cumsum(np.cumsum(layer, axis=0, dtype=dtype), axis=1, out=table[1:, 1:])
    below, left = table[height:, :-width], table[:-height, width:]
    return table[height:, width:] - below - left + table[:-height, :-width]


Boxes = tuple[np.ndarray, ...]


def _frame_windows(box_of: Callable[[int], Boxes], n_starts: int, depth: int) -> Iterator[Boxes]:
    """The sums of ``box_of(frame)`` over ``depth`` consecutive frames, start by start:
    adding the frame that enters and taking away the one that leaves (read again)."""
    total = box_of(0)
    for frame in range(1, depth):
        total = tuple(t + b for t, b in zip(total, box_of(frame), strict=True))
    yield total
    for start in range(1, n_starts):
        entering, leaving = box_of(start + depth - 1), box_of(start - 1)
        total = tuple(t + e - g for t, e, g in zip(total, entering, leaving, strict=True))
        yield total


def _check_weights(maps: MapSpec, values: np.ndarray, frame: int) -> np.ndarray:
    weights = values if values.dtype.kind == "f" else values.astype(np.float64)
    bad = ~np.isfinite(weights) | (weights < 0)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise UserError(
            f"{maps.what}: value {float(weights[row, col])} at frame {frame}, row {row}, "
            f"column {col}; expected finite weights of 0 or more"
        )
    return weights


def _fixed(values: np.ndarray, scale: int) -> np.ndarray:
    """Weights in fixed point: ``rint(v * 2**scale)`` as uint32 (the scale keeps the
    largest under 2**32), at least 1 where ``v > 0``; in the map's own float type (or
    float64), the same integers wherever and in whatever order they are computed."""
    weights = values if values.dtype.kind == "f" else values.astype(np.float64)
    fixed = np.ldexp(weights, scale)
    np.rint(fixed, out=fixed)
    top = np.nextafter(fixed.dtype.type(2.0**32), fixed.dtype.type(0))  # (a map rewritten)
    np.clip(fixed, 1, top, out=fixed)
    return np.where(weights > 0, fixed, 0).astype(np.uint32)


def _block_totals(window_sums: np.ndarray, rows: int) -> np.ndarray:
    """(blocks of the frame start,) sums of ``window_sums`` (row starts x column starts)
    over each block of ``rows`` row starts."""
    row_sums = window_sums.sum(axis=1, dtype=window_sums.dtype)
    return np.add.reduceat(row_sums, np.arange(0, len(row_sums), rows), dtype=row_sums.dtype)


def _weight_totals(
    maps: MapSpec,
    layer: Layer,
    starts: Shape,
    cube_shape: Shape,
    by_start: bool,
    kept: _Frames,
) -> tuple[int, np.ndarray]:
    """The fixed-point scale of the map's weights and each block's total weight: the map
    read twice, once for its largest weight (and the checks, and the digest)."""
    n_starts, start_rows, start_cols = starts
    depth, height, width = cube_shape
    frames = n_starts if by_start else n_starts + depth - 1
    raw: OrderedDict[int, np.ndarray] = OrderedDict()  # kept from the first read, if they fit
    largest = 0.0
    for frame in range(frames):
        values = _check_weights(maps, layer(frame), frame)
        largest = max(largest, float(values.max()))
        _keep(raw, frame, values)
    if largest == 0:
        raise UserError(f"{maps.what}: every window has weight 0; expected some positive weight")
    rows = rows_per_block(starts)
    voxels = 1 if by_start else depth * height * width
    bits = _BLOCK_BITS - math.ceil(math.log2(rows * start_cols * voxels))
    if bits < 8:
        raise UserError(
            f"{maps.what}: windows of {voxels} voxels are too many to weigh exactly (a "
            "smaller window, or weights per window start)"
        )
    # The largest weight below 2**bits; and a window's ``height`` rows of one frame under
    # 2**32, so that a frame keeps as uint32 running sums down its rows.
    fixed_bits = _FIXED_BITS - (0 if by_start else math.ceil(math.log2(height)))
    scale = min(bits, fixed_bits) - math.frexp(largest)[1]
    totals = []

    def again(frame: int) -> np.ndarray:
        return raw.pop(frame) if frame in raw else layer(frame)

    if by_start:
        for frame in range(n_starts):
            fixed = _fixed(again(frame), scale)
            kept.put(frame, fixed)
            totals.append(_block_totals(fixed.astype(np.uint64), rows))
        return scale, np.concatenate(totals)

    def down_rows(frame: int) -> np.ndarray:
        found = kept.get(frame)
        if found is not None:
            return found
        running = _down_rows(_fixed(again(frame)[: start_rows + height - 1], scale))
        kept.put(frame, running)
        return running

    # The sums of ``height`` rows of the window's frames, frame start by frame start.
    zeros = np.zeros((start_rows, start_cols + width - 1), dtype=np.uint64)
    for held in _over_frame_starts(zeros, down_rows, depth, n_starts, start_rows, height):
        totals.append(_block_totals(_across_columns(held, width), rows))
    return scale, np.concatenate(totals)


def _down_rows(fixed: np.ndarray) -> np.ndarray:
    """(rows + 1, columns) uint32 running sums of fixed-point weights down the rows, from 0
    (they wrap around, but the sum of fewer than ``2**32 / largest`` rows, a difference of
    two, is exact)."""
    running = np.zeros((fixed.shape[0] + 1, fixed.shape[1]), dtype=np.uint32)
    np.cumsum(fixed, axis=0, dtype=np.uint32, out=running[1:])
    return running


def _class_rows(values: np.ndarray, spec: MapSpec, height: int) -> np.ndarray:
    """(classes, rows + 1, columns) running counts of each class asked for down the rows,
    from 0, in the least unsigned type that holds ``height`` (they wrap around, but a count
    over ``height`` rows, a difference of two, is exact)."""
    labels = [label for label, share in spec.ratios if share > 0]
    dtype = next(t for t in (np.uint8, np.uint16, np.uint32) if height <= np.iinfo(t).max)
    running = np.zeros((len(labels), values.shape[0] + 1, values.shape[1]), dtype=dtype)
    for k, label in enumerate(labels):
        np.cumsum(values == label, axis=0, dtype=dtype, out=running[k, 1:])
    return running


def _over_frame_starts(
    held: np.ndarray,
    down_rows: Callable[[int], np.ndarray],
    depth: int,
    n_starts: int,
    start_rows: int,
    height: int,
) -> Iterator[np.ndarray]:
    """``held`` (zeros) summed over the ``height`` rows of ``depth`` frames, for each frame
    start in turn: the frame that enters added, the one that leaves taken away, in place."""
    for frame in range(depth):
        np.add(held, _rows_of(down_rows(frame), 0, start_rows, height), out=held)
    for start in range(n_starts):
        if start:
            np.add(held, _rows_of(down_rows(start + depth - 1), 0, start_rows, height), out=held)
            np.subtract(held, _rows_of(down_rows(start - 1), 0, start_rows, height), out=held)
        yield held


def _rows_of(down: np.ndarray, first: int, stop: int, height: int) -> np.ndarray:
    """The sums of ``height`` rows from each row ``first .. stop - 1`` of one frame, from its
    running sums down the rows (the last axis but one): a difference of two, exact in
    their unsigned type however they wrap."""
    return down[..., first + height : stop + height, :] - down[..., first:stop, :]


def _across_columns(rows: np.ndarray, width: int) -> np.ndarray:
    """Window sums (row starts x column starts) from sums of rows: ``width`` columns as a
    difference of two running sums across the columns (the last axis)."""
    dtype = rows.dtype
    across = np.zeros((*rows.shape[:-1], rows.shape[-1] + 1), dtype=dtype)
    np.cumsum(rows, axis=-1, dtype=dtype, out=across[..., 1:])
    return across[..., width:] - across[..., :-width]


def _label_counts(
    maps: MapSpec,
    layer: Layer,
    starts: Shape,
    cube_shape: Shape,
    kept: _Frames,
) -> tuple[tuple[np.ndarray, ...], int]:
    """Per class asked for, the running count over blocks of the starts that qualify;
    and the voxels of a class a window needs."""
    n_starts, start_rows, start_cols = starts
    depth, height, width = cube_shape
    voxels = depth * height * width
    need = max(1, math.ceil(maps.fraction * voxels))
    asked = [(label, share) for label, share in maps.ratios if share > 0]
    rows = rows_per_block(starts)
    present: set[int] = set()
    most = [0] * len(asked)
    found: list[list[np.ndarray]] = [[] for _ in asked]

    def down_rows(frame: int) -> np.ndarray:
        found = kept.get(frame)
        if found is not None:
            return found
        values = layer(frame)
        if (
            values.dtype.kind == "f"
            and not (np.isfinite(values) & (values == np.round(values))).all()
        ):
            row, col = np.argwhere(~(np.isfinite(values) & (values == np.round(values))))[0]
            raise UserError(
                f"{maps.what}: value {values[row, col]} at frame {frame}, row {row}, column "
                f"{col}; expected whole-number classes"
            )
        present.update(int(v) for v in np.unique(values))
        running = _class_rows(values[: start_rows + height - 1], maps, height)
        kept.put(frame, running)
        return running

    # Each class's counts over ``height`` rows of the window's frames, start by start.
    zeros = np.zeros((len(asked), start_rows, start_cols + width - 1), dtype=np.int64)
    for held in _over_frame_starts(zeros, down_rows, depth, n_starts, start_rows, height):
        for k, count in enumerate(_across_columns(held, width)):
            most[k] = max(most[k], int(count.max()))
            found[k].append(_block_totals((count >= need).astype(np.int64), rows))
    for (label, _), best in zip(asked, most, strict=True):
        if label not in present:
            holds = ", ".join(map(str, sorted(present)[:10])) + (
                ", ..." if len(present) > 10 else ""
            )
            raise UserError(
                f"label_ratios: class {label} does not occur in {maps.what} (it holds classes "
                f"{holds})"
            )
        if best < need:
            raise UserError(
                f"label_ratios: class {label} cannot be met: no window has label_fraction "
                f"{maps.fraction} of its {voxels} voxels of class {label} (at most "
                f"{best / voxels:.3g} of a window is)"
            )
    return tuple(np.cumsum(np.concatenate(parts)) for parts in found), need


def _full_weights(table: WindowTable) -> tuple[np.ndarray, np.ndarray]:
    """The earlier recipe's table: the flat index and float64 running weight of every
    positive start (16 bytes a start), the map read again frame by frame."""
    n_starts, start_rows, start_cols = table.starts_shape
    depth, height, width = table.cube_shape
    per_frame = start_rows * start_cols
    map_rows = table.map_shape[1]
    flats, weights = [], []

    def layer(frame: int) -> np.ndarray:
        values = table.reader.read((frame, frame + 1), (0, map_rows))[0]
        return _check_weights(table.spec, values, frame).astype(np.float64)

    def keep(frame_start: int, window_weights: np.ndarray) -> None:
        flat = np.flatnonzero(window_weights > 0)
        flats.append(flat + frame_start * per_frame)
        weights.append(window_weights[flat])

    if table.by_start:
        for frame in range(n_starts):
            keep(frame, layer(frame).reshape(-1))
    else:

        def box_of(frame: int) -> Boxes:
            values = layer(frame)
            held = (values > 0).astype(np.int64)
            return (
                _box_sums(values, height, width, np.float64)[:start_rows],
                _box_sums(held, height, width, np.int64)[:start_rows],
            )

        voxels = depth * height * width
        tiny = np.finfo(np.float64).tiny
        for frame, (sums, held) in enumerate(_frame_windows(box_of, n_starts, depth)):
            # A window with no positive voxel weighs exactly 0, whatever the rounding of
            # the running sums; one with some weighs more than 0.
            mean = np.where(held > 0, np.maximum(sums / voxels, tiny), 0.0)
            keep(frame, mean.reshape(-1))
    return np.concatenate(flats), np.cumsum(np.concatenate(weights))
