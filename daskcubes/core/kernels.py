"""The cut's kernels: the recipes of some cubes and a source slab in, those cubes out.

A *slab* holds some rows of some frames: an ``(n_frames, n_rows, n_cols)`` array
``slab[f, r, c]`` in one of two memory layouts (:func:`empty_slab`). *Row-major*, as
frames are stored, keeps each source row contiguous: cubes that share source rows (all
frames and the first rows, or column windows) read each row once for every cube of a
batch. *Column-major* keeps each source column's rows contiguous, per frame: a cube of
random columns in a window of rows reads one contiguous run per column, where a source
row would be read whole (8 KB) for the few values it gives.

:func:`gather_reference` is the definition, in numpy; :func:`gather_cubes` runs the
compiled one-pass kernel (:mod:`daskcubes.core.compiled`) where numba is available and
compiles, and the reference otherwise. Both give the same bytes, whatever the layout.

numba is a dependency, yet the package still works where it is missing, is turned off
(``NUMBA_DISABLE_JIT``) or does not compile (an unsupported CPU): the cut falls back to
the reference, several times slower, and says so once per process with a
:class:`CompiledCutUnavailable` warning.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np


class CompiledCutUnavailable(RuntimeWarning):
    """The compiled cut is unavailable here: cubes are cut by the numpy reference."""


_lock = threading.Lock()
#: ``kernel``: the compiled kernel, or None once it proved unavailable; ``errors``: the
#: exceptions that mean it did not compile.
_compiled: dict[str, Any] = {}


def _compiled_kernel() -> Callable[..., None] | None:
    """The compiled kernel, imported on first use; None where it is unavailable."""
    if "kernel" not in _compiled:
        try:
            from daskcubes.core import compiled
        except ImportError as exc:
            compiled_cut_unavailable(f"numba unavailable: {exc}")
        else:
            with _lock:
                _compiled.setdefault("errors", compiled.COMPILE_ERRORS)
                _compiled.setdefault("kernel", compiled.one_pass)
                _compiled.setdefault("draws", compiled.first_distinct)
                _compiled.setdefault("outside", compiled.recipes_outside)
    kernel: Callable[..., None] | None = _compiled["kernel"]
    return kernel


def compiled_draws(keys: np.ndarray, n: int, out: np.ndarray) -> bool:
    """Fill ``out`` with the compiled draws (:func:`daskcubes.core.compiled.first_distinct`)
    of uint64 ``keys`` below ``n``; False where they are unavailable, as the compiled cut
    is (the caller then draws in numpy, the same values)."""
    if _compiled_kernel() is None:
        return False
    try:
        _compiled["draws"](keys, n, out, np.zeros(n, dtype=bool))
    except _compiled["errors"] as exc:  # the first call compiles
        compiled_cut_unavailable(f"it does not compile: {str(exc).splitlines()[0]}")
        return False
    return True


def compiled_cut_unavailable(reason: object) -> None:
    """Cut with the numpy reference from now on in this process, and say so once."""
    with _lock:
        said = _compiled.get("kernel", False) is None
        _compiled["kernel"] = None
    if not said:
        warnings.warn(
            f"daskcubes: the compiled cut is unavailable ({reason}); cubes are cut by the "
            "numpy reference, several times slower",
            CompiledCutUnavailable,
            stacklevel=2,
        )


def empty_slab(
    n_frames: int, n_rows: int, n_cols: int, dtype: str, rows_contiguous: bool
) -> np.ndarray:
    """An uninitialised ``(n_frames, n_rows, n_cols)`` slab, its source rows contiguous
    (``rows_contiguous``) or its source columns' rows contiguous, frame by frame."""
    if rows_contiguous:
        return np.empty((n_frames, n_rows, n_cols), dtype=dtype)
    return np.empty((n_frames, n_cols, n_rows), dtype=dtype).transpose(0, 2, 1)


