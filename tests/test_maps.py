"""Weighted and label-balanced windows: draws that follow the map, stored as streamed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import zarr
from numpy.lib.stride_tricks import sliding_window_view

from daskcubes import jobs, open_cubes, open_stream
from daskcubes.cli import main
from daskcubes.core.definition import Definition
from daskcubes.core.plan import CubePlan, Recipes, recipes
from daskcubes.core.tables import WindowTable
from daskcubes.errors import UserError
from daskcubes.io.maps import window_table
from daskcubes.io.storage import Storage
from daskcubes.testing import assert_stores_identical
from tests.helpers import WINDOWS, map_config, save, small_args

#: A small volume and window: 3 x 10 x 8 = 240 window starts.
VOLUME = (4, 12, 10)
WINDOW = (2, 3, 3)


def weight_map() -> np.ndarray:
    """Random weights, with a block of zeros wide enough that some windows hold none."""
    weights = np.random.default_rng(0).random(VOLUME)
    weights[:, 5:, 4:] = 0.0
    return weights


def window_weights(weights: np.ndarray) -> np.ndarray:
    """Each window start's mean weight, summed directly (not as the plan does)."""
    return sliding_window_view(weights, WINDOW).mean(axis=(3, 4, 5))


class MapPlan(NamedTuple):
    """A plan whose windows a map draws, with the map's table (read as the cut reads it)."""

    plan: CubePlan
    table: WindowTable

    def recipes(self, start: int, stop: int) -> Recipes:
        return recipes(self.plan, start, stop, self.table)


def read_table(plan: CubePlan, fresh: bool = False) -> WindowTable:
    """The table of the plan's map, read as the cut reads it."""
    assert plan.map_spec is not None
    frames = (plan.n_frames, plan.n_rows, plan.n_cols)
    modes = plan.definition.modes
    return window_table(plan.map_spec, Storage(), modes, plan.cube_shape, frames, fresh)


def map_plan(n_cubes: int, shape: tuple[int, int, int] = VOLUME, **maps: Any) -> MapPlan:
    definition = Definition(**WINDOWS, **maps)
    plan = CubePlan(
        n_cubes=n_cubes,
        depth=WINDOW[0],
        height=WINDOW[1],
        width=WINDOW[2],
        n_frames=shape[0],
        n_rows=shape[1],
        n_cols=shape[2],
        seed=5,
        task_size=16,
        shard_size=16,
        definition=definition,
    )
    table = read_table(plan)
    plan = replace(plan, map_fingerprint=table.fingerprint)
    return MapPlan(plan, table)


def drawn_counts(drawn: MapPlan) -> np.ndarray:
    """How often each window start was drawn, over the plan's starts."""
    got = drawn.recipes(0, drawn.plan.n_cubes)
    starts = drawn.table.starts_shape
    flat = np.ravel_multi_index((got.frames[:, 0], got.rows, got.columns[:, 0]), starts)
    return np.bincount(flat, minlength=int(np.prod(starts))).reshape(starts)


def follows(counts: np.ndarray, weights: np.ndarray) -> bool:
    """Pearson's chi-square test that ``counts`` were drawn in proportion to ``weights``:
    the statistic under its 99.99th percentile (normal approximation), every count of
    weight 0 being 0."""
    if counts[weights == 0].any():
        return False
    expected = weights[weights > 0] / weights.sum() * counts.sum()
    statistic = float(((counts[weights > 0] - expected) ** 2 / expected).sum())
    df = expected.size - 1
    return statistic < df + 3.72 * np.sqrt(2 * df)


def test_weighted_draws_follow_the_window_means(tmp_path: Path) -> None:
    weights = weight_map()
    plan = map_plan(40_000, weights=save(tmp_path / "w.zarr", weights))
    counts, expected = drawn_counts(plan), window_weights(weights)
    assert (expected == 0).any() and (expected > 0).sum() > 100
    assert follows(counts, expected)


def test_the_check_catches_draws_from_another_map(tmp_path: Path) -> None:
    weights = weight_map()
    plan = map_plan(40_000, weights=save(tmp_path / "w.zarr", weights))
    counts, expected = drawn_counts(plan), window_weights(weights)
    other = expected.copy()
    other[:, :3] *= 1.3  # a few rows of starts 30 % heavier
    assert not follows(counts, other)
    assert not follows(counts, (expected > 0).astype(float))  # uniform over the same windows


def test_weights_shaped_as_the_starts_weigh_each_start(tmp_path: Path) -> None:
    starts = np.random.default_rng(1).random((3, 10, 8)) ** 3
    starts[1] = 0.0
    plan = map_plan(40_000, weights=save(tmp_path / "w.zarr", starts))
    counts = drawn_counts(plan)
    assert not counts[1].any()
    assert follows(counts, starts)


