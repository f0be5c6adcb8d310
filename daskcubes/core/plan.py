"""The pure plan: which cubes exist, how they are batched, and each cube's recipe.

Integers in, recipes out; no dask, no I/O. Cube ``i`` is defined by

    cube[f, r, c] == frames[frames_i[f], rows_i + r, columns_i[c]]

with shape ``(depth, height, width)``, and every random choice for cube ``i`` is a pure
function of (seed, i): a counter-based hash of the seed, the cube index and the draw
number (see :func:`first_distinct`), so a cube never depends on the scheduler, worker
count, batch size, resume history, or whether it was stored or streamed, and the
recipes of any set of cubes are computed at once in array arithmetic. The cube's
*definition* says how each choice is made:

- frames (``frame_mode``): ``all`` in order, a ``window`` of ``depth`` consecutive frames
  at a random start, or a random ``subset`` of ``depth`` frames in increasing order;
- rows (``row_mode``): the ``first`` ``height`` rows, or a ``window`` at a random start;
- columns (``column_mode``): ``width`` distinct ``random`` columns, in drawn order or
  ``sorted_columns``, or a ``window`` of consecutive columns at a random start;
- any axis may be ``grid``: windows at the starts of a grid along it (every
  ``*_stride`` positions, with the edge policy ``grid_edge``; see
  :mod:`daskcubes.core.windows`). The grid axes together make a grid of windows, and cube
  ``i`` is window ``i`` of it in C order (frames slowest, columns fastest); the other
  axes are chosen for each cube as above;
- or the window starts are drawn from a map (``weights`` or ``labels``, with windows
  along every axis that is not ``all`` frames or the ``first`` rows): window ``i``'s
  start is the table's (:mod:`daskcubes.io.maps`) for two counter-based uniforms of
  ``(seed, i)``.

The article's definition is the default: all frames, the first rows, random columns in
drawn order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from daskcubes.core.windows import GridEdge, grid_starts
from daskcubes.errors import UserError
from daskcubes.io.maps import WindowMaps, WindowTable, window_table
from daskcubes.io.storage import Storage

#: What a store's ``semantics`` attribute says: the article's definition, or another one
#: that the store's plan attributes spell out (:class:`Definition`).
SEMANTICS = "article"
DEFINED_SEMANTICS = "defined"
FrameMode = Literal["all", "window", "subset", "grid"]
RowMode = Literal["first", "window", "grid"]
ColumnMode = Literal["random", "window", "grid"]
#: The axes of a cube as the settings name them (``frame_mode``, ``row_stride``, ...).
AXES = ("frame", "row", "column")
#: Cubes per chunk of the recipe arrays (``columns``, ``rows``, ``frames``) in a cube
#: store: small arrays, so few, larger files.
RECIPE_BLOCK = 65536
#: The recipe function new cube stores are made with, by the name the store records.
RECIPE = "splitmix64-distinct"
#: The recipe function of stores whose attributes name none (made before they did).
LEGACY_RECIPE = "seedsequence-choice"

#: ``batch_size: auto`` sizes a task as this many bytes of cubes: 16 of the article's
#: 8 MB cubes, measured at 0.2-0.3 s a task on one thread.
AUTO_TASK_BYTES = 128 * 2**20
#: What a shard costs beyond its cubes (writing a file, recording it, the Python around
#: it), as the bytes of cubes that take as long to cut and write: measured ~0.5 ms.
AUTO_SHARD_BYTES = 256 * 2**10
#: What a cube costs beyond its bytes (its recipe, computed twice), likewise: ~4 us.
AUTO_CUBE_BYTES = 2 * 2**10
#: ``auto`` leaves at least this many tasks when there are that many shards: enough to
#: keep every worker of a machine busy and to move the progress bar in 1% steps.
AUTO_MIN_TASKS = 100


def batch_size_for(setting: int | str, n_cubes: int, shard_size: int, cube_nbytes: int) -> int:
    """Cubes per task for the ``batch_size`` setting: itself, or for ``"auto"`` the whole
    number of shards whose cubes take about 0.1-1 s to cut and write.

    Only the task count depends on it, never the store's bytes.
    """
    if setting != "auto":
        return int(setting)
    shard_cost = shard_size * (cube_nbytes + AUTO_CUBE_BYTES) + AUTO_SHARD_BYTES
    n_shards = -(-n_cubes // shard_size)
    shards = min(AUTO_TASK_BYTES // shard_cost, n_shards // AUTO_MIN_TASKS)
    return max(1, shards) * shard_size


@dataclass(frozen=True)
class Recipes:
    """Recipes of ``n`` cubes.

    Attributes
    ----------
    frames : (n, depth) source frame of each cube layer.
    rows : (n,) first source row of each cube.
    columns : (n, width) source column of each cube column.
    """

    frames: np.ndarray
    rows: np.ndarray
    columns: np.ndarray


@dataclass(frozen=True)
class Definition:
    """How a cube's frames, rows and columns are chosen (see the module docstring)."""

    frame_mode: FrameMode = "all"
    row_mode: RowMode = "first"
    column_mode: ColumnMode = "random"
    sorted_columns: bool = False
    #: Grid axes: the step between windows (None: the window's size, no overlap).
    frame_stride: int | None = None
    row_stride: int | None = None
    column_stride: int | None = None
    grid_edge: GridEdge = "drop"
    #: Window starts drawn from a map: a weight map, or a label volume with the share of
    #: each class and the least fraction of a window's voxels that counts for a class.
    weights: str | None = None
    labels: str | None = None
    label_ratios: tuple[tuple[int, float], ...] = ()
    label_fraction: float = 0.5

    @property
    def is_article(self) -> bool:
        return self == Definition()

    @property
    def modes(self) -> tuple[str, str, str]:
        """The mode of each axis (frames, rows, columns)."""
        return (self.frame_mode, self.row_mode, self.column_mode)

    @property
    def strides(self) -> tuple[int | None, int | None, int | None]:
        return (self.frame_stride, self.row_stride, self.column_stride)

    @property
    def has_grid(self) -> bool:
        return "grid" in self.modes

    def window_maps(self, storage: Storage, fingerprint: str | None = None) -> WindowMaps | None:
        """The map the windows are drawn from, reached through ``storage``; None if none."""
        if self.weights is not None:
            return WindowMaps("weights", self.weights, storage, fingerprint=fingerprint)
        if self.labels is not None:
            return WindowMaps(
                "labels",
                self.labels,
                storage,
                self.label_ratios,
                self.label_fraction,
                fingerprint,
            )
        return None

    def grid(
        self, cube_shape: tuple[int, int, int], frames_shape: tuple[int, int, int]
    ) -> tuple[np.ndarray, ...]:
        """The window starts along each axis: the grid's for a grid axis, else ``[0]``
        (an axis not in the grid counts once)."""
        return tuple(
            grid_starts(n, size, stride or size, self.grid_edge)
            if mode == "grid"
            else np.zeros(1, dtype=np.int32)
            for mode, stride, size, n in zip(
                self.modes, self.strides, cube_shape, frames_shape, strict=True
            )
        )


