"""Window tables within a bound: blocks drawn by their totals, a window within the block
computed again from the map; the same windows, as likely as before."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from numpy.lib.stride_tricks import sliding_window_view

from daskcubes import jobs, open_cubes
from daskcubes.cli import main
from daskcubes.core import tables
from daskcubes.core.plan import RECIPE, WEIGHTS_RECIPE, CubePlan
from daskcubes.core.tables import MapSpec, WindowTable, starts_shape, summarise
from daskcubes.cut import job as job_module
from daskcubes.errors import UserError
from tests.helpers import map_config, save


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


class ArrayMap:
    """A map held in memory, read as the storage layer reads one (a fake reader)."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values
        self.reads = 0

    def read(self, frames: tuple[int, int], rows: tuple[int, int]) -> np.ndarray:
        self.reads += 1
        return self.values[frames[0] : frames[1], rows[0] : rows[1]].copy()


def table_of(
    spec: MapSpec,
    values: np.ndarray,
    window: tuple[int, int, int],
    modes: tuple[str, str, str] = ("window", "window", "window"),
) -> tuple[WindowTable, ArrayMap]:
    """The blocked table of a map (of the frames' shape) held in memory, summarised in the
    core alone."""
    shape = (values.shape[0], values.shape[1], values.shape[2])
    reader = ArrayMap(values)
    starts = starts_shape(modes, window, shape)
    digest = hashlib.blake2b(digest_size=16)
    table = summarise(spec, lambda frame: values[frame], reader, shape, starts, window, digest)
    return table, reader


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of a few starts, so that even small maps have many of them."""
    monkeypatch.setattr(tables, "BLOCK_STARTS", 16)


def uniforms(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Uniforms as the plan makes them (multiples of 2**-53), with the ends of [0, 1)."""
    rng = np.random.default_rng(seed)
    u = rng.integers(0, 2**53, size=n, dtype=np.uint64).astype(np.float64) * 2.0**-53
    u[:2] = 0.0, 1.0 - 2.0**-53
    return u, rng.random(n)


# -- labels: the same draws as the full table of every qualifying start ----------------------


def full_label_draw(
    labels: np.ndarray,
    window: tuple[int, int, int],
    ratios: tuple[tuple[int, float], ...],
    fraction: float,
    window_u: np.ndarray,
    class_u: np.ndarray,
) -> np.ndarray:
    """Today's draw, from the full table built directly: class by share, then the
    ``floor(u * n_k)``-th qualifying start of the class in C order."""
    need = max(1, int(np.ceil(fraction * np.prod(window))))
    flats = [
        np.flatnonzero(
            sliding_window_view(labels == label, window).sum(axis=(3, 4, 5)).reshape(-1) >= need
        )
        for label, _ in ratios
    ]
    shares = np.cumsum([share for _, share in ratios])
    groups = np.minimum(np.searchsorted(shares / shares[-1], class_u, side="right"), len(flats) - 1)
    out = np.empty(len(window_u), dtype=np.int64)
    for k, flat in enumerate(flats):
        mine = groups == k
        picked = (window_u[mine] * len(flat)).astype(np.int64)
        out[mine] = flat[np.minimum(picked, len(flat) - 1)]
    return out


def test_label_draws_are_those_of_the_full_table() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, size=(6, 14, 11)).astype(np.int16)
    labels[:, 9:, 7:] = 2
    window, ratios = (2, 3, 3), ((0, 1.0), (1, 2.0), (2, 1.5))
    spec = MapSpec("labels", "mem", ratios, 0.4)
    table, _ = table_of(spec, labels, window)
    assert table.n_blocks > 20 and table.rows == 1  # 16 starts a block: one row of 9
    window_u, class_u = uniforms(200_000)
    drawn = table.draw(window_u, class_u)
    assert np.array_equal(drawn, full_label_draw(labels, window, ratios, 0.4, window_u, class_u))
    # The earlier recipe's draw is the same draw.
    assert np.array_equal(table.legacy_draw(window_u, class_u), drawn)


