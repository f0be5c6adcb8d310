from __future__ import annotations

import numpy as np
import pytest

from daskcubes.kernels import gather_cubes, make_slab
from daskcubes.plan import Recipes
from daskcubes.testing import expected_cubes


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
    gather_cubes(make_slab(frames[:, :dim, :], dtype), columns, out)
    assert np.array_equal(out, expected_cubes(frames, recipe).astype(dtype))
