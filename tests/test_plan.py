from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from daskcubes import jobs
from daskcubes.cli import main
from daskcubes.config import Config, load_config
from daskcubes.core import draws
from daskcubes.core.definition import Definition
from daskcubes.core.kernels import compiled_draws
from daskcubes.core.plan import (
    AUTO_MIN_TASKS,
    LEGACY_RECIPE,
    RECIPE,
    CubePlan,
    columns_of,
    cube_columns,
    recipes,
    recipes_of,
    seedsequence_columns,
    task_size_for,
)
from daskcubes.core.volumes import DatasetPlan
from daskcubes.cut import job as job_module
from daskcubes.errors import UserError
from daskcubes.io.schema import CubeSchema
from daskcubes.train.reader import open_cubes
from tests.helpers import small_config


def plan(**overrides: Any) -> CubePlan:
    """A plan; ``dim`` sets height and width, and the frame count is the depth."""
    values: dict[str, Any] = dict(
        n_cubes=50, depth=3, n_rows=9, n_cols=11, seed=1, task_size=8, shard_size=4
    )
    dim = overrides.pop("dim", 5)
    values = {"height": dim, "width": dim, **values, **overrides}
    return CubePlan(**{"n_frames": values["depth"], **values})


# -- the recipe function, against a scalar reference -----------------------------------

MASK64 = 2**64 - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def reference_columns(seed: int, index: int, n_cols: int, dim: int) -> list[int]:
    """The recipe function one draw at a time, in Python integers."""
    state = np.random.SeedSequence(seed, spawn_key=(0,)).generate_state(1, np.uint64)
    cube_key = mix64((int(state[0]) + (index + 1) * GOLDEN) & MASK64)
    picked: list[int] = []
    j = 0
    while len(picked) < dim:
        j += 1
        hashed = mix64((cube_key + j * GOLDEN) & MASK64)
        for draw in (hashed >> 32, hashed & 0xFFFFFFFF):
            product = draw * n_cols
            if product & 0xFFFFFFFF < 2**32 % n_cols:
                continue  # Lemire: this draw would favour some columns
            column = product >> 32
            if column not in picked and len(picked) < dim:
                picked.append(column)
    return picked


@settings(max_examples=200)
@given(
    seed=st.integers(0, 2**70),
    index=st.integers(0, 2**40),
    n_cols=st.integers(1, 2000),
    data=st.data(),
)
def test_columns_equal_the_reference(
    seed: int, index: int, n_cols: int, data: st.DataObject
) -> None:
    dim = data.draw(st.integers(1, min(n_cols, 200)))
    columns = cube_columns(seed, index, n_cols, dim)
    assert columns.tolist() == reference_columns(seed, index, n_cols, dim)
    assert len(set(columns.tolist())) == dim
    assert columns.min() >= 0 and columns.max() < n_cols


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**63),
    cubes=st.lists(st.integers(0, 10**12), min_size=1, max_size=40),
    n_cols=st.integers(1, 60),
    data=st.data(),
)
def test_any_set_of_cubes_equals_the_reference_cube_by_cube(
    seed: int, cubes: list[int], n_cols: int, data: st.DataObject
) -> None:
    # Small n_cols makes many cubes need more draws than first planned (dim == n_cols).
    dim = data.draw(st.integers(1, n_cols))
    p = plan(n_cubes=10**12 + 1, dim=dim, n_rows=dim, n_cols=n_cols, seed=seed)
    expected = [reference_columns(seed, i, n_cols, dim) for i in cubes]
    assert columns_of(p, cubes).tolist() == expected


def test_chunks_of_the_work_do_not_change_the_recipes(monkeypatch: pytest.MonkeyPatch) -> None:
    p = plan(n_cubes=3000, dim=9, n_cols=12)
    whole = recipes(p, 0, 3000).columns
    monkeypatch.setattr(draws, "_COMPILED_MAX_N", 0)  # the numpy draws, in chunks
    monkeypatch.setattr(draws, "_DRAWS_PER_CHUNK", 100)
    assert np.array_equal(recipes(p, 0, 3000).columns, whole)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**63),
    first=st.integers(0, 10**12),
    n=st.integers(1, 3000),
    data=st.data(),
)
def test_the_compiled_draws_are_the_numpy_draws(
    seed: int, first: int, n: int, data: st.DataObject
) -> None:
    count = data.draw(st.integers(1, min(n, 300)))
    keys = draws.cube_keys(seed, draws.COLUMN_DRAWS, np.arange(first, first + 50))
    compiled = np.empty((len(keys), count), dtype=np.int32)
    assert compiled_draws(keys, n, compiled)  # numba is a dependency: the compiled draws ran
    numpy = draws.numpy_first_distinct(keys, n, count, np.empty_like(compiled))
    assert np.array_equal(compiled, numpy)
    assert np.array_equal(draws.first_distinct(keys, n, count), numpy)


