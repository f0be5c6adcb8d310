"""Grid windows: where the windows of a grid lie along one axis.

Pure integer arithmetic, no I/O. Along an axis of ``n`` positions, windows of ``size``
start every ``stride`` positions (consecutive windows overlap by ``size - stride``
positions when the stride is smaller than the window). The edge policy says what
happens where the last stride does not end at the edge:

- ``drop``: the positions past the last whole window are left out (xbatcher's
  ``BatchGenerator``);
- ``snap``: one more window is added that ends at the edge (TorchIO's ``GridSampler``),
  so every position lies in some window.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np

GridEdge = Literal["drop", "snap"]
GRID_EDGES: tuple[GridEdge, ...] = ("drop", "snap")


@lru_cache(maxsize=64)
def grid_starts(n: int, size: int, stride: int, edge: GridEdge) -> np.ndarray:
    """(k,) int32 increasing starts of the grid windows of ``size`` along ``n`` positions.

    The array is shared by every caller (cached): it is read-only.
    """
    if not 1 <= size <= n or stride < 1:
        raise ValueError(f"no grid of windows of {size} every {stride} along {n} positions")
    starts = np.arange(0, n - size + 1, stride, dtype=np.int32)
    if edge == "snap" and starts[-1] != n - size:
        starts = np.append(starts, np.int32(n - size))
    starts.flags.writeable = False
    return starts
