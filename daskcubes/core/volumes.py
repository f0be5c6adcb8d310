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
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from daskcubes.core.definition import Definition
from daskcubes.core.draws import GOLDEN, VOLUME_DRAWS, draw_key
from daskcubes.errors import UserError

Shape = tuple[int, int, int]
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
