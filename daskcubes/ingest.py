"""Frame files → the zarr frames store, one task per frame.

Each task reads one frame file and writes it whole into its slot of the frames store
(every chunk of a frame belongs to that frame's task, so no lock is needed). Memory stays
bounded by the frames in flight (about one per worker thread), never by their number.
"""

from __future__ import annotations

from typing import Any

from dask.base import tokenize
from dask.typing import Key

from daskcubes.frames import FrameFile, FrameSpec, check_frames_agree, inspect_frame, read_frame
from daskcubes.progress import Work
from daskcubes.storage import Storage


def inspect_frames(paths: list[str], storage: Storage) -> tuple[list[FrameFile], FrameSpec]:
    """Metadata of every frame file, checked to agree, before any output is written."""
    files = [inspect_frame(path, storage) for path in paths]
    return files, check_frames_agree(files)


def write_frame(
    frame: FrameFile,
    index: int,
    spec: FrameSpec,
    store: str,
    allow_nonfinite: bool,
    storage: Storage,
) -> None:
    """Read one frame file and write it as frame ``index`` of the frames store ``store``."""
    values = read_frame(frame.path, spec, storage, allow_nonfinite)
    storage.open_array(store, "frames", mode="r+")[index] = values


def ingest_tasks(
    files: list[FrameFile],
    spec: FrameSpec,
    store: str,
    allow_nonfinite: bool,
    storage: Storage,
    done: set[int],
) -> Work:
    """One task per frame not in ``done``; each finishes its frame."""
    token = tokenize([f.fingerprint for f in files], spec, store, allow_nonfinite)
    graph: dict[Key, Any] = {}
    finishes: dict[Key, tuple[str, list[int]]] = {}
    for i, frame in enumerate(files):
        if i not in done:
            key = (f"ingest-{token}", i)
            graph[key] = (write_frame, frame, i, spec, store, allow_nonfinite, storage)
            finishes[key] = ("frames", [i])
    return Work(graph, finishes)
