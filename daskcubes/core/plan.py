"""The pure plan: which cubes exist, how they are grouped into tasks and shards, and each
cube's recipe.

Integers in, recipes out; no dask, no I/O. Cube ``i`` is defined by

    cube[f, r, c] == frames[frames_i[f], rows_i + r, columns_i[c]]

with shape ``(depth, height, width)``, chosen as the plan's
:class:`~daskcubes.core.definition.Definition` says; every random choice for cube ``i``
is a pure function of (seed, i) (:mod:`daskcubes.core.draws`), so a cube never depends
on the scheduler, worker count, task size, resume history, or whether it was stored or
streamed, and the recipes of any set of cubes are computed at once in array arithmetic.
Windows drawn from a map take the map's :class:`~daskcubes.core.tables.WindowTable` as
a value: the storage layer reads it (:mod:`daskcubes.io.maps`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from daskcubes.core.definition import (
    Definition,
    check_cube_fits,
    check_grid_count,
)
from daskcubes.core.draws import (
    CLASS_DRAWS,
    COLUMN_DRAWS,
    FRAME_DRAWS,
    GOLDEN,
    ROW_DRAWS,
    WINDOW_DRAWS,
    cube_keys,
    draw_key,
    first_distinct,
    mix64,
)
from daskcubes.core.tables import MapSpec, WindowTable
from daskcubes.errors import UserError

#: Cubes per chunk of the recipe arrays (``columns``, ``rows``, ``frames``) in a cube
#: store: small arrays, so few, larger files.
RECIPE_BLOCK = 65536
#: The recipe function new cube stores are made with, by the name the store records.
RECIPE = "splitmix64-distinct"
#: The recipe function of stores whose attributes name none (made before they did).
LEGACY_RECIPE = "seedsequence-choice"

#: ``task_size: auto`` sizes a task as this many bytes of cubes: 16 of the article's
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


def task_size_for(setting: int | str, n_cubes: int, shard_size: int, cube_nbytes: int) -> int:
    """Cubes per task for the ``task_size`` setting: itself, or for ``"auto"`` the whole
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


