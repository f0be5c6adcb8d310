from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from daskcubes.errors import UserError
from daskcubes.plan import CubePlan, cube_columns, recipes


def plan(**overrides: int) -> CubePlan:
    values = dict(
        n_cubes=50, dim=5, depth=3, n_rows=9, n_cols=11, seed=1, batch_size=8, shard_size=4
    )
    return CubePlan(**{**values, **overrides})


@given(
    seed=st.integers(0, 2**63),
    index=st.integers(0, 10**9),
    n_cols=st.integers(1, 2000),
    data=st.data(),
)
def test_columns_are_distinct_in_bounds_and_deterministic(
    seed: int, index: int, n_cols: int, data: st.DataObject
) -> None:
    dim = data.draw(st.integers(1, min(n_cols, 200)))
    columns = cube_columns(seed, index, n_cols, dim)
    assert columns.shape == (dim,)
    assert len(set(columns.tolist())) == dim
    assert columns.min() >= 0 and columns.max() < n_cols
    assert np.array_equal(columns, cube_columns(seed, index, n_cols, dim))


@given(start=st.integers(0, 40), length=st.integers(1, 10))
def test_recipes_do_not_depend_on_how_cubes_are_grouped(start: int, length: int) -> None:
    p = plan()
    whole = recipes(p, 0, 50)
    part = recipes(p, start, start + length)
    assert np.array_equal(part.columns, whole.columns[start : start + length])
    assert np.array_equal(part.frames, np.tile(np.arange(3), (length, 1)))
    assert not part.rows.any()


def test_different_seeds_and_cubes_choose_differently() -> None:
    assert not np.array_equal(cube_columns(1, 0, 1000, 100), cube_columns(2, 0, 1000, 100))
    assert not np.array_equal(cube_columns(1, 0, 1000, 100), cube_columns(1, 1, 1000, 100))


def test_batches_cover_every_cube_once() -> None:
    p = plan()
    covered = [i for b in range(p.n_batches) for i in range(*p.batch_bounds(b))]
    assert covered == list(range(50))
    blocks = [i for k in range(p.n_recipe_blocks) for i in range(*p.recipe_block_bounds(k))]
    assert blocks == list(range(50))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_cubes": 0}, "cubes: 0"),
        ({"dim": 10}, "dim: 10; expected 1 to 9"),
        ({"dim": 0}, "dim: 0"),
        ({"batch_size": 6}, "batch_size: 6; expected a multiple of shard_size"),
        ({"shard_size": 0}, "shard_size: 0"),
    ],
)
def test_bad_plans_name_the_setting(overrides: dict[str, int], message: str) -> None:
    with pytest.raises(UserError, match=message):
        plan(**overrides)
