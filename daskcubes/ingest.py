"""Frame files → a chunked dask array → the zarr frames store.

Each frame is read by its own task and written chunk by chunk, so memory stays
bounded by the frames in flight (about one per worker thread), never by their number.
"""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
from dask.base import tokenize

from daskcubes.frames import FrameFile, FrameSpec, check_frames_agree, inspect_frame, read_frame
from daskcubes.storage import Storage
from daskcubes.store import FRAME_ROW_CHUNK, WriteMode, create_frames_store


def inspect_frames(paths: list[str], storage: Storage) -> tuple[list[FrameFile], FrameSpec]:
    """Metadata of every frame file, checked to agree, before any output is written."""
    files = [inspect_frame(path, storage) for path in paths]
    return files, check_frames_agree(files)


def frames_array(
    files: list[FrameFile], spec: FrameSpec, storage: Storage, allow_nonfinite: bool
) -> da.Array:
    """A lazy ``(n_frames, n_rows, n_cols)`` dask array, one task per frame file."""
    token = tokenize([f.fingerprint for f in files], spec, allow_nonfinite)
    layers = [
        da.from_delayed(
            dask.delayed(read_frame, pure=True)(
                f.path, spec, storage, allow_nonfinite, dask_key_name=(f"ingest-{token}", i)
            ),
            shape=(spec.n_rows, spec.n_cols),
            dtype=spec.dtype,
            name=f"frame-{token}-{i}",
        )
        for i, f in enumerate(files)
    ]
    return da.stack(layers).rechunk((1, min(FRAME_ROW_CHUNK, spec.n_rows), spec.n_cols))


def ingest_graph(
    files: list[FrameFile],
    spec: FrameSpec,
    store_path: str,
    allow_nonfinite: bool,
    mode: WriteMode,
    storage: Storage,
) -> tuple[da.Array, dict[str, Any]]:
    """Create (or reopen, to resume) the frames store; return the lazy write of every frame
    into it, and the store's attributes.

    Each chunk of the store is written by exactly one task, so no lock is needed.
    """
    target, attrs = create_frames_store(store_path, files, spec, mode, storage)
    frames = frames_array(files, spec, storage, allow_nonfinite)
    return da.store(frames, target, lock=False, compute=False), attrs  # type: ignore[arg-type]