def test_zero_weight_windows_are_never_drawn(tmp_path: Path) -> None:
    # A single positive voxel: only the windows holding it have weight, however the
    # running sums round.
    weights = np.zeros(VOLUME)
    weights[2, 6, 5] = 1e-12
    weights[0, 0, 0] = 1e6
    plan = map_plan(5000, weights=save(tmp_path / "w.zarr", weights))
    counts = drawn_counts(plan)
    assert (counts[window_weights(weights) == 0] == 0).all()
    assert counts[0, 0, 0] > 4900


def test_a_window_of_another_map_is_drawn_again_only_with_it(tmp_path: Path) -> None:
    path = save(tmp_path / "w.zarr", weight_map())
    drawn = map_plan(64, weights=path)
    assert drawn.plan.map_fingerprint
    first = drawn.recipes(0, 64)
    again = map_plan(64, weights=path).recipes(10, 20)
    assert np.array_equal(again.rows, first.rows[10:20])  # a pure function of (seed, i)
    save(tmp_path / "w.zarr", weight_map() * 2)
    with pytest.raises(UserError, match="not the map these cubes were drawn with"):
        read_table(drawn.plan, fresh=True)  # as a store records it: with the digest


# -- labels ------------------------------------------------------------------------------


def label_volume() -> np.ndarray:
    labels = np.zeros(VOLUME, dtype=np.int32)
    labels[:, :4, :] = 1
    labels[1:, 8:, 6:] = 2  # a small class, in one corner
    return labels


def window_classes(labels: np.ndarray, got: Any, fraction: float) -> np.ndarray:
    """(n, classes) whether each drawn window holds ``fraction`` of each class."""
    windows = np.stack(
        [
            labels[f[0] : f[-1] + 1, r : r + WINDOW[1], c[0] : c[-1] + 1]
            for f, r, c in zip(got.frames, got.rows, got.columns, strict=True)
        ]
    )
    return np.stack([(windows == k).mean(axis=(1, 2, 3)) >= fraction for k in range(3)], axis=1)


def test_label_ratios_hold_over_the_run(tmp_path: Path) -> None:
    labels = label_volume()
    ratios = ((0, 1.0), (1, 1.0), (2, 2.0))
    plan = map_plan(
        4000, labels=save(tmp_path / "l.zarr", labels), label_ratios=ratios, label_fraction=0.6
    )
    meets = window_classes(labels, plan.recipes(0, plan.plan.n_cubes), 0.6)
    # Above half, a window counts for one class at most; every drawn window counts.
    assert (meets.sum(axis=1) == 1).all()
    shares = meets.mean(axis=0)
    # Stated tolerance: within 1 % of the run, for the run and for its first tenth.
    assert np.allclose(shares, [0.25, 0.25, 0.5], atol=0.01)
    assert np.allclose(meets[:400].mean(axis=0), [0.25, 0.25, 0.5], atol=0.01)


def test_a_class_no_window_can_meet_is_refused(tmp_path: Path) -> None:
    labels = label_volume()
    labels[2:] = 0  # class 2 in one frame only: at most half of a window 2 frames deep
    path = save(tmp_path / "l.zarr", labels)
    with pytest.raises(UserError, match=r"class 2 cannot be met: .* \(at most 0.5 of a window"):
        map_plan(10, labels=path, label_ratios=((0, 1.0), (2, 1.0)), label_fraction=0.6)
    assert map_plan(10, labels=path, label_ratios=((0, 1.0), (2, 1.0)), label_fraction=0.5)


# -- through the pipeline ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["weights", "labels"])
def test_map_windows_are_the_same_on_every_executor_and_streamed(
    tmp_path: Path, kind: str, executor_settings: dict[str, Any]
) -> None:
    reference = map_config(tmp_path / "ref", kind)
    jobs.run(reference, show_progress=False)
    config = map_config(
        tmp_path / "ref",
        kind,
        out=str(tmp_path / "other.zarr"),
        synthetic=False,
        **executor_settings,
    )
    jobs.sample(config, show_progress=False)
    assert_stores_identical(reference.out, config.out)
    assert np.array_equal(open_stream(config)[:], open_cubes(reference.out)[:])
    rows = open_cubes(reference.out).recipes(slice(None)).rows
    if kind == "weights":
        assert (rows <= 9 - 4 + 4).all()  # only windows that reach the weighted rows