def check_recipes(
    slab: np.ndarray,
    frames: np.ndarray,
    rows: np.ndarray,
    columns: np.ndarray,
    out: np.ndarray,
    outside: Callable[..., int],
) -> None:
    """Raise ``IndexError`` unless every layer the slab holds lies inside it: the compiled
    kernel does not check its indices (``outside`` does: :mod:`daskcubes.core.compiled`)."""
    n, depth, height, width = out.shape
    if frames.shape != (n, depth) or rows.shape != (n,) or columns.shape != (n, width):
        raise IndexError("recipes and output disagree in shape")
    _, n_rows, n_cols = slab.shape
    found = outside(slab.shape, frames, rows, columns, height)
    if found == 1:
        raise IndexError(f"a column outside the slab's {n_cols}")
    if found == 2:
        raise IndexError(f"a cube's rows outside the slab's {n_rows}")


def recipes_outside(
    shape: tuple[int, int, int],
    frames: np.ndarray,
    rows: np.ndarray,
    columns: np.ndarray,
    height: int,
) -> int:
    """What :func:`daskcubes.core.compiled.recipes_outside` says, in numpy: 0 if every
    layer a slab of ``shape`` holds lies inside it, 1 for a column outside it, 2 for a
    cube's rows outside it."""
    n_frames, n_rows, n_cols = shape
    if columns.size and (columns.min() < 0 or columns.max() >= n_cols):
        return 1
    used = rows[((frames >= 0) & (frames < n_frames)).any(axis=1)]
    if used.size and (used.min() < 0 or used.max() + height > n_rows):
        return 2
    return 0


def gather_reference(
    slab: np.ndarray,
    frames: np.ndarray,
    rows: np.ndarray,
    columns: np.ndarray,
    out: np.ndarray,
) -> np.ndarray:
    """Cut cubes, or the layers of them that ``slab`` holds, into ``out``: the definition.

    Parameters
    ----------
    slab : (n_frames, n_rows, n_cols) source values, ``slab[f, r, c]``, any layout.
    frames : (n, depth) frame of each cube layer, counted in the slab; a layer whose
        frame is outside ``0 .. n_frames - 1`` is left as it is.
    rows : (n,) first row of each cube, counted in the slab.
    columns : (n, width) source column of each cube column.
    out : (n, depth, height, width) written in place:
        ``out[i, f, r, c] == slab[frames[i, f], rows[i] + r, columns[i, c]]``.
    """
    check_recipes(slab, frames, rows, columns, out, recipes_outside)
    height = out.shape[2]
    cube_rows = rows[:, None] + np.arange(height)  # (n, height)
    for f in range(out.shape[1]):
        layer = frames[:, f]
        some = np.flatnonzero((layer >= 0) & (layer < len(slab)))
        out[some, f] = slab[layer[some, None, None], cube_rows[some, :, None], columns[some, None]]
    return out


def gather_cubes(
    slab: np.ndarray,
    frames: np.ndarray,
    rows: np.ndarray,
    columns: np.ndarray,
    out: np.ndarray,
) -> np.ndarray:
    """What :func:`gather_reference` does, in one pass where numba is available: each
    output row is written once, whole (see :mod:`daskcubes.core.compiled`)."""
    kernel = _compiled_kernel()
    if kernel is None:
        return gather_reference(slab, frames, rows, columns, out)
    frames, rows, columns = (
        np.ascontiguousarray(a, dtype=np.intp) for a in (frames, rows, columns)
    )
    try:
        check_recipes(slab, frames, rows, columns, out, _compiled["outside"])
        kernel(slab, frames, rows, columns, out)
    except _compiled["errors"] as exc:  # the first call for some arrays compiles for them
        compiled_cut_unavailable(f"it does not compile: {str(exc).splitlines()[0]}")
        return gather_reference(slab, frames, rows, columns, out)
    return out


def compile_kernel(dtype: str, rows_contiguous: bool) -> None:
    """Compile the kernel now for slabs of ``dtype`` and layout (a cut of one value), so
    that a worker's first task does not pay for it."""
    slab = empty_slab(2, 2, 2, dtype, rows_contiguous)  # 2s: a layout no shape hides
    slab[...] = 0
    zero = np.zeros((1, 1), dtype=np.intp)
    gather_cubes(slab, zero, zero[0], zero, np.empty((1, 1, 1, 1), dtype=dtype))
