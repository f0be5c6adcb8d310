"""The completion record keeps its ranges merged as units finish, and saves them whole."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daskcubes import jobs
from daskcubes.core.plan import CubePlan
from daskcubes.io.layout import mark_complete, open_group, store_attrs
from daskcubes.io.progress import ProgressRecord, from_ranges, recorded_progress, to_ranges
from daskcubes.io.storage import Storage
from daskcubes.runtime import stages
from tests.helpers import small_config

units = st.lists(st.integers(0, 200), max_size=60)


@given(st.integers(1, 40), st.integers(1, 9), st.data())
def test_a_run_counts_the_cubes_of_its_finished_shards(
    n_cubes: int, shard_size: int, data: st.DataObject
) -> None:
    plan = CubePlan(
        n_cubes=n_cubes,
        depth=2,
        height=2,
        width=2,
        n_frames=2,
        n_rows=3,
        n_cols=4,
        seed=0,
        task_size=shard_size,
        shard_size=shard_size,
    )
    shards = data.draw(st.sets(st.integers(0, plan.n_shards - 1)))
    expected = sum(stop - start for start, stop in map(plan.shard_bounds, shards))
    assert stages.cubes_in(plan, shards) == expected


@given(units, units)
def test_ranges_merge_with_new_units(old: list[int], new: list[int]) -> None:
    merged = to_ranges(new, to_ranges(old))
    assert from_ranges(merged) == set(old) | set(new)
    flat = [bound for pair in merged for bound in pair]
    assert all(a < b for a, b in pairwise(flat)), "sorted, disjoint, apart"


def test_saves_between_finishes_record_every_unit(tmp_path: Path) -> None:
    config = small_config(tmp_path)
    jobs.run(config, show_progress=False)
    storage = Storage.of()
    group = open_group(config.out, "cube store", storage, mode="r+")
    attrs = store_attrs(group)
    attrs["complete"] = None
    group.attrs["daskcubes"] = attrs
    record = ProgressRecord(config.out, storage, interval=3600)
    for shards in [[5], [1, 2], [9], [0, 7]]:  # each save merges what finished since the last
        record.finished("shards", shards)
        record.save()
    record.finished("recipes", [0])
    record.save()
    reopened = store_attrs(open_group(config.out, "cube store", storage))
    assert reopened["progress"]["shards"] == [[0, 3], [5, 6], [7, 8], [9, 10]]
    assert recorded_progress(reopened) == {"shards": {0, 1, 2, 5, 7, 9}, "recipes": {0}}
    assert ProgressRecord(config.out, storage).done == recorded_progress(reopened)
    mark_complete(config.out, storage)


def test_without_a_terminal_progress_is_a_line_now_and_then(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Into a log file (stderr is no terminal here) a run writes whole lines, not redraws:
    one at the end, and one per interval before it."""
    config = small_config(tmp_path, task_size=4)
    jobs.run(config, show_progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    ends = [line for line in err.splitlines() if line.startswith("daskcubes: sample: ")]
    assert ends == ["daskcubes: sample: 11 of 11 tasks (100%)" + ends[0].split("(100%)")[1]]
    monkeypatch.setattr(stages, "LOG_INTERVAL", 0.0)  # a line for every task
    jobs.sample(config, mode="overwrite", show_progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert len([line for line in lines if line.startswith("daskcubes: sample: ")]) == 12
    assert "\r" not in "".join(lines)