@pytest.mark.parametrize("kind", ["weights", "labels"])
def test_a_resumed_map_store_is_the_same_and_a_new_map_is_refused(
    tmp_path: Path, kind: str
) -> None:
    config = map_config(tmp_path, kind)
    jobs.run(config, show_progress=False)
    whole = str(tmp_path / "whole.zarr")
    jobs.sample(config.model_copy(update={"out": whole}), show_progress=False)
    group = zarr.open_group(config.out, mode="r+")
    attrs: dict[str, Any] = dict(group.attrs["daskcubes"])  # type: ignore[arg-type]
    attrs.update(complete=None, progress={"shards": [[0, 2]], "recipes": []})
    group.attrs["daskcubes"] = attrs
    zarr.open_array(config.out, path="cubes", mode="r+")[12:] = 0.0
    jobs.sample(config, mode="resume", show_progress=False)
    assert_stores_identical(whole, config.out)
    # The map rewritten with other values: verify and resume both notice.
    path = config.weights or config.labels
    assert path is not None
    old = np.asarray(zarr.open_array(path, mode="r")[:])
    save(Path(path), old[:, :, ::-1] if kind == "labels" else old * 3)
    assert main(["verify", config.out, "--sample", "4"]) == 1
    group.attrs["daskcubes"] = {**attrs, "complete": None}
    with pytest.raises(UserError, match="was started with map_fingerprint="):
        jobs.sample(config, mode="resume", show_progress=False)


def test_info_and_verify_follow_the_map(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = map_config(tmp_path, "labels")
    jobs.run(config, show_progress=False)
    capsys.readouterr()
    assert main(["info", config.out]) == 0
    out = capsys.readouterr().out
    assert f"labels {config.labels}" in out and "label_fraction 0.75" in out
    status = main(["verify", config.out, "--against", config.frames_store, "--sample", "40"])
    assert status == 0, capsys.readouterr().out


# -- bad maps ----------------------------------------------------------------------------


def bad_map(root: Path, case: str) -> tuple[list[str], str]:
    """Options for a run over 4 x 10 x 12 frames with a bad map, and the line expected."""
    shape, windows = (4, 10, 12), ["--frame-mode", "window", "--depth", "2"]
    windows += ["--row-mode", "window", "--column-mode", "window"]
    weights = np.ones(shape)
    labels = np.zeros(shape, dtype=np.int32)
    labels[:, :2, :2] = 1
    ratios = ["--label-ratios", '{"0": 1, "1": 1}']
    if case == "wrong shape":
        path = save(root / "m.zarr", np.ones((4, 10, 11)))
        return [*windows, "--weights", path], "shape (4, 10, 11); expected the frames' shape"
    if case == "NaN":
        weights[1, 2, 3] = np.nan
        path = save(root / "m.zarr", weights)
        return [*windows, "--weights", path], "value nan at frame 1, row 2, column 3; expected"
    if case == "negative":
        weights[2, 0, 1] = -1
        path = save(root / "m.zarr", weights)
        return [*windows, "--weights", path], "value -1.0 at frame 2, row 0, column 1"
    if case == "all zero":
        path = save(root / "m.zarr", 0 * weights)
        return [*windows, "--weights", path], "every window has weight 0"
    if case == "unknown class":
        path = save(root / "m.zarr", labels)
        extra = ["--labels", path, "--label-ratios", '{"0": 1, "7": 1}']
        return [*windows, *extra], "label_ratios: class 7 does not occur in labels"
    if case == "unmeetable class":
        path = save(root / "m.zarr", labels)
        return [*windows, "--labels", path, *ratios], "label_ratios: class 1 cannot be met"
    if case == "labels of the wrong shape":
        path = save(root / "m.zarr", labels[:3])
        return [*windows, "--labels", path, *ratios], "shape (3, 10, 12); expected the frames'"
    if case == "no label ratios":
        path = save(root / "m.zarr", labels)
        return [*windows, "--labels", path], "labels needs label_ratios"
    if case == "random columns":
        path = save(root / "m.zarr", weights)
        extra = ["--column-mode", "random", "--weights", path]
        return [*windows, *extra], "column_mode must be window (it is random)"
    path = str(root / "missing.zarr")
    return [*windows, "--weights", path], "weights: "


@pytest.mark.parametrize(
    "case",
    [
        "wrong shape",
        "NaN",
        "negative",
        "all zero",
        "unknown class",
        "unmeetable class",
        "labels of the wrong shape",
        "no label ratios",
        "random columns",
        "missing",
    ],
)
def test_bad_maps_give_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    extra, message = bad_map(tmp_path, case)
    status = main([*small_args(tmp_path), *extra])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert message in err, err
    assert len(err.splitlines()) == 1 and err.startswith("daskcubes: error:")
    assert not (tmp_path / "cubes.zarr").exists()