def test_golden_columns() -> None:
    # Stores made with each recipe function must keep their bytes: pin both.
    assert cube_columns(0, 0, 1000, 8).tolist() == [697, 380, 498, 393, 998, 269, 789, 696]
    assert seedsequence_columns(0, 0, 1000, 8).tolist() == [937, 209, 796, 720, 315, 756, 5, 125]
    legacy = plan(n_cubes=200000, dim=6, n_rows=12, n_cols=20, seed=7, recipe=LEGACY_RECIPE)
    assert columns_of(legacy, [123456]).tolist() == [[18, 0, 15, 3, 7, 14]]


# -- uniformity --------------------------------------------------------------------------


def chi_square_passes(counts: np.ndarray) -> bool:
    """Whether counts expected equal pass a chi-square test at p = 0.001."""
    expected = counts.mean()
    statistic = float(((counts - expected) ** 2).sum() / expected)
    k = counts.size - 1
    z = 3.09  # Wilson-Hilferty: the 99.9% quantile of chi-square with k degrees of freedom
    return statistic < k * (1 - 2 / (9 * k) + z * np.sqrt(2 / (9 * k))) ** 3


def uniformity(columns: np.ndarray, n_cols: int) -> dict[str, bool]:
    dim = columns.shape[1]
    positions = np.zeros((dim, n_cols))
    np.add.at(positions, (np.arange(dim)[None, :], columns), 1)
    pairs = np.bincount(columns[:, 0] * n_cols + columns[:, 1], minlength=n_cols**2)
    off_diagonal = pairs.reshape(n_cols, n_cols)[~np.eye(n_cols, dtype=bool)]
    return {
        "columns": chi_square_passes(np.bincount(columns.ravel(), minlength=n_cols)),
        **{f"position {j}": chi_square_passes(positions[j]) for j in range(dim)},
        "first two": chi_square_passes(off_diagonal),
    }


def test_columns_are_uniform_over_columns_positions_and_pairs() -> None:
    p = plan(n_cubes=40000, dim=5, n_cols=16, seed=3)
    columns = recipes(p, 0, p.n_cubes).columns
    assert all(uniformity(columns, 16).values()), uniformity(columns, 16)


def test_the_uniformity_check_catches_a_bias() -> None:
    p = plan(n_cubes=40000, dim=5, n_cols=16, seed=3)
    found = uniformity(np.sort(recipes(p, 0, p.n_cubes).columns, axis=1), 16)
    assert not found["position 0"] and found["columns"]


# -- recipes of a plan ------------------------------------------------------------------


@given(start=st.integers(0, 40), length=st.integers(1, 10))
def test_recipes_do_not_depend_on_how_cubes_are_grouped(start: int, length: int) -> None:
    p = plan()
    whole = recipes(p, 0, 50)
    part = recipes(p, start, start + length)
    assert np.array_equal(part.columns, whole.columns[start : start + length])
    assert np.array_equal(part.frames, np.tile(np.arange(3), (length, 1)))
    assert not part.rows.any()
    picked = [start + length - 1, start, start]
    assert np.array_equal(recipes_of(p, picked).columns, whole.columns[picked])


def test_different_seeds_and_cubes_choose_differently() -> None:
    assert not np.array_equal(cube_columns(1, 0, 1000, 100), cube_columns(2, 0, 1000, 100))
    assert not np.array_equal(cube_columns(1, 0, 1000, 100), cube_columns(1, 1, 1000, 100))


def test_tasks_cover_every_cube_once() -> None:
    p = plan()
    covered = [i for t in range(p.n_tasks) for i in range(*p.task_bounds(t))]
    assert covered == list(range(50))
    blocks = [i for k in range(p.n_recipe_blocks) for i in range(*p.recipe_block_bounds(k))]
    assert blocks == list(range(50))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_cubes": 0}, "cubes: 0"),
        ({"dim": 10}, "height: 10; expected 1 to 9"),
        ({"dim": 0}, "height: 0"),
        ({"task_size": 6}, "task_size: 6; expected a multiple of shard_size"),
        ({"shard_size": 0}, "shard_size: 0"),
        ({"recipe": "dice"}, "recipe function 'dice': unknown to this version"),
    ],
)
def test_bad_plans_name_the_setting(overrides: dict[str, int], message: str) -> None:
    with pytest.raises(UserError, match=message):
        plan(**overrides)


