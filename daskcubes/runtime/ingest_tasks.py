"""Frames → the zarr frames store, one write task per frame.

The frames come as a :class:`~daskcubes.io.sources.FrameSource`: a dask array with one chunk
per frame (read from a frame file, or taken from an array). Each write task takes one
chunk and writes it whole into its slot of the frames store (every chunk of the store
belongs to one frame's task, so no lock is needed). Memory stays bounded by the frames in
flight (about one per worker thread), never by their number.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from dask.base import tokenize
from dask.typing import Key

from daskcubes.io.progress import Finishes, Work
from daskcubes.io.sources import FrameSource
from daskcubes.io.storage import Storage


def write_frame(values: np.ndarray, index: int, store: str, storage: Storage) -> None:
    """Write ``values`` (one chunk of a source: ``(1, n_rows, n_cols)``) as frame ``index``."""
    storage.open_array(store, "frames", mode="r+")[index] = values[0]


def ingest_tasks(source: FrameSource, store: str, storage: Storage, done: set[int]) -> Work:
    """The source's tasks and one write task per frame not in ``done``; each write task
    finishes its frame. Culling leaves out the reads of finished frames."""
    array = source.array
    token = tokenize(source.fingerprint, array.name, store)
    graph: dict[Key, Any] = dict(array.__dask_graph__())
    finishes: Finishes = {}
    for i in range(source.shape[0]):
        if i not in done:
            key = (f"ingest-{token}", i)
            graph[key] = (write_frame, (array.name, i, 0, 0), i, store, storage)
            finishes[key] = ("frames", [i])
    return Work(graph, finishes)
