"""The kernels: the compiled one-pass cut equals the numpy reference, which equals the
definition, for every cube definition, dtype and slab layout, masked layers included."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daskcubes.core import draws, kernels
from daskcubes.core.definition import ColumnMode, Definition, FrameMode, RowMode
from daskcubes.core.kernels import empty_slab, gather_cubes, gather_reference
from daskcubes.core.plan import CubePlan, Recipes, recipes_of
from daskcubes.testing import expected_cubes

FRAME_MODES: list[FrameMode] = ["all", "window", "subset"]
ROW_MODES: list[RowMode] = ["first", "window"]
COLUMN_MODES: list[tuple[ColumnMode, bool]] = [
    ("random", False),
    ("random", True),
    ("window", False),
]
DEFINITIONS = [
    Definition(frame, row, column, ordered)
    for frame in FRAME_MODES
    for row in ROW_MODES
    for column, ordered in COLUMN_MODES
]


def slab_of(frames: np.ndarray, dtype: str, rows_contiguous: bool) -> np.ndarray:
    n_frames, n_rows, n_cols = frames.shape
    slab = empty_slab(n_frames, n_rows, n_cols, dtype, rows_contiguous)
    slab[...] = frames
    return slab


@st.composite
def cuts(draw: st.DrawFn) -> tuple[np.ndarray, Recipes, int]:
    """Frames, the recipes of some cubes of any definition, and the cubes' height."""
    n_frames, n_rows, n_cols = (draw(st.integers(1, 7)) for _ in range(3))
    definition = draw(st.sampled_from(DEFINITIONS))
    depth = n_frames if definition.frame_mode == "all" else draw(st.integers(1, n_frames))
    plan = CubePlan(
        n_cubes=50,
        depth=depth,
        height=draw(st.integers(1, n_rows)),
        width=draw(st.integers(1, n_cols)),
        n_frames=n_frames,
        n_rows=n_rows,
        n_cols=n_cols,
        seed=draw(st.integers(0, 2**32)),
        task_size=1,
        shard_size=1,
        definition=definition,
    )
    cubes = draw(st.lists(st.integers(0, 49), min_size=1, max_size=9))
    frames = np.random.default_rng(len(cubes)).random((n_frames, n_rows, n_cols))
    return frames, recipes_of(plan, cubes), plan.height


@settings(max_examples=300, deadline=None)
@given(cuts(), st.sampled_from(["float64", "float32"]), st.booleans(), st.integers(-1, 7))
def test_the_compiled_cut_equals_the_reference_and_the_definition(
    cut: tuple[np.ndarray, Recipes, int], dtype: str, rows_contiguous: bool, held: int
) -> None:
    frames, recipe, height = cut
    # A block of frames (frames held .. held + 2) as the out-of-core bands cut them: the
    # layers of other frames are -1 and must stay as they are.
    first = max(held, 0)
    block = frames[first : first + 3] if held >= 0 else frames
    local = np.where(
        (recipe.frames >= first) & (recipe.frames < first + len(block)), recipe.frames - first, -1
    )
    slab = slab_of(block, dtype, rows_contiguous)
    shape = (len(recipe.rows), recipe.frames.shape[1], height, recipe.columns.shape[1])
    fast, reference = np.full(shape, -7, dtype), np.full(shape, -7, dtype)
    gather_cubes(slab, local, recipe.rows, recipe.columns, fast)
    gather_reference(slab, local, recipe.rows, recipe.columns, reference)
    assert fast.tobytes() == reference.tobytes()
    inside = local >= 0
    expected = expected_cubes(frames, recipe, height).astype(dtype)
    assert np.array_equal(reference[inside], expected[inside])
    assert (reference[~inside] == -7).all()


