"""The one-pass cut, compiled with numba (imported only by :mod:`daskcubes.core.kernels`,
and only when a cut first runs, so that numba loads where it is used).

The kernel loops over cube layers outside and, inside them, over the cubes of the batch
and their rows in the order the slab's layout favours (see :mod:`daskcubes.core.kernels`):
with source rows contiguous, rows outside and cubes inside, so that a source row read
once serves every cube of the batch from L1; with source columns' rows contiguous, cubes
outside and rows inside, so that a cube reads each of its columns' runs once. Either way
each output row is written once, whole, and the cubes come out C-ordered: one pass, where
numpy takes a fancy index into a temporary and a transposing copy. ``nogil`` lets the
threads of a worker cut at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba
import numpy as np
from numba.core.errors import NumbaError

if numba.config.DISABLE_JIT:  # type: ignore[attr-defined]  # Python loops: far slower than numpy
    raise ImportError("NUMBA_DISABLE_JIT is set")

#: Errors that mean a kernel did not compile for the arrays it was called with.
COMPILE_ERRORS = (NumbaError,)


def _jit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit(**options)``, caching the compiled code where a cache directory is
    writable (beside this module, or the user's cache) and compiling afresh elsewhere."""

    def compile_(function: Callable[..., Any]) -> Any:
        try:
            return numba.njit(cache=True, **options)(function)
        except RuntimeError:  # no writable cache directory
            return numba.njit(**options)(function)

    return compile_


@_jit(nogil=True, inline="always")
def _copy_row(src: np.ndarray, cols: np.ndarray, dst: np.ndarray) -> None:
    for c in range(cols.size):
        dst[c] = src[cols[c]]


@_jit(nogil=True)
def one_pass(
    slab: np.ndarray, frames: np.ndarray, rows: np.ndarray, columns: np.ndarray, out: np.ndarray
) -> None:
    """``out[i, f, r, c] = slab[frames[i, f], rows[i] + r, columns[i, c]]`` for every
    layer whose frame the slab holds (indices checked by the caller)."""
    n, depth, height, _ = out.shape
    n_frames = slab.shape[0]
    if slab.strides[2] == slab.itemsize:  # source rows contiguous: rows outside
        for f in range(depth):
            for r in range(height):
                for i in range(n):
                    frame = frames[i, f]
                    if 0 <= frame < n_frames:
                        _copy_row(slab[frame, rows[i] + r], columns[i], out[i, f, r])
    else:  # each source column's rows contiguous: cubes outside
        for f in range(depth):
            for i in range(n):
                frame = frames[i, f]
                if 0 <= frame < n_frames:
                    for r in range(height):
                        _copy_row(slab[frame, rows[i] + r], columns[i], out[i, f, r])
