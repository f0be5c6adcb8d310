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

    Frame by frame, one ``take`` gathers the columns of every cube of the batch and one
    transposing copy puts them in place: two numpy calls per frame, so that threads spend
    their time in numpy (which releases the GIL) rather than in Python. Measured on 2
    cores with the article's shapes: 586 cubes/s on 2 threads, against 344 for one
    ``take`` per cube and frame.
    """
    n, depth, dim, _ = out.shape
    picked = np.empty((n * dim, dim), dtype=slab.dtype)
    wanted = columns.ravel()
    for f in range(depth):
        np.take(slab[f], wanted, axis=0, out=picked)
        out[:, f] = picked.reshape(n, dim, dim).transpose(0, 2, 1)
    return out
