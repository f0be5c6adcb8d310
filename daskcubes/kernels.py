"""Pure numpy: the source slab and the gather that turns recipes into cubes.

With the article's semantics a cube only touches the first ``dim`` rows of each frame,
so those rows form the *slab*. It is kept per frame as ``(n_cols, dim)``: each source
column is then one contiguous run of ``dim`` values, and gathering a cube's columns
reads whole runs instead of single elements strided across rows (measured about 4x
faster per thread than ``frames[:, :dim, cols]``).
"""

from __future__ import annotations

import numpy as np


def make_slab(first_rows: np.ndarray, dtype: np.dtype | str) -> np.ndarray:
    """The slab from ``frames[:, :dim, :]``.

    Parameters
    ----------
    first_rows : (depth, dim, n_cols) the first ``dim`` rows of every frame.
    dtype : dtype of the cubes; the slab is cast once so the gather never converts.

    Returns
    -------
    (depth, n_cols, dim) C-contiguous array: ``slab[f, c, r] == frames[f, r, c]``.
    """
    return np.ascontiguousarray(first_rows.transpose(0, 2, 1), dtype=dtype)


def gather_cubes(slab: np.ndarray, columns: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Cut cubes from the slab into ``out``.

    Parameters
    ----------
    slab : (depth, n_cols, dim) from :func:`make_slab`.
    columns : (n, dim) source columns of each cube.
    out : (n, depth, dim, dim) written in place: ``out[i, f, r, c] == slab[f, columns[i, c], r]``.

    Frame-major order keeps one frame of the slab in cache while every cube of the
    batch takes its columns from it.
    """
    n, depth, dim, _ = out.shape
    picked = np.empty((dim, dim), dtype=slab.dtype)
    for f in range(depth):
        frame = slab[f]
        for i in range(n):
            np.take(frame, columns[i], axis=0, out=picked)
            out[i, f] = picked.T
    return out