#: A cube's depth, height and width, each with the name of the setting that gave it.
CubeSizes = tuple[tuple[str, int], tuple[str, int], tuple[str, int]]


def check_cube_fits(
    sizes: CubeSizes,
    definition: Definition,
    frames_shape: tuple[int, int, int],
    frames: str = "the frames store has",
) -> None:
    """Refuse cubes of ``sizes`` that do not fit frames of ``frames_shape`` (``n_frames,
    n_rows, n_cols``), in one line naming the setting; ``frames`` says whose shape it is.

    The one check of its kind: a plan makes it, and so does a config of synthetic
    frames before any frame is made.
    """
    n_frames, n_rows, n_cols = frames_shape
    for name, size in sizes:
        # One setting may give two sizes (``dim``): it must fit the smaller frame axis.
        limit = min(n for (other, _), n in zip(sizes, frames_shape, strict=True) if other == name)
        if not 1 <= size <= limit:
            raise UserError(
                f"{name}: {size}; expected 1 to {limit}, since {frames} {n_frames} frames "
                f"of {n_rows} rows x {n_cols} columns"
            )
    depth = sizes[0][1]
    if definition.frame_mode == "all" and depth != n_frames:
        raise UserError(
            f"depth: {depth}; frame_mode all stacks every frame, so depth must be "
            f"{n_frames} (the frame count); use frame_mode window or subset for fewer frames"
        )
    for axis, mode, stride in zip(AXES, definition.modes, definition.strides, strict=True):
        if stride is not None and mode != "grid":
            raise UserError(
                f"{axis}_stride: {stride} needs {axis}_mode grid ({axis}_mode is {mode})"
            )
        if stride is not None and stride < 1:
            raise UserError(f"{axis}_stride: {stride}; expected at least 1")
    if definition.grid_edge != "drop" and not definition.has_grid:
        raise UserError(f"grid_edge: {definition.grid_edge} needs an axis in grid mode")
    _check_map_settings(definition)