@pytest.mark.parametrize("definition", DEFINITIONS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("rows_contiguous", [True, False])
def test_batches_written_with_streaming_stores_equal_the_reference(
    definition: Definition, dtype: str, rows_contiguous: bool
) -> None:
    from daskcubes.core.compiled import STREAMING_BYTES

    n_frames, n_rows, n_cols = 6, 40, 300
    depth = n_frames if definition.frame_mode == "all" else 4
    plan = CubePlan(
        n_cubes=96,
        depth=depth,
        height=30,
        width=100,
        n_frames=n_frames,
        n_rows=n_rows,
        n_cols=n_cols,
        seed=3,
        task_size=96,
        shard_size=96,
        definition=definition,
    )
    recipe = recipes_of(plan, range(96))
    frames = np.random.default_rng(0).random((n_frames, n_rows, n_cols))
    local = np.where(recipe.frames < 5, recipe.frames, -1)  # the last frame's layers masked
    slab = slab_of(frames[:5], dtype, rows_contiguous)
    shape = (96, depth, plan.height, plan.width)
    fast, reference = np.full(shape, -7, dtype), np.full(shape, -7, dtype)
    assert fast.nbytes >= STREAMING_BYTES
    gather_cubes(slab, local, recipe.rows, recipe.columns, fast)
    gather_reference(slab, local, recipe.rows, recipe.columns, reference)
    assert fast.tobytes() == reference.tobytes()


def test_bad_indices_are_refused_before_the_compiled_kernel_runs() -> None:
    slab = slab_of(np.zeros((2, 4, 5)), "float64", True)
    out = np.empty((1, 2, 2, 2))
    frames, rows = np.array([[0, 1]]), np.array([0])
    with pytest.raises(IndexError, match="column"):
        gather_cubes(slab, frames, rows, np.array([[0, 5]]), out)
    with pytest.raises(IndexError, match="rows"):
        gather_cubes(slab, frames, np.array([3]), np.array([[0, 1]]), out)
    # Rows of a cube whose layers the slab does not hold are not read, so not checked.
    gather_cubes(slab, np.array([[-1, 2]]), np.array([3]), np.array([[0, 1]]), out)


def test_a_kernel_that_does_not_compile_falls_back_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class NoCompile(Exception):
        pass

    def failing(*args: object) -> None:
        raise NoCompile("cannot compile\nmore detail")

    monkeypatch.setattr(
        kernels,
        "_compiled",
        {"kernel": failing, "errors": (NoCompile,), "outside": kernels.recipes_outside},
    )
    rng = np.random.default_rng(0)
    frames = rng.random((3, 4, 5))
    recipe = Recipes(np.array([[0, 1, 2]]), np.array([1]), np.array([[4, 0]]))
    out = np.empty((1, 3, 2, 2))
    with pytest.warns(kernels.CompiledCutUnavailable, match="does not compile: cannot compile"):
        gather_cubes(
            slab_of(frames, "float64", False), recipe.frames, recipe.rows, recipe.columns, out
        )
    assert np.array_equal(out, expected_cubes(frames, recipe, 2))
    gather_cubes(
        slab_of(frames, "float64", True), recipe.frames, recipe.rows, recipe.columns, out
    )  # no second warning
    assert np.array_equal(out, expected_cubes(frames, recipe, 2))


def test_without_numba_the_package_cuts_with_the_reference_and_says_so_once() -> None:
    script = textwrap.dedent(
        """
        import sys
        import warnings
        sys.modules["numba"] = None  # import numba raises ImportError
        import numpy as np
        from daskcubes.core.kernels import empty_slab, gather_cubes, gather_reference
        slab = empty_slab(3, 4, 5, "float32", True)
        slab[...] = np.arange(60).reshape(3, 4, 5)
        frames, rows, columns = np.array([[0, 1, 2]]), np.array([1]), np.array([[4, 0]])
        out, expected = np.empty((2, 1, 3, 2, 2), "float32")
        gather_reference(slab, frames, rows, columns, expected)
        for _ in range(3):
            gather_cubes(slab, frames, rows, columns, out)
        assert out.tobytes() == expected.tobytes()
        """
    )
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "CompiledCutUnavailable" in line]
    assert len(said) == 1, done.stderr
    assert "numba unavailable" in said[0]


def test_where_no_cache_directory_is_writable_the_kernel_still_compiles() -> None:
    script = textwrap.dedent(
        """
        import numba
        import numpy as np
        plain = numba.njit
        def njit(*args, cache=False, **options):
            if cache:  # what numba raises where no cache directory is writable
                raise RuntimeError("cannot cache function: no locator available")
            return plain(*args, **options)
        numba.njit = njit
        from daskcubes.core import draws, kernels
        slab = kernels.empty_slab(2, 3, 4, "float64", False)
        slab[...] = np.arange(24).reshape(2, 3, 4)
        out, expected = np.empty((2, 1, 2, 2, 2))
        recipe = (np.array([[1, 0]]), np.array([1]), np.array([[3, 1]]))
        kernels.gather_cubes(slab, *recipe, out)
        kernels.gather_reference(slab, *recipe, expected)
        assert out.tobytes() == expected.tobytes()
        assert kernels._compiled["kernel"] is not None
        """
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("cut", [gather_cubes, gather_reference])
@pytest.mark.parametrize(
    ("column", "row", "frame", "message"),
    [
        (20, 0, 0, "a column outside the slab's 20"),
        (-1, 0, 0, "a column outside the slab's 20"),
        (3, 9, 0, "a cube's rows outside the slab's 12"),
        (3, -1, 0, "a cube's rows outside the slab's 12"),
        (3, 9, -1, None),  # a layer the slab does not hold: left alone, its rows unchecked
    ],
)
def test_recipes_outside_the_slab_are_refused(
    cut: Any, column: int, row: int, frame: int, message: str | None
) -> None:
    slab = np.zeros((2, 12, 20))
    frames = np.array([[0, 1], [frame, frame]])
    rows = np.array([0, row])
    columns = np.array([[0, 1, 2], [3, 4, column]])
    out = np.full((2, 2, 4, 3), 7.0)
    if message is None:
        cut(slab, frames, rows, columns, out)
        assert (out[1] == 7.0).all()
        return
    with pytest.raises(IndexError, match=re.escape(message)):
        cut(slab, frames, rows, columns, out)


def test_draws_that_do_not_compile_fall_back_to_the_same_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = draws.cube_keys(3, draws.COLUMN_DRAWS, np.arange(40))
    expected = draws.first_distinct(keys, 50, 7)

    class NoCompile(Exception):
        pass

    def failing(*args: object) -> None:
        raise NoCompile("cannot compile\nmore detail")

    compiled = {**kernels._compiled, "draws": failing, "errors": (NoCompile,)}
    monkeypatch.setattr(kernels, "_compiled", compiled)
    with pytest.warns(kernels.CompiledCutUnavailable, match="does not compile: cannot compile"):
        assert np.array_equal(draws.first_distinct(keys, 50, 7), expected)
