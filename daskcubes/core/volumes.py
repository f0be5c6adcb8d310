"""Datasets of many volumes: each volume's share of the cubes, and the volume of each cube.

A dataset is one or more *volumes* (a patient, a survey, a year, a run), each a stack
of frames of its own shape, numbered in the order given. A cube's volume is part of its
recipe: drawn per *shard* (every cube of a shard comes from one volume, so that a task
cuts from one volume, or a few), as a pure function of (seed, shard). Shard ``s`` takes
the volume whose share interval holds the ``s``-th point of a Weyl sequence (golden-ratio
steps from a point the seed picks): the volumes' shares of any run of shards stay within
a few shards of the asked ones, as the classes' shares of label-balanced windows do over
any run of cubes (:mod:`daskcubes.core.plan`).

The shares are, as the setting ``volume_shares`` says:

- ``windows`` (the default): in proportion to how many windows of the cube's definition
  each volume holds (:func:`window_count`), so that every window of the dataset is
  equally likely;
- ``equal``: the same share for every volume that holds the cube;
- or a share per volume name, normalised.

A volume too small for the cube holds no window: its share is 0 and it is left out (the
caller says so); a dataset where no volume holds the cube is refused. One volume needs
no draw: its cubes are exactly those of a plan without volumes.

Pure arithmetic: names and shapes in, volumes out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

from daskcubes.core.definition import Definition, check_grid_count
from daskcubes.core.draws import GOLDEN, VOLUME_DRAWS, draw_key
from daskcubes.core.plan import CubePlan, Recipes, Tiling, recipes_of
from daskcubes.core.tables import WindowTable
from daskcubes.errors import UserError

Shape = tuple[int, int, int]
#: The name of the one volume of a dataset of plain frames.
FRAMES = "frames"
ShareMode = Literal["windows", "equal"]


def window_count(definition: Definition, cube_shape: Shape, shape: Shape) -> int:
    """How many distinct cubes of ``cube_shape`` the definition can cut from frames of
    ``shape`` (0 when the cube does not fit): along each axis, the window starts of a
    window or grid axis, the ``n choose size`` subsets of a random one (frame subsets;
    random columns, times their orders unless sorted), 1 for all frames or the first
    rows."""
    fits = all(size <= n for size, n in zip(cube_shape, shape, strict=True))
    if not fits or (definition.frame_mode == "all" and cube_shape[0] != shape[0]):
        return 0
    grid = definition.grid(cube_shape, shape)
    count = 1
    for axis, (size, n, mode) in enumerate(zip(cube_shape, shape, definition.modes, strict=True)):
        if mode == "grid":
            count *= len(grid[axis])
        elif mode == "window":
            count *= n - size + 1
        elif mode == "subset" or (mode == "random" and definition.sorted_columns):
            count *= math.comb(n, size)
        elif mode == "random":
            count *= math.perm(n, size)
    return count


def grid_windows(definition: Definition, cube_shape: Shape, shape: Shape) -> int:
    """Windows of a grid over frames of ``shape`` (its axes only; an axis not in the grid
    counts once)."""
    return math.prod(len(starts) for starts in definition.grid(cube_shape, shape))


def volume_shares(
    names: Sequence[str],
    counts: Sequence[int],
    asked: ShareMode | Mapping[str, float] = "windows",
) -> np.ndarray:
    """(len(names),) float64 shares summing to 1: of the volumes that hold a window
    (``counts`` above 0), as ``asked`` says; 0 for the others. Refused in one line if no
    volume holds a window, or if asked shares name an unknown volume or are not
    positive numbers."""
    held = np.array([count > 0 for count in counts])
    if not held.any():
        raise UserError(
            f"volumes: none of the {len(names)} volumes holds a cube of this shape; "
            "expected at least one large enough"
        )
    if asked == "windows":
        total = sum(counts)
        weights = np.array([count / total for count in counts], dtype=np.float64)
    elif asked == "equal":
        weights = held.astype(np.float64)
    else:
        unknown = sorted(set(asked) - set(names))
        if unknown:
            raise UserError(
                f"volume_shares: {unknown[0]!r} names no volume; expected one of "
                f"{', '.join(map(repr, names))}"
            )
        bad = [name for name, share in asked.items() if not (share >= 0 and math.isfinite(share))]
        if bad:
            share = asked[bad[0]]
            raise UserError(
                f"volume_shares: {bad[0]!r} has share {share!r}; expected a number 0 or more"
            )
        weights = np.array([float(asked.get(name, 0.0)) for name in names]) * held
        if not weights.sum() > 0:
            raise UserError(
                "volume_shares: every volume that holds a cube has share 0; expected a "
                "positive share for at least one"
            )
    return weights / weights.sum()


def volumes_of_shards(seed: int, shards: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """(n,) int32 volume of each shard: the ``shard``-th point of a Weyl sequence (its
    start picked by the seed) placed in the volumes' cumulative shares. A volume of share
    0 is never drawn."""
    if len(shares) == 1:
        return np.zeros(len(shards), dtype=np.int32)
    steps = np.asarray(shards, dtype=np.uint64) * np.uint64(GOLDEN)
    points = (steps + np.uint64(draw_key(seed, VOLUME_DRAWS))) >> np.uint64(11)
    uniforms = points.astype(np.float64) * 2.0**-53
    cumulative = np.cumsum(shares)
    # From the last volume with a share on, 1: no uniform falls past it through rounding.
    cumulative[np.flatnonzero(shares > 0)[-1] :] = 1.0
    # side="right": a point on a share-0 volume's (empty) interval goes to the next one.
    return np.searchsorted(cumulative, uniforms, side="right").astype(np.int32)


@dataclass(frozen=True)
class DatasetPlan(Tiling):
    """Which cubes to cut from a dataset of volumes, and from which volume each comes.

    ``plans[k]`` is volume ``k``'s :class:`~daskcubes.core.plan.CubePlan` (its shape, the
    dataset's cube and seed), or None for a volume too small to hold the cube (left out:
    its share is 0). Cube ``i`` comes from volume ``v`` as that plan's cube ``local``
    (:meth:`volumes_of`): a grid enumerates every volume's windows in turn; other
    definitions draw each shard's volume by ``shares`` and keep the cube's index, so
    that a dataset of one volume cuts exactly the cubes of its plan.
    """

    names: tuple[str, ...]
    plans: tuple[CubePlan | None, ...]
    shares: tuple[float, ...]
    n_cubes: int
    task_size: int
    shard_size: int

    def __post_init__(self) -> None:
        self.check_tiling()
        if self.grid and len(self.plans) == 1:
            first = self.first
            shape = (first.n_frames, first.n_rows, first.n_cols)
            check_grid_count(self.n_cubes, first.cube_shape, first.definition, shape)
        elif self.grid and self.n_cubes > self.offsets[-1]:
            counts = ", ".join(
                f"{name} {count}" for name, count in zip(self.names, self.grid_counts, strict=True)
            )
            raise UserError(
                f"cubes: {self.n_cubes}; the volumes' grids have {self.offsets[-1]} windows in "
                f"all ({counts}), so expected 1 to {self.offsets[-1]}"
            )

    @classmethod
    def of(cls, plan: CubePlan) -> DatasetPlan:
        """The plan of one volume: exactly the cubes of ``plan``, in its tasks."""
        return cls((FRAMES,), (plan,), (1.0,), plan.n_cubes, plan.task_size, plan.shard_size)

    @cached_property
    def first(self) -> CubePlan:
        """The plan of the first volume that holds the cube (its cube, seed, definition)."""
        return next(plan for plan in self.plans if plan is not None)

    @property
    def seed(self) -> int:
        return self.first.seed

    @property
    def cube_shape(self) -> tuple[int, int, int]:
        return self.first.cube_shape

    @property
    def definition(self) -> Definition:
        return self.first.definition

    @property
    def grid(self) -> bool:
        return self.definition.has_grid

    @property
    def grid_counts(self) -> tuple[int, ...]:
        """Windows of each volume's grid (0 for a volume left out)."""
        return tuple(0 if p is None else int(np.prod(p.grid_shape)) for p in self.plans)

    @property
    def offsets(self) -> np.ndarray:
        """A grid's first cube of each volume, then the grids' total."""
        return np.concatenate([[0], np.cumsum(self.grid_counts)])

    def task_groups(self) -> list[np.ndarray]:
        """The shards of each task: of several volumes, the shards of one volume each, a
        task's worth at a time, volume after volume, so that a task cuts from one
        volume's source (one volume: consecutive shards). The store's bytes do not
        depend on them."""
        if len(self.plans) == 1:
            return super().task_groups()
        per_task = self.task_size // self.shard_size
        shards = np.arange(self.n_shards)
        volumes, _ = self.volumes_of(shards * self.shard_size)
        grouped = shards[np.argsort(volumes, kind="stable")]
        bounds = np.flatnonzero(np.diff(np.sort(volumes))) + 1
        return [
            part[first : first + per_task]
            for part in np.split(grouped, bounds)
            for first in range(0, len(part), per_task)
        ]

    def volumes_of(self, cubes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(volume, index in that volume's plan) of each of ``cubes``, int32 and int64."""
        cubes = np.asarray(cubes, dtype=np.int64)
        if len(self.plans) == 1:
            return np.zeros(len(cubes), dtype=np.int32), cubes
        if self.grid:
            volumes = np.searchsorted(self.offsets[1:], cubes, side="right").astype(np.int32)
            return volumes, cubes - self.offsets[volumes]
        shares = np.array(self.shares, dtype=np.float64)
        return volumes_of_shards(self.seed, cubes // self.shard_size, shares), cubes


def check_frame_counts(definition: Definition, shapes: Sequence[Shape]) -> None:
    """Refuse ``frame_mode all`` over volumes of several frame counts, in one line."""
    frame_counts = sorted({shape[0] for shape in shapes})
    if definition.frame_mode == "all" and len(frame_counts) > 1:
        raise UserError(
            f"frame_mode all: the volumes have {frame_counts[0]} to {frame_counts[-1]} "
            "frames, and a cube stacks every frame of one; set depth and frame_mode window "
            "(or subset) to cut cubes of a few frames from each"
        )


def dataset_plan(
    names: Sequence[str],
    shapes: Sequence[Shape],
    make: Callable[[int, int], CubePlan],
    n_cubes: int,
    cube_shape: Shape,
    definition: Definition,
    asked: ShareMode | Mapping[str, float],
    task_size: int,
) -> tuple[DatasetPlan, list[str]]:
    """The plan of ``n_cubes`` cubes over volumes ``names`` of ``shapes``, in tasks of
    ``task_size``, volume ``k``'s plan of ``n`` cubes made by ``make(k, n)`` (the shard
    size is theirs); returns it with the names of the volumes left out, too small for the cube.
    ``frame_mode all`` needs volumes of one frame count."""
    check_frame_counts(definition, shapes)
    counts = [window_count(definition, cube_shape, shape) for shape in shapes]
    shares = volume_shares(names, counts, asked)
    grid = definition.has_grid
    plans = tuple(
        None
        if count == 0
        else make(k, grid_windows(definition, cube_shape, shapes[k]) if grid else n_cubes)
        for k, count in enumerate(counts)
    )
    left_out = [name for name, plan in zip(names, plans, strict=True) if plan is None]
    plan = DatasetPlan(
        tuple(names),
        plans,
        tuple(float(share) for share in shares),
        n_cubes,
        task_size,
        next(plan for plan in plans if plan is not None).shard_size,
    )
    return plan, left_out


def dataset_recipes(
    plan: DatasetPlan, cubes: np.ndarray, tables: Sequence[WindowTable | None]
) -> tuple[np.ndarray, Recipes]:
    """The volume and recipe of each of ``cubes`` (any indices, any order); ``tables[k]``
    is volume ``k``'s map table (None where it draws from no map)."""
    volumes, local = plan.volumes_of(cubes)
    found = np.unique(volumes) if len(plan.plans) > 1 else volumes[:1]
    if len(found) == 1:
        volume_plan = plan.plans[int(found[0])]
        assert volume_plan is not None  # a volume left out is never drawn
        return volumes, recipes_of(volume_plan, local, tables[int(found[0])])
    n, (depth, _, width) = len(local), plan.cube_shape
    out = Recipes(
        np.empty((n, depth), np.int32), np.empty(n, np.int32), np.empty((n, width), np.int32)
    )
    for volume in found:
        mine = volumes == volume
        volume_plan = plan.plans[int(volume)]
        assert volume_plan is not None
        part = recipes_of(volume_plan, local[mine], tables[int(volume)])
        out.frames[mine], out.rows[mine], out.columns[mine] = part.frames, part.rows, part.columns
    return volumes, out