#: Modes whose windows a map may choose: a window, all frames, the first rows.
MAP_MODES = (("all", "window"), ("first", "window"), ("window",))


def _check_map_settings(definition: Definition) -> None:
    if definition.labels is None and definition.label_ratios:
        raise UserError("label_ratios needs labels (the label volume)")
    if definition.labels is not None and not definition.label_ratios:
        raise UserError(
            'labels needs label_ratios: the share of each class, such as {"0": 1, "1": 1}'
        )
    if definition.labels is not None and definition.weights is not None:
        raise UserError("weights and labels: windows are drawn from one map; give one of them")
    if definition.labels is None and definition.weights is None:
        return
    if not 0 < definition.label_fraction <= 1:
        raise UserError(
            f"label_fraction: {definition.label_fraction}; expected more than 0, at most 1"
        )
    shares = [share for _, share in definition.label_ratios]
    if any(share < 0 for share in shares) or (shares and sum(shares) <= 0):
        raise UserError(f"label_ratios: shares {shares}; expected shares of 0 or more, not all 0")
    setting = "weights" if definition.weights is not None else "labels"
    for axis, mode, allowed in zip(AXES, definition.modes, MAP_MODES, strict=True):
        if mode not in allowed:
            raise UserError(
                f"{setting} chooses where windows start: {axis}_mode must be "
                f"{' or '.join(allowed)} (it is {mode})"
            )


def check_grid_count(
    n_cubes: int,
    cube_shape: tuple[int, int, int],
    definition: Definition,
    frames_shape: tuple[int, int, int],
) -> None:
    """Refuse more cubes than a grid has windows, in one line giving the count."""
    if not definition.has_grid:
        return
    counts = [len(starts) for starts in definition.grid(cube_shape, frames_shape)]
    total = int(np.prod(counts))
    if n_cubes > total:
        along = " x ".join(
            f"{count} {axis}s"
            for axis, mode, count in zip(AXES, definition.modes, counts, strict=True)
            if mode == "grid"
        )
        raise UserError(
            f"cubes: {n_cubes}; the grid has {total} windows ({along}), so expected 1 to "
            f"{total} (cube i is window i of the grid in C order)"
        )


