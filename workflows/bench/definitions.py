"""Cubes beyond the article's definition: random row windows, windows in every axis
against xbatcher, and sampling a frames store larger than the memory budget."""

from __future__ import annotations

import numpy as np
import zarr

import daskcubes
from bench.cut_rows import generation_rate
from bench.data import Setup, scratch_path, timed
from bench.probes import _peak_mib, in_fresh_process
from bench.rows import CUBES_PER_S, RATIO, Key, Row, importable

#: The frames store is this many times the budget of the out-of-core run.
OVER_BUDGET = 4
#: Cubes per task of the out-of-core run.
OUT_OF_CORE_TASK = 16


def window_shape(setup: Setup) -> dict[str, int]:
    """The windows compared with xbatcher: a tenth of the frames by ``dim`` x ``dim``."""
    return {"depth": max(1, setup.n_frames // 10), "height": setup.dim, "width": setup.dim}


def windows_rate(setup: Setup) -> float:
    """daskcubes generation of cubes that are windows in every axis."""
    return generation_rate(
        setup,
        setup.threads,
        setup.cubes,
        frame_mode="window",
        row_mode="window",
        column_mode="window",
        **window_shape(setup),
    )


def xbatcher_rate(setup: Setup) -> float:
    """Patches per second of ``xbatcher.BatchGenerator`` over ``xarray.open_zarr`` of the
    frames store, as its documentation shows (``input_dims`` the window shape), each
    patch loaded into numpy; checks that each patch holds its window of the frames store
    (a daskcubes cube of that window, by the cube's definition)."""
    import xarray as xr
    import xbatcher

    shape = window_shape(setup)
    frames = xr.open_zarr(setup.frames_store, consolidated=False)["frames"]
    dims = dict(zip(frames.dims, shape.values(), strict=True))
    generator = xbatcher.BatchGenerator(frames, input_dims=dims)
    count = min(setup.cubes, len(generator))
    patches: list[np.ndarray] = []

    def read() -> None:
        patches.clear()
        for k in range(count):
            patches.append(generator[k].to_numpy())

    seconds = timed(read)
    _check_same_windows(setup, generator, patches[: setup.few])
    return count / seconds


def _check_same_windows(setup: Setup, generator: object, patches: list[np.ndarray]) -> None:
    frames = zarr.open_array(setup.frames_store, path="frames", mode="r")
    selectors = generator._batch_selectors.selectors  # type: ignore[attr-defined]
    for k, patch in enumerate(patches):
        (window,) = selectors[k]
        cube = np.asarray(frames[tuple(window[d] for d in ("frame", "row", "col"))])
        if not np.array_equal(cube.astype(setup.dtype), patch.astype(setup.dtype)):
            raise AssertionError(f"xbatcher patch {k} differs from daskcubes' cube of {window}")


def out_of_core_in_process(setup: Setup, out: str) -> tuple[float, float, float]:
    """Peak MiB of this process before and after sampling row windows (which need whole
    frames) from the frames store with a budget of a quarter of it, on one thread; and
    MiB of the budget plus one batch."""
    store_bytes = setup.n_frames * setup.n_rows * setup.n_cols * 8
    budget = store_bytes // OVER_BUDGET
    config = setup.config(
        cubes=setup.few * 4,
        out=out,
        row_mode="window",
        max_slab_bytes=budget,
        workers=1,
        task_size=OUT_OF_CORE_TASK,
    )
    before = _peak_mib()
    daskcubes.sample(config, mode="overwrite", progress=False)
    batch = OUT_OF_CORE_TASK * setup.n_frames * setup.dim**2 * 8  # float64 cubes
    return before, _peak_mib(), (budget + batch) / 2**20


def measure(setup: Setup) -> list[Row]:
    """Rows of cube definitions beyond the article's (random row windows are a row of
    :mod:`bench.cut_rows`, beside the article's cubes)."""
    rows = [
        Row(
            Key.WINDOWS,
            windows_rate(setup),
            CUBES_PER_S,
            note="({depth} x {height} x {width})".format(**window_shape(setup)),
        ),
    ]
    if importable("xbatcher"):
        rows.append(Row(Key.XBATCHER, xbatcher_rate(setup), CUBES_PER_S))
    with scratch_path(setup, "out-of-core.zarr") as path:
        before, peak, bound = in_fresh_process(out_of_core_in_process, setup, str(path))
    note = f"(peak {peak - before:.0f} MiB over the interpreter's {before:.0f}; bound {bound:.0f})"
    rows.append(Row(Key.OUT_OF_CORE_PEAK, (peak - before) / bound, RATIO, note=note))
    return rows
