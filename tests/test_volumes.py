"""Datasets of many volumes: each volume's share, and the volume of each shard."""

from __future__ import annotations

import math

import numpy as np
import pytest

from daskcubes.core.definition import Definition
from daskcubes.core.plan import CubePlan
from daskcubes.core.volumes import (
    DatasetPlan,
    dataset_plan,
    volume_shares,
    volumes_of_shards,
    window_count,
)
from daskcubes.errors import UserError

NAMES = ("a", "b", "c", "d")


@pytest.mark.parametrize("seed", [0, 7, 2**40 + 3])
@pytest.mark.parametrize(
    "shares", [[0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4], [0.5, 0.0, 0.45, 0.05]]
)
def test_the_shares_hold_within_a_few_shards_over_any_run_of_shards(
    seed: int, shares: list[float]
) -> None:
    asked = np.array(shares)
    shards = np.arange(100_000)
    volumes = volumes_of_shards(seed, shards, asked)
    assert volumes.dtype == np.int32 and set(np.unique(volumes)) <= set(np.flatnonzero(asked))
    for start in (0, 12_345, 77_777):
        for length in (250, 1_000, 4_000):
            run = volumes[start : start + length]
            counts = np.bincount(run, minlength=len(asked))
            assert np.all(np.abs(counts - asked * length) <= 3), (start, length, counts)


def test_shares_hold_within_one_percent_over_4000_cubes_of_small_shards() -> None:
    asked = np.array([0.1, 0.2, 0.3, 0.4])
    for shard_size in (1, 4, 8):
        shards = np.arange(4_000) // shard_size
        cubes = np.bincount(volumes_of_shards(3, shards, asked), minlength=4)
        assert np.all(np.abs(cubes / 4_000 - asked) <= 0.01), (shard_size, cubes)


def test_a_shard_s_volume_is_a_pure_function_of_seed_and_shard() -> None:
    shares = np.array([0.3, 0.3, 0.4])
    shards = np.array([5, 0, 99, 5, 12_000])
    together = volumes_of_shards(11, shards, shares)
    alone = [volumes_of_shards(11, np.array([s]), shares)[0] for s in shards]
    assert together.tolist() == alone
    assert together[0] == together[3]
    assert not np.array_equal(
        volumes_of_shards(11, np.arange(64), shares), volumes_of_shards(12, np.arange(64), shares)
    )


def test_one_volume_needs_no_draw() -> None:
    assert volumes_of_shards(1, np.arange(10), np.array([1.0])).tolist() == [0] * 10


def test_a_trailing_volume_of_share_0_is_never_drawn() -> None:
    shares = np.array([1 / 3, 1 / 3, 1 / 3, 0.0])
    assert 3 not in volumes_of_shards(0, np.arange(100_000), shares)


ARTICLE = Definition()
WINDOWS = Definition(frame_mode="window", row_mode="window", column_mode="window")


def test_window_counts_count_every_distinct_cube() -> None:
    assert window_count(WINDOWS, (10, 20, 30), (64, 256, 200)) == 55 * 237 * 171
    assert window_count(ARTICLE, (64, 20, 5), (64, 256, 200)) == math.perm(200, 5)
    sorted_subsets = Definition(frame_mode="subset", sorted_columns=True)
    assert window_count(sorted_subsets, (4, 20, 5), (10, 30, 8)) == math.comb(10, 4) * math.comb(
        8, 5
    )
    grid = Definition(frame_mode="grid", row_mode="grid", column_mode="grid")
    assert window_count(grid, (10, 20, 30), (64, 256, 200)) == 6 * 12 * 6


def test_a_volume_too_small_for_the_cube_holds_no_window() -> None:
    assert window_count(WINDOWS, (10, 20, 30), (9, 256, 200)) == 0
    assert window_count(WINDOWS, (10, 20, 30), (64, 256, 29)) == 0
    assert window_count(ARTICLE, (64, 20, 5), (63, 256, 200)) == 0  # all frames: depth 64


def test_shares_by_windows_equal_or_asked() -> None:
    counts = [100, 300, 0, 600]
    assert volume_shares(NAMES, counts).tolist() == [0.1, 0.3, 0.0, 0.6]
    assert volume_shares(NAMES, counts, "equal").tolist() == [1 / 3, 1 / 3, 0.0, 1 / 3]
    asked = volume_shares(NAMES, counts, {"a": 1, "b": 3, "c": 5})
    assert asked.tolist() == [0.25, 0.75, 0.0, 0.0]  # c holds no cube; d is not asked for
    # Counts beyond floats' range (random columns of wide frames) still give shares.
    huge = volume_shares(("a", "b"), [math.perm(1000, 100), math.perm(1000, 100)])
    assert huge.tolist() == [0.5, 0.5]


@pytest.mark.parametrize(
    ("counts", "asked", "message"),
    [
        ([0, 0, 0, 0], "windows", r"^volumes: none of the 4 volumes holds a cube of this shape"),
        ([1, 1, 1, 1], {"e": 1.0}, r"^volume_shares: 'e' names no volume; expected one of 'a'"),
        ([1, 1, 1, 1], {"a": -1.0}, r"^volume_shares: 'a' has share -1.0; expected a number"),
        ([1, 1, 1, 1], {"a": math.nan}, r"^volume_shares: 'a' has share nan"),
        ([1, 0, 1, 1], {"b": 1.0}, r"^volume_shares: every volume that holds a cube has share 0"),
    ],
)
def test_bad_shares_are_one_line(counts: list[int], asked: object, message: str) -> None:
    with pytest.raises(UserError, match=message) as raised:
        volume_shares(NAMES, counts, asked)  # type: ignore[arg-type]
    assert "\n" not in str(raised.value)


def test_a_task_cuts_the_shards_of_one_volume_and_every_shard_once() -> None:
    shapes = [(10, 20, 30), (12, 25, 22), (9, 18, 40)]
    definition = Definition(frame_mode="window", row_mode="window", column_mode="window")

    def make(k: int, n: int) -> CubePlan:
        frames, rows, cols = shapes[k]
        return CubePlan(
            n_cubes=n,
            depth=4,
            height=6,
            width=5,
            n_frames=frames,
            n_rows=rows,
            n_cols=cols,
            seed=1,
            task_size=4,
            shard_size=4,
            definition=definition,
        )

    plan, left_out = dataset_plan(
        ["a", "b", "c"], shapes, make, 1000, (4, 6, 5), definition, "windows", 16
    )
    assert not left_out and plan.n_shards == 250
    groups = plan.task_groups()
    shards = np.concatenate(groups)
    assert sorted(shards.tolist()) == list(range(250))
    for group in groups:
        volumes, _ = plan.volumes_of(group * plan.shard_size)
        assert len(group) <= 4 and len(set(volumes.tolist())) == 1
    single = DatasetPlan.of(make(0, 1000))
    assert [g.tolist() for g in single.task_groups()] == [
        list(single.first.task_shards(t)) for t in range(single.first.n_tasks)
    ]