@dataclass(frozen=True)
class CubePlan:
    """Which cubes to cut from frames of a given shape, and in which batches.

    Cubes are ``(depth, height, width)``, cut from ``n_frames`` frames of ``n_rows`` x
    ``n_cols`` as ``definition`` says. ``shard_size`` cubes form one shard file of the
    cube store (the storage layout); ``batch_size`` cubes, a whole number of shards,
    form one task. The store's bytes depend on the shard size only, so any batch size
    gives the same store.
    """

    n_cubes: int
    depth: int
    height: int
    width: int
    n_frames: int
    n_rows: int
    n_cols: int
    seed: int
    batch_size: int
    shard_size: int
    recipe: str = RECIPE
    definition: Definition = Definition()
    #: Where the map of ``definition.weights`` or ``labels`` is, and the digest of its
    #: values (a new plan reads the map and records the digest; a stored plan checks it).
    maps: WindowMaps | None = None

    def __post_init__(self) -> None:
        if self.recipe not in _RECIPE_FUNCTIONS:
            raise UserError(
                f"recipe function {self.recipe!r}: unknown to this version of daskcubes "
                f"(it knows {', '.join(map(repr, _RECIPE_FUNCTIONS))}); a store made by a "
                "newer version needs that version"
            )
        if self.recipe == LEGACY_RECIPE and not self.definition.is_article:
            raise UserError(f"recipe function {LEGACY_RECIPE!r} makes only the article's cubes")
        if self.n_cubes < 1:
            raise UserError(f"cubes: {self.n_cubes}; expected at least 1")
        if self.shard_size < 1:
            raise UserError(f"shard_size: {self.shard_size}; expected at least 1")
        if self.batch_size < 1 or self.batch_size % self.shard_size:
            raise UserError(
                f"batch_size: {self.batch_size}; expected a multiple of shard_size "
                f"({self.shard_size}), so that each task writes whole shards"
            )
        self._check_definition()
        if (self.maps is None) != (self.definition.window_maps(Storage()) is None):
            raise ValueError("a plan has maps exactly when its definition names a map")
        if self.maps is not None and self.maps.fingerprint is None:
            # A new plan: the map is read and checked now, before anything is written,
            # and its digest is what every copy of the plan (each task's) checks.
            digest = self.window_table.fingerprint
            object.__setattr__(self, "maps", replace(self.maps, fingerprint=digest))

    @property
    def window_table(self) -> WindowTable:
        """The table of window starts of the plan's map (read once per process)."""
        return self.read_window_table()

    def read_window_table(self, fresh: bool = False) -> WindowTable:
        """The table of the plan's map; ``fresh`` reads the map again to check it."""
        if self.maps is None:
            raise ValueError("this plan draws no windows from a map")
        frames_shape = (self.n_frames, self.n_rows, self.n_cols)
        definition = self.definition
        return window_table(self.maps, definition.modes, self.cube_shape, frames_shape, fresh)

    def _check_definition(self) -> None:
        """Refuse a shape that does not fit the frames, naming the setting."""
        mode = self.definition
        sizes = (("depth", self.depth), ("height", self.height), ("width", self.width))
        frames_shape = (self.n_frames, self.n_rows, self.n_cols)
        check_cube_fits(sizes, mode, frames_shape)
        check_grid_count(self.n_cubes, self.cube_shape, mode, frames_shape)
        if mode.sorted_columns and mode.column_mode != "random":
            raise UserError(
                f"sorted_columns: true needs column_mode random (column_mode is "
                f"{mode.column_mode}, whose columns are in order already)"
            )

    @property
    def grid_starts(self) -> tuple[np.ndarray, ...]:
        """Window starts along each axis of the grid (``[0]`` for an axis not in it)."""
        return self.definition.grid(self.cube_shape, (self.n_frames, self.n_rows, self.n_cols))

    @property
    def grid_shape(self) -> tuple[int, ...]:
        """Windows of the grid along each axis (1 for an axis not in it)."""
        return tuple(len(starts) for starts in self.grid_starts)

    @property
    def n_batches(self) -> int:
        return -(-self.n_cubes // self.batch_size)

    @property
    def recipe_block(self) -> int:
        """Cubes per chunk of the recipe arrays."""
        return min(self.n_cubes, RECIPE_BLOCK)

    @property
    def n_recipe_blocks(self) -> int:
        return -(-self.n_cubes // self.recipe_block)

    @property
    def cube_shape(self) -> tuple[int, int, int]:
        return (self.depth, self.height, self.width)

    def batch_bounds(self, batch: int) -> tuple[int, int]:
        """First cube and one past the last cube of ``batch``."""
        start = batch * self.batch_size
        return start, min(start + self.batch_size, self.n_cubes)

    @property
    def n_shards(self) -> int:
        return -(-self.n_cubes // self.shard_size)

    def shard_bounds(self, shard: int) -> tuple[int, int]:
        """First cube and one past the last cube of shard file ``shard``."""
        start = shard * self.shard_size
        return start, min(start + self.shard_size, self.n_cubes)

    def batch_shards(self, batch: int) -> range:
        """The shards that batch ``batch`` writes."""
        per_batch = self.batch_size // self.shard_size
        return range(batch * per_batch, min((batch + 1) * per_batch, self.n_shards))

    def recipe_block_bounds(self, block: int) -> tuple[int, int]:
        start = block * self.recipe_block
        return start, min(start + self.recipe_block, self.n_cubes)


def seedsequence_columns(seed: int, index: int, n_cols: int, dim: int) -> np.ndarray:
    """The ``dim`` distinct source columns of cube ``index`` under the legacy recipe.

    A numpy ``Generator`` per cube, from ``SeedSequence(seed, spawn_key=(index,))``,
    then ``choice`` without replacement: 20-60 us a cube, ten times the counter-based
    recipe, so kept only for the stores made with it (:data:`LEGACY_RECIPE`).
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    return rng.choice(n_cols, size=dim, replace=False)


# -- the counter-based recipe ----------------------------------------------------------
#
# Hash ``j`` of cube ``i`` is ``mix64(cube_key(i) + (j + 1) * GOLDEN)``, where
# ``cube_key(i) = mix64(stream_key + (i + 1) * GOLDEN)``: SplitMix64 twice over, so it is
# a pure function of (seed, stream, i, j) and any set of cubes is computed at once in
# uint64 array arithmetic. Each hash gives two 32-bit draws, its high half then its low
# half. A draw becomes an integer in ``[0, n)`` by Lemire's multiply-shift, skipping the
# few draws that would favour some values, so every integer is exactly equally likely.
# Distinct values are the first ``count`` values of the stream not seen before:
# sequential sampling without replacement, uniform over ordered selections.

_GOLDEN = 0x9E3779B97F4A7C15
_LOW32 = np.uint64(0xFFFFFFFF)
#: Independent random streams of one cube, one per kind of choice.
COLUMN_STREAM = 0
FRAME_STREAM = 1
ROW_STREAM = 2
#: Maps: the uniform that picks a window, and the low-discrepancy one that picks a class.
WINDOW_STREAM = 3
CLASS_STREAM = 4
#: Draws computed at once, bounding the memory of a call (~60 MB of temporaries).
_DRAWS_PER_CHUNK = 1 << 21


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (Stafford's variant 13), in place on uint64 ``z``."""
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


@lru_cache(maxsize=64)
def stream_key(seed: int, stream: int) -> int:
    """64-bit key of one stream of a root seed (numpy's SeedSequence hashes any int)."""
    state = np.random.SeedSequence(seed, spawn_key=(stream,)).generate_state(1, np.uint64)
    return int(state[0])


def cube_keys(seed: int, stream: int, cubes: np.ndarray) -> np.ndarray:
    """(n,) uint64 key of each cube's ``stream``."""
    keys = np.asarray(cubes, dtype=np.uint64) + np.uint64(1)
    keys *= np.uint64(_GOLDEN)
    keys += np.uint64(stream_key(seed, stream))
    return _mix64(keys)


def _draws(keys: np.ndarray, n: int, n_draws: int) -> tuple[np.ndarray, np.ndarray]:
    """Draws ``0 .. n_draws`` (an even number) of each key as integers in ``[0, n)``.

    Returns (len(keys), n_draws) int32 values and a bool mask of the valid ones: an
    invalid draw is one that Lemire's method rejects to keep the values exactly uniform.
    """
    steps = np.arange(1, n_draws // 2 + 1, dtype=np.uint64) * np.uint64(_GOLDEN)
    hashes = _mix64(keys[:, None] + steps[None, :])
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


def first_distinct(keys: np.ndarray, n: int, count: int) -> np.ndarray:
    """(len(keys), count) int32: for each key, the first ``count`` distinct valid draws in
    ``[0, n)``, in the order drawn.

    Works through the keys in chunks of bounded memory; the rare key whose first draws
    hold too few distinct values is done again with twice as many.
    """
    if not 1 <= count <= n < 1 << 31:
        raise ValueError(f"cannot draw {count} distinct integers below {n}")
    out = np.empty((len(keys), count), dtype=np.int32)
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


# -- recipes ---------------------------------------------------------------------------


def cube_columns(seed: int, index: int, n_cols: int, dim: int) -> np.ndarray:
    """The ``dim`` distinct source columns of cube ``index``, in cube order (one cube of
    :func:`columns_of`)."""
    return first_distinct(cube_keys(seed, COLUMN_STREAM, np.array([index])), n_cols, dim)[0]


def _window_starts(keys: np.ndarray, n: int, size: int) -> np.ndarray:
    """(len(keys),) int32 start of a window of ``size`` at a random place in ``[0, n)``."""
    return first_distinct(keys, n - size + 1, 1)[:, 0]


def _windows(starts: np.ndarray, size: int) -> np.ndarray:
    return starts[:, None] + np.arange(size, dtype=np.int32)


def _grid_window_starts(plan: CubePlan, cubes: np.ndarray, axis: int) -> np.ndarray:
    """(len(cubes),) int32 start along ``axis`` of each cube's window of the grid."""
    position = np.unravel_index(cubes, plan.grid_shape)[axis]
    return plan.grid_starts[axis][position]


def _counter_frames(plan: CubePlan, cubes: np.ndarray) -> np.ndarray:
    mode, n, depth = plan.definition.frame_mode, len(cubes), plan.depth
    if mode == "grid":
        return _windows(_grid_window_starts(plan, cubes, 0), depth)
    if mode == "all":
        return np.broadcast_to(np.arange(depth, dtype=np.int32), (n, depth))
    keys = cube_keys(plan.seed, FRAME_STREAM, cubes)
    if mode == "window":
        return _windows(_window_starts(keys, plan.n_frames, depth), depth)
    return np.sort(first_distinct(keys, plan.n_frames, depth), axis=1)


def _counter_rows(plan: CubePlan, cubes: np.ndarray) -> np.ndarray:
    if plan.definition.row_mode == "first":
        return np.zeros(len(cubes), dtype=np.int32)
    if plan.definition.row_mode == "grid":
        return _grid_window_starts(plan, cubes, 1)
    return _window_starts(cube_keys(plan.seed, ROW_STREAM, cubes), plan.n_rows, plan.height)


def _counter_columns(plan: CubePlan, cubes: np.ndarray) -> np.ndarray:
    if plan.definition.column_mode == "grid":
        return _windows(_grid_window_starts(plan, cubes, 2), plan.width)
    keys = cube_keys(plan.seed, COLUMN_STREAM, cubes)
    if plan.definition.column_mode == "window":
        return _windows(_window_starts(keys, plan.n_cols, plan.width), plan.width)
    columns = first_distinct(keys, plan.n_cols, plan.width)
    return np.sort(columns, axis=1) if plan.definition.sorted_columns else columns


def _unit_floats(hashes: np.ndarray) -> np.ndarray:
    """Floats in [0, 1) from the top 53 bits of uint64 ``hashes``."""
    return (hashes >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _map_recipes(plan: CubePlan, cubes: np.ndarray) -> Recipes:
    """Windows whose starts the plan's map draws: a uniform of each cube's own stream
    picks the start; classes come from a Weyl sequence over the cube index (golden-ratio
    steps), whose shares of any run of cubes stay within a few cubes of the asked ones."""
    table = plan.window_table
    window_u = _unit_floats(_mix64(cube_keys(plan.seed, WINDOW_STREAM, cubes)))
    steps = np.asarray(cubes, dtype=np.uint64) * np.uint64(_GOLDEN)
    class_u = _unit_floats(steps + np.uint64(stream_key(plan.seed, CLASS_STREAM)))
    flat = table.draw(window_u, class_u)
    frame, row, column = np.unravel_index(flat, table.starts_shape)
    return Recipes(
        _windows(frame.astype(np.int32), plan.depth),
        row.astype(np.int32),
        _windows(column.astype(np.int32), plan.width),
    )


def _counter_recipes(plan: CubePlan, cubes: np.ndarray) -> Recipes:
    if plan.maps is not None:
        return _map_recipes(plan, cubes)
    # One stream per kind of choice, so that changing how one is made leaves the others
    # as they were (the article's columns are the same under any frame or row mode).
    return Recipes(
        _counter_frames(plan, cubes), _counter_rows(plan, cubes), _counter_columns(plan, cubes)
    )


def _seedsequence_recipes(plan: CubePlan, cubes: np.ndarray) -> Recipes:
    # The article's definition only (checked by CubePlan).
    picked = [seedsequence_columns(plan.seed, int(i), plan.n_cols, plan.width) for i in cubes]
    n, depth = len(cubes), plan.depth
    return Recipes(
        np.broadcast_to(np.arange(depth, dtype=np.int32), (n, depth)),
        np.zeros(n, dtype=np.int32),
        np.array(picked, dtype=np.int32).reshape(n, plan.width),
    )


#: Recipe functions by the name a cube store records (``plan.recipe`` in its attributes).
_RECIPE_FUNCTIONS: dict[str, Callable[[CubePlan, np.ndarray], Recipes]] = {
    RECIPE: _counter_recipes,
    LEGACY_RECIPE: _seedsequence_recipes,
}


def stored_recipe(plan_attrs: Mapping[str, Any]) -> str:
    """The recipe function that made a cube store, from its plan attributes."""
    return str(plan_attrs.get("recipe", LEGACY_RECIPE))


def recipes_of(plan: CubePlan, cubes: Sequence[int] | np.ndarray) -> Recipes:
    """Recipes of the given cubes (any indices, any order): a pure function of the plan."""
    cubes = np.asarray(cubes, dtype=np.int64).reshape(-1)
    return _RECIPE_FUNCTIONS[plan.recipe](plan, cubes)


def columns_of(plan: CubePlan, cubes: Sequence[int] | np.ndarray) -> np.ndarray:
    """(n, width) int32 source columns of the given cubes, in the order given."""
    return recipes_of(plan, cubes).columns


def recipes(plan: CubePlan, start: int, stop: int) -> Recipes:
    """Recipes of cubes ``start .. stop``."""
    return recipes_of(plan, np.arange(start, stop))
