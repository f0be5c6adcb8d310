"""Pure numpy: the source slab and the gather that turns recipes into cubes.

A *slab* holds some rows of some frames, kept per frame as ``(n_cols, rows)``: each
source column is then one contiguous run of values, and cutting a cube's rows out of a
column copies one run instead of single elements strided across rows (measured about 4x
faster per thread than ``frames[:, :dim, cols]``).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def slab_layer(frame_rows: np.ndarray, out: np.ndarray) -> None:
    """Put ``(rows, n_cols)`` of one frame into ``out``, a ``(n_cols, rows)`` layer of a
    slab, cast to the slab's dtype (once, so that the gather never converts)."""
    out[...] = frame_rows.T


def gather_cubes(
    slab: np.ndarray,
    frames: np.ndarray,
    rows: np.ndarray,
    columns: np.ndarray,
    out: np.ndarray,
) -> np.ndarray:
    """Cut cubes, or the layers of them that ``slab`` holds, into ``out``.

    Parameters
    ----------
    slab : (n_frames, n_cols, n_rows) source values, ``slab[f, c, r]``.
    frames : (n, depth) frame of each cube layer, counted in the slab; a layer whose
        frame is outside ``0 .. n_frames - 1`` is left as it is.
    rows : (n,) first row of each cube, counted in the slab.
    columns : (n, width) source column of each cube column.
    out : (n, depth, height, width) written in place:
        ``out[i, f, r, c] == slab[frames[i, f], columns[i, c], rows[i] + r]``.

    Layer by layer, one fancy index over a sliding-window view of the slab picks the
    ``height`` rows of every column of every cube (each a contiguous run) and one
    transposing copy puts them in place: two numpy calls per layer, so that threads
    spend their time in numpy (which releases the GIL) rather than in Python.
    """
    depth, height = out.shape[1:3]
    windows = sliding_window_view(slab, height, axis=2)  # [f, c, start, r], no copy
    starts = rows[:, None]
    for f in range(depth):
        layer = frames[:, f]
        inside = (layer >= 0) & (layer < len(slab))
        if inside.all():
            out[:, f] = windows[layer[:, None], columns, starts].transpose(0, 2, 1)
        elif inside.any():
            some = np.flatnonzero(inside)
            picked = windows[layer[some, None], columns[some], starts[some]]
            out[some, f] = picked.transpose(0, 2, 1)
    return out