def test_label_draws_match_with_every_frame_and_the_first_rows() -> None:
    labels = np.zeros((3, 9, 12), dtype=np.int32)
    labels[:, :4, 5:] = 1
    window, ratios = (3, 4, 3), ((0, 1.0), (1, 1.0))
    spec = MapSpec("labels", "mem", ratios, 0.5)
    table, _ = table_of(spec, labels, window, ("all", "first", "window"))
    assert table.starts_shape == (1, 1, 10)
    window_u, class_u = uniforms(20_000, seed=1)
    drawn = table.draw(window_u, class_u)
    expected = full_label_draw(labels[:, :4], window, ratios, 0.5, window_u, class_u)
    assert np.array_equal(drawn, expected)


# -- weights: every window as likely as its weight -------------------------------------------


def fixed_window_weights(weights: np.ndarray, window: tuple[int, int, int], scale: int) -> Any:
    """Each window's fixed-point weight, summed directly (Python ints, not as the table
    sums them)."""
    fixed = np.rint(np.ldexp(weights, scale))
    fixed = np.where(weights > 0, np.maximum(fixed, 1), 0).astype(np.int64).astype(object)
    return sliding_window_view(fixed, window).sum(axis=(3, 4, 5)).reshape(-1)


def test_each_window_is_drawn_exactly_within_its_share_of_the_total() -> None:
    rng = np.random.default_rng(4)
    weights = rng.random((5, 12, 10)) ** 4
    weights[:, 6:, 5:] = 0.0
    weights[2, 1, 1] = 1e-9  # a weight far below the others
    window = (2, 3, 3)
    table, _ = table_of(MapSpec("weights", "mem"), weights, window)
    exact = fixed_window_weights(weights, window, table.scale)
    total = sum(exact)
    assert total == table.counts[0][-1]
    # For each window of positive weight, the least uniform whose integer falls in its
    # interval of the running total draws it; the one just below draws the one before.
    before = np.concatenate([[0], np.cumsum(exact)[:-1]]).astype(object)
    positive = np.flatnonzero(exact > 0)
    lows = np.array([-(-int(before[i]) * 2**53 // total) for i in positive], dtype=np.float64)
    drawn = table.draw(lows * 2.0**-53, np.zeros(len(positive)))
    assert np.array_equal(drawn, positive)
    below = table.draw(np.maximum(lows[1:] - 1, 0) * 2.0**-53, np.zeros(len(positive) - 1))
    assert np.array_equal(below, positive[:-1])


def window_means(weights: np.ndarray, window: tuple[int, int, int]) -> np.ndarray:
    return sliding_window_view(weights, window).mean(axis=(3, 4, 5))


def test_weighted_draw_frequencies_follow_the_window_means() -> None:
    weights = np.random.default_rng(5).random((4, 12, 10))
    weights[:, 5:, 4:] = 0.0
    window = (2, 3, 3)
    table, _ = table_of(MapSpec("weights", "mem"), weights, window)
    window_u, class_u = uniforms(60_000, seed=2)
    counts = np.bincount(table.draw(window_u, class_u), minlength=3 * 10 * 8).reshape(3, 10, 8)
    expected = window_means(weights, window)
    assert (expected == 0).any()
    assert not counts[expected == 0].any()
    assert follows(counts, expected)
    heavier = expected.copy()
    heavier[:, :2] *= 1.3
    assert not follows(counts, heavier)  # the check can fail


def test_weights_per_start_with_every_frame() -> None:
    starts = np.random.default_rng(6).random((1, 1, 40)) ** 2
    starts[0, 0, ::3] = 0.0
    values = np.random.default_rng(6).random((4, 6, 42))
    window = (4, 6, 3)
    # Weights shaped as the starts of windows of every frame and the first rows.
    spec = MapSpec("weights", "mem")
    assert starts_shape(("all", "first", "window"), window, values.shape) == starts.shape
    table = summarise(
        spec,
        lambda frame: starts[frame],
        ArrayMap(starts),
        (1, 1, 40),
        (1, 1, 40),
        window,
        hashlib.blake2b(),
    )
    assert table.by_start
    window_u, class_u = uniforms(40_000, seed=3)
    counts = np.bincount(table.draw(window_u, class_u), minlength=40).reshape(starts.shape)
    assert follows(counts, starts)


def test_a_map_rewritten_since_it_was_read_is_refused() -> None:
    weights = np.random.default_rng(7).random((4, 8, 8))
    table, reader = table_of(MapSpec("weights", "mem"), weights, (2, 3, 3))
    reader.values = weights * 3 + 1
    tables._KEPT.clear()  # the frames kept from the first read, let go
    with pytest.raises(UserError, match="not the map these cubes were drawn with"):
        table.draw(*uniforms(10))


# -- the bound -----------------------------------------------------------------------------


def test_a_table_stays_within_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables, "BLOCK_STARTS", 8192)
    monkeypatch.setattr(tables, "CACHED_BYTES", 2 * 2**20)  # 5 frames of fixed weights
    weights = np.random.default_rng(8).random((12, 300, 300), dtype=np.float32)
    window = (4, 20, 20)
    table, reader = table_of(MapSpec("weights", "mem"), weights, window)
    positive = 9 * 281 * 281  # every start: 16 bytes each in the full table
    drawn = table.draw(*uniforms(3000))
    assert len(np.unique(drawn)) > 2900 and reader.reads > 8
    assert table.nbytes <= table.bound
    assert table.bound < 16 * positive / 4
    assert tables._KEPT.nbytes <= 2 * 2**20
    # Labels: the running counts and the kept blocks.
    labels = (weights > 0.5).astype(np.int8)
    spec = MapSpec("labels", "mem", ((0, 1.0), (1, 1.0)), 0.5)
    label_table, _ = table_of(spec, labels, window)
    label_table.draw(*uniforms(3000))
    qualifying = sum(int(count[-1]) for count in label_table.counts)  # 8 bytes each in full
    assert label_table.nbytes <= label_table.bound < 8 * qualifying
    # Both tables' frames and blocks within one budget: the process's.
    assert tables._KEPT.nbytes <= 2 * 2**20


# -- recipes: which stores draw which way ----------------------------------------------------


def recorded_recipe(path: str) -> str:
    return str(open_cubes(path).attrs["plan"]["recipe"])


def test_new_weight_stores_record_the_blocked_recipe_and_others_keep_theirs(
    tmp_path: Path,
) -> None:
    weights = map_config(tmp_path / "w", "weights")
    labels = map_config(tmp_path / "l", "labels")
    for config in (weights, labels):
        jobs.run(config, show_progress=False)
    assert recorded_recipe(weights.out) == WEIGHTS_RECIPE
    assert recorded_recipe(labels.out) == RECIPE
    plain = CubePlan(
        n_cubes=4, depth=3, height=2, width=2, n_frames=3, n_rows=4, n_cols=4, seed=1,
        task_size=4, shard_size=4,
    )  # fmt: skip
    assert plain.recipe == RECIPE


def test_a_store_of_the_earlier_weight_recipe_verifies_and_refuses_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = map_config(tmp_path, "weights")
    with monkeypatch.context() as patch:
        patch.setattr(
            job_module, "CubePlan", lambda **values: CubePlan(**{**values, "recipe": RECIPE})
        )
        jobs.run(config, show_progress=False)
    assert recorded_recipe(config.out) == RECIPE
    built: list[WindowTable] = []
    full_weights = tables._full_weights

    def spy(table: WindowTable) -> tuple[np.ndarray, np.ndarray]:
        built.append(table)
        return full_weights(table)

    monkeypatch.setattr(tables, "_full_weights", spy)
    capsys.readouterr()
    status = main(["verify", config.out, "--against", config.frames_store, "--sample", "40"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert built  # drawn again as it was drawn: from the full table
    # Its map rewritten: verify notices, as before.
    assert config.weights is not None
    old = np.asarray(zarr.open_array(config.weights, mode="r")[:])
    save(Path(config.weights), old * 3)
    assert main(["verify", config.out, "--sample", "4"]) == 1
    save(Path(config.weights), old)
    group = zarr.open_group(config.out, mode="r+")
    attrs: dict[str, Any] = dict(group.attrs["daskcubes"])  # type: ignore[arg-type]
    group.attrs["daskcubes"] = {**attrs, "complete": None}
    with pytest.raises(UserError, match=f"recipe function '{RECIPE}'; this version"):
        jobs.sample(config, mode="resume", show_progress=False)
