from __future__ import annotations

import numpy as np
import pytest

from daskcubes.kernels import gather_cubes, slab_layer
from daskcubes.plan import Recipes
from daskcubes.testing import expected_cubes


def slab_of(frames: np.ndarray, dtype: str) -> np.ndarray:
    slab = np.empty((frames.shape[0], frames.shape[2], frames.shape[1]), dtype=dtype)
    for frame, layer in zip(frames, slab, strict=True):
        slab_layer(frame, layer)
    return slab


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("depth", "n_rows", "n_cols", "dim"), [(3, 7, 9, 4), (1, 5, 5, 5)])
def test_gather_matches_the_definition(
    dtype: str, depth: int, n_rows: int, n_cols: int, dim: int
) -> None:
    rng = np.random.default_rng(0)
    frames = rng.random((depth, n_rows, n_cols))
    columns = np.stack([rng.choice(n_cols, dim, replace=False) for _ in range(6)])
    recipe = Recipes(np.tile(np.arange(depth), (6, 1)), np.zeros(6, int), columns)
    out = np.empty((6, depth, dim, dim), dtype=dtype)
    gather_cubes(slab_of(frames[:, :dim, :], dtype), recipe.frames, recipe.rows, columns, out)
    assert np.array_equal(out, expected_cubes(frames, recipe).astype(dtype))


def test_gather_of_any_frames_rows_and_shape() -> None:
    rng = np.random.default_rng(1)
    frames = rng.random((6, 10, 9))
    n, depth, height, width = 7, 4, 3, 5
    recipe = Recipes(
        rng.integers(0, 6, (n, depth)),
        rng.integers(0, 10 - height + 1, n),
        np.stack([rng.choice(9, width, replace=False) for _ in range(n)]),
    )
    out = np.empty((n, depth, height, width))
    gather_cubes(slab_of(frames, "float64"), recipe.frames, recipe.rows, recipe.columns, out)
    assert np.array_equal(out, expected_cubes(frames, recipe, height))


def test_gather_from_a_block_of_frames_leaves_the_other_layers() -> None:
    rng = np.random.default_rng(2)
    frames = rng.random((6, 4, 5))
    recipe = Recipes(np.array([[0, 3, 5], [4, 1, 2]]), np.array([0, 1]), np.array([[4, 0], [2, 3]]))
    out = np.full((2, 3, 3, 2), -1.0)
    # Frames 2 .. 4 only: the layers of frames 0, 1 and 5 stay as they were.
    gather_cubes(
        slab_of(frames[2:5], "float64"), recipe.frames - 2, recipe.rows, recipe.columns, out
    )
    expected = expected_cubes(frames, recipe, 3)
    inside = (recipe.frames >= 2) & (recipe.frames < 5)
    assert np.array_equal(out[inside], expected[inside])
    assert (out[~inside] == -1).all()