class Tiling:
    """How ``n_cubes`` cubes are grouped: ``shard_size`` cubes form one shard file of the
    cube store, ``task_size`` cubes (a whole number of shards) one task, and
    :data:`RECIPE_BLOCK` cubes one chunk of the recipe arrays."""

    n_cubes: int
    task_size: int
    shard_size: int

    @property
    def n_tasks(self) -> int:
        return -(-self.n_cubes // self.task_size)

    @property
    def recipe_block(self) -> int:
        """Cubes per chunk of the recipe arrays."""
        return min(self.n_cubes, RECIPE_BLOCK)

    @property
    def n_recipe_blocks(self) -> int:
        return -(-self.n_cubes // self.recipe_block)

    def task_bounds(self, task: int) -> tuple[int, int]:
        """First cube and one past the last cube of task ``task``."""
        start = task * self.task_size
        return start, min(start + self.task_size, self.n_cubes)

    @property
    def n_shards(self) -> int:
        return -(-self.n_cubes // self.shard_size)

    def shard_bounds(self, shard: int) -> tuple[int, int]:
        """First cube and one past the last cube of shard file ``shard``."""
        start = shard * self.shard_size
        return start, min(start + self.shard_size, self.n_cubes)

    def task_shards(self, task: int) -> range:
        """The shards that task ``task`` writes."""
        per_task = self.task_size // self.shard_size
        return range(task * per_task, min((task + 1) * per_task, self.n_shards))

    def task_groups(self) -> list[np.ndarray]:
        """The shards of each task: consecutive ones, ``task_size`` cubes' worth."""
        return [np.arange(s.start, s.stop) for s in map(self.task_shards, range(self.n_tasks))]

    def recipe_block_bounds(self, block: int) -> tuple[int, int]:
        start = block * self.recipe_block
        return start, min(start + self.recipe_block, self.n_cubes)

    def check_tiling(self) -> None:
        """Refuse counts and sizes that make no tiling, naming the setting."""
        if self.n_cubes < 1:
            raise UserError(f"cubes: {self.n_cubes}; expected at least 1")
        if self.shard_size < 1:
            raise UserError(f"shard_size: {self.shard_size}; expected at least 1")
        if self.task_size < 1 or self.task_size % self.shard_size:
            raise UserError(
                f"task_size: {self.task_size}; expected a multiple of shard_size "
                f"({self.shard_size}), so that each task writes whole shards"
            )


@dataclass(frozen=True)
class CubePlan(Tiling):
    """Which cubes to cut from frames of a given shape, and in which tasks.

    Cubes are ``(depth, height, width)``, cut from ``n_frames`` frames of ``n_rows`` x
    ``n_cols`` as ``definition`` says. ``shard_size`` cubes form one shard file of the
    cube store (the storage layout); ``task_size`` cubes, a whole number of shards,
    form one task. The store's bytes depend on the shard size only, so any task size
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
    task_size: int
    shard_size: int
    recipe: str = RECIPE
    definition: Definition = Definition()  # noqa: RUF009 (frozen: one shared default)
    #: The digest of the values of the map ``definition.weights`` or ``labels`` names,
    #: once read (the cut layer reads it and records it; a stored plan checks it).
    map_fingerprint: str | None = None

    def __post_init__(self) -> None:
        if self.recipe not in _RECIPE_FUNCTIONS:
            raise UserError(
                f"recipe function {self.recipe!r}: unknown to this version of daskcubes "
                f"(it knows {', '.join(map(repr, _RECIPE_FUNCTIONS))}); a store made by a "
                "newer version needs that version"
            )
        if self.recipe == LEGACY_RECIPE and not self.definition.is_article:
            raise UserError(f"recipe function {LEGACY_RECIPE!r} makes only the article's cubes")
        self.check_tiling()
        self._check_definition()
        if self.map_fingerprint is not None and self.definition.map_spec() is None:
            raise ValueError("a plan has a map's fingerprint only when its definition names a map")

    @property
    def map_spec(self) -> MapSpec | None:
        """The map the plan's windows are drawn from, with its digest; None if none."""
        return self.definition.map_spec(self.map_fingerprint)

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
    def cube_shape(self) -> tuple[int, int, int]:
        return (self.depth, self.height, self.width)


def seedsequence_columns(seed: int, index: int, n_cols: int, dim: int) -> np.ndarray:
    """The ``dim`` distinct source columns of cube ``index`` under the legacy recipe.

    A numpy ``Generator`` per cube, from ``SeedSequence(seed, spawn_key=(index,))``,
    then ``choice`` without replacement: 20-60 us a cube, ten times the counter-based
    recipe, so kept only for the stores made with it (:data:`LEGACY_RECIPE`).
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    return rng.choice(n_cols, size=dim, replace=False)


# -- recipes ---------------------------------------------------------------------------


def cube_columns(seed: int, index: int, n_cols: int, dim: int) -> np.ndarray:
    """The ``dim`` distinct source columns of cube ``index``, in cube order (one cube of
    :func:`columns_of`)."""
    return first_distinct(cube_keys(seed, COLUMN_DRAWS, np.array([index])), n_cols, dim)[0]


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
    keys = cube_keys(plan.seed, FRAME_DRAWS, cubes)
    if mode == "window":
        return _windows(_window_starts(keys, plan.n_frames, depth), depth)
    return np.sort(first_distinct(keys, plan.n_frames, depth), axis=1)


def _counter_rows(plan: CubePlan, cubes: np.ndarray) -> np.ndarray:
    if plan.definition.row_mode == "first":
        return np.zeros(len(cubes), dtype=np.int32)
    if plan.definition.row_mode == "grid":
        return _grid_window_starts(plan, cubes, 1)
    return _window_starts(cube_keys(plan.seed, ROW_DRAWS, cubes), plan.n_rows, plan.height)


def _counter_columns(plan: CubePlan, cubes: np.ndarray) -> np.ndarray:
    if plan.definition.column_mode == "grid":
        return _windows(_grid_window_starts(plan, cubes, 2), plan.width)
    keys = cube_keys(plan.seed, COLUMN_DRAWS, cubes)
    if plan.definition.column_mode == "window":
        return _windows(_window_starts(keys, plan.n_cols, plan.width), plan.width)
    columns = first_distinct(keys, plan.n_cols, plan.width)
    return np.sort(columns, axis=1) if plan.definition.sorted_columns else columns


def _unit_floats(hashes: np.ndarray) -> np.ndarray:
    """Floats in [0, 1) from the top 53 bits of uint64 ``hashes``."""
    return (hashes >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _map_recipes(plan: CubePlan, cubes: np.ndarray, table: WindowTable) -> Recipes:
    """Windows whose starts the plan's map draws: a uniform of each cube's own stream
    picks the start; classes come from a Weyl sequence over the cube index (golden-ratio
    steps), whose shares of any run of cubes stay within a few cubes of the asked ones."""
    window_u = _unit_floats(mix64(cube_keys(plan.seed, WINDOW_DRAWS, cubes)))
    steps = np.asarray(cubes, dtype=np.uint64) * np.uint64(GOLDEN)
    class_u = _unit_floats(steps + np.uint64(draw_key(plan.seed, CLASS_DRAWS)))
    flat = table.draw(window_u, class_u)
    frame, row, column = np.unravel_index(flat, table.starts_shape)
    return Recipes(
        _windows(frame.astype(np.int32), plan.depth),
        row.astype(np.int32),
        _windows(column.astype(np.int32), plan.width),
    )


def _counter_recipes(plan: CubePlan, cubes: np.ndarray, table: WindowTable | None) -> Recipes:
    if table is not None:
        return _map_recipes(plan, cubes, table)
    # One key per kind of choice, so that changing how one is made leaves the others
    # as they were (the article's columns are the same under any frame or row mode).
    return Recipes(
        _counter_frames(plan, cubes), _counter_rows(plan, cubes), _counter_columns(plan, cubes)
    )


def _seedsequence_recipes(plan: CubePlan, cubes: np.ndarray, table: WindowTable | None) -> Recipes:
    # The article's definition only (checked by CubePlan).
    picked = [seedsequence_columns(plan.seed, int(i), plan.n_cols, plan.width) for i in cubes]
    n, depth = len(cubes), plan.depth
    return Recipes(
        np.broadcast_to(np.arange(depth, dtype=np.int32), (n, depth)),
        np.zeros(n, dtype=np.int32),
        np.array(picked, dtype=np.int32).reshape(n, plan.width),
    )


#: Recipe functions by the name a cube store records (``plan.recipe`` in its attributes).
_RECIPE_FUNCTIONS: dict[str, Callable[[CubePlan, np.ndarray, WindowTable | None], Recipes]] = {
    RECIPE: _counter_recipes,
    LEGACY_RECIPE: _seedsequence_recipes,
}


def stored_recipe(plan_attrs: Mapping[str, Any]) -> str:
    """The recipe function that made a cube store, from its plan attributes."""
    return str(plan_attrs.get("recipe", LEGACY_RECIPE))


def recipes_of(
    plan: CubePlan, cubes: Sequence[int] | np.ndarray, table: WindowTable | None = None
) -> Recipes:
    """Recipes of the given cubes (any indices, any order): a pure function of the plan
    and, for windows drawn from a map, of the map's ``table``."""
    if (table is None) != (plan.map_spec is None):
        raise ValueError("a plan's recipes take its map's table exactly when it names a map")
    cubes = np.asarray(cubes, dtype=np.int64).reshape(-1)
    return _RECIPE_FUNCTIONS[plan.recipe](plan, cubes, table)


def columns_of(
    plan: CubePlan, cubes: Sequence[int] | np.ndarray, table: WindowTable | None = None
) -> np.ndarray:
    """(n, width) int32 source columns of the given cubes, in the order given."""
    return recipes_of(plan, cubes, table).columns


def recipes(plan: CubePlan, start: int, stop: int, table: WindowTable | None = None) -> Recipes:
    """Recipes of cubes ``start .. stop``."""
    return recipes_of(plan, np.arange(start, stop), table)