# -- stores made by the legacy recipe function -------------------------------------------


@pytest.fixture
def legacy_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    """A store as made before stores named their recipe function: legacy recipes."""
    config = small_config(tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(
            job_module, "CubePlan", lambda **values: CubePlan(**{**values, "recipe": LEGACY_RECIPE})
        )
        jobs.run(config, show_progress=False)
    group = zarr.open_group(config.out, mode="r+")
    attrs: dict[str, Any] = dict(group.attrs["daskcubes"])  # type: ignore[arg-type]
    del attrs["plan"]["recipe"]
    group.attrs["daskcubes"] = attrs
    return config


def test_a_legacy_store_opens_and_verifies_with_its_own_recipes(
    legacy_store: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    config = legacy_store
    stored = open_cubes(config.out).recipes(slice(None)).columns
    expected = [seedsequence_columns(config.seed, i, config.n_cols, config.dim) for i in range(40)]
    assert np.array_equal(stored, expected)
    assert not np.array_equal(stored, [cube_columns(7, i, 20, 6) for i in range(40)])
    status = main(["verify", config.out, "--against", config.frames_store, "--sample", "40"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert out.strip().endswith("no problems")


def test_a_legacy_store_refuses_to_resume(legacy_store: Config) -> None:
    with pytest.raises(UserError, match=f"recipe function '{LEGACY_RECIPE}'; this version"):
        jobs.sample(legacy_store, mode="resume", show_progress=False)


def test_new_stores_record_their_recipe_function(tmp_path: Path) -> None:
    config = small_config(tmp_path)
    jobs.run(config, show_progress=False)
    assert open_cubes(config.out).attrs["plan"]["recipe"] == RECIPE


# -- task_size: auto -------------------------------------------------------------------


def test_auto_batches_hold_whole_shards_sized_to_the_cubes() -> None:
    article = task_size_for("auto", 10**6, 16, 100 * 100 * 100 * 8)
    tiny = task_size_for("auto", 10**6, 16, 4 * 2 * 2 * 8)
    assert article == 16
    assert tiny % 16 == 0 and tiny > 100 * article
    assert task_size_for(48, 10**6, 16, 128) == 48


def test_auto_leaves_enough_tasks() -> None:
    n_cubes = 16 * AUTO_MIN_TASKS * 3
    size = task_size_for("auto", n_cubes, 16, 128)
    assert size == 3 * 16
    assert task_size_for("auto", 10, 16, 128) == 16


def test_auto_gives_the_same_store_as_fixed_task_sizes(tmp_path: Path) -> None:
    stores = {}
    sizes: list[int | str] = ["auto", 1, 400]
    for size in sizes:
        config = small_config(tmp_path / str(size), task_size=size, shard_size=1, cubes=400, dim=2)
        jobs.run(config, show_progress=False)
        store = open_cubes(config.out)
        stores[size] = (store.read(np.arange(400)), store.recipes(slice(None)).columns)
        if size == "auto":  # one shard per task would be the same as size 1
            assert jobs.cut_job(config).plan.task_size == 400 // AUTO_MIN_TASKS
    for size in (1, 400):
        assert all(np.array_equal(a, b) for a, b in zip(stores["auto"], stores[size], strict=True))


@pytest.mark.parametrize("value", ["x", 0, 2.5, True])
def test_a_bad_task_size_names_the_setting(value: object) -> None:
    with pytest.raises(UserError, match="setting 'task_size': expected auto or a whole number"):
        load_config(task_size=value)
    assert load_config(task_size="12").task_size == 12
    assert load_config(batch_size="12").task_size == 12  # its documented older name


def test_the_definition_has_one_spelling() -> None:
    """Settings, a store's attributes and the plan go through to_dict/from_dict."""
    defined = Definition(
        frame_mode="window",
        row_mode="window",
        column_mode="window",
        labels="labels.zarr",
        label_ratios=((0, 1.0), (2, 3.0)),
        label_fraction=0.25,
    )
    assert Definition.from_dict(defined.to_dict()) == defined
    assert json.loads(json.dumps(defined.to_dict())) == defined.to_dict()
    config = load_config(**{**defined.to_dict(), "label_ratios": {"2": 3, "0": 1}})
    assert config.definition == defined
    assert Definition.from_dict({"n_cubes": 3}) == Definition()  # older stores: the article's
    schema = CubeSchema(
        DatasetPlan.of(plan(definition=defined, depth=3)), "float64", "none", "digest"
    )
    assert CubeSchema.from_attrs(schema.attrs()).plan.definition == defined
