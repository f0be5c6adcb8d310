"""The pure plan: which cubes exist, how they are batched, and each cube's recipe.

Integers in, recipes out; no dask, no I/O. Cube ``i`` is defined by

    cube[f, r, c] == frames[frame_idx[i, f], row_start[i] + r, col_idx[i, c]]

and every random choice for cube ``i`` comes from a generator seeded with
``SeedSequence(seed, spawn_key=(i,))``, so a cube never depends on the scheduler,
worker count, batch size, resume history, or whether it was stored or streamed.
With the article's semantics (the only ones so far) every cube stacks all frames in
order, takes the first ``dim`` rows, and ``dim`` distinct random columns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from daskcubes.errors import UserError

SEMANTICS = "article"
#: Cubes per chunk of the recipe arrays (``columns``, ``rows``, ``frames``) in a cube
#: store: small arrays, so few, larger files.
RECIPE_BLOCK = 65536


@dataclass(frozen=True)
class Recipes:
    """Recipes of cubes ``start .. start + n``.

    Attributes
    ----------
    start : index of the first cube.
    frames : (n, depth) source frame of each cube layer.
    rows : (n,) first source row of each cube.
    columns : (n, dim) source column of each cube column.
    """

    start: int
    frames: np.ndarray
    rows: np.ndarray
    columns: np.ndarray


@dataclass(frozen=True)
class CubePlan:
    """Which cubes to cut from frames of a given shape, and in which batches.

    ``depth`` is the number of frames (the cube's first axis). ``shard_size`` cubes form
    one shard file of the cube store (the storage layout); ``batch_size`` cubes, a whole
    number of shards, form one task. The store's bytes depend on the shard size only, so
    any batch size gives the same store.
    """

    n_cubes: int
    dim: int
    depth: int
    n_rows: int
    n_cols: int
    seed: int
    batch_size: int
    shard_size: int

    def __post_init__(self) -> None:
        if self.n_cubes < 1:
            raise UserError(f"cubes: {self.n_cubes}; expected at least 1")
        if self.shard_size < 1:
            raise UserError(f"shard_size: {self.shard_size}; expected at least 1")
        if self.batch_size < 1 or self.batch_size % self.shard_size:
            raise UserError(
                f"batch_size: {self.batch_size}; expected a multiple of shard_size "
                f"({self.shard_size}), so that each task writes whole shards"
            )
        if not 1 <= self.dim <= min(self.n_rows, self.n_cols):
            raise UserError(
                f"dim: {self.dim}; expected 1 to {min(self.n_rows, self.n_cols)}, since "
                f"frames have {self.n_rows} rows and {self.n_cols} columns"
            )

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
        return (self.depth, self.dim, self.dim)

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


def cube_columns(seed: int, index: int, n_cols: int, dim: int) -> np.ndarray:
    """The ``dim`` distinct source columns of cube ``index``, in cube order."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    return rng.choice(n_cols, size=dim, replace=False)


def columns_of(plan: CubePlan, cubes: Iterable[int]) -> np.ndarray:
    """(n, dim) source columns of the given cubes, in the order given."""
    picked = [cube_columns(plan.seed, int(i), plan.n_cols, plan.dim) for i in cubes]
    return np.array(picked, dtype=np.int32).reshape(len(picked), plan.dim)


def recipes(plan: CubePlan, start: int, stop: int) -> Recipes:
    """Recipes of cubes ``start .. stop`` (a pure function of the plan)."""
    n = stop - start
    columns = columns_of(plan, range(start, stop))
    frames = np.broadcast_to(np.arange(plan.depth, dtype=np.int32), (n, plan.depth))
    return Recipes(start, frames, np.zeros(n, dtype=np.int32), columns)
