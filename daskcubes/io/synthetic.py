"""Synthetic frames like the article's: uniform random floats rounded to 10 decimals."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from dask.base import tokenize
from dask.typing import Key

from daskcubes.errors import UserError
from daskcubes.io.frames import find_frame_files, inspect_frames
from daskcubes.io.layout import WriteMode
from daskcubes.io.progress import Work
from daskcubes.io.storage import Storage

DECIMALS = 10


@dataclass(frozen=True)
class SyntheticFrames:
    """``n_frames`` synthetic frames of ``n_rows`` x ``n_cols``, of the set ``seed``, as
    ``frame_format`` files in ``directory``."""

    directory: str
    frame_format: str
    n_frames: int
    n_rows: int
    n_cols: int
    seed: int


def synthetic_frame(seed: int, index: int, n_rows: int, n_cols: int) -> np.ndarray:
    """Frame ``index`` of the synthetic set ``seed``, shape ``(n_rows, n_cols)``."""
    # Entropy (seed, 1) keeps frame values independent of cube recipes, seeded by seed alone.
    rng = np.random.default_rng(np.random.SeedSequence((seed, 1), spawn_key=(index,)))
    return np.round(rng.random((n_rows, n_cols)), DECIMALS)


def frame_table(values: np.ndarray) -> pa.Table:
    """A frame as an arrow table with columns ``c0, c1, ...``."""
    return pa.table({f"c{j}": values[:, j] for j in range(values.shape[1])})


def write_synthetic_frame(
    directory: str, fmt: str, seed: int, index: int, n_rows: int, n_cols: int, storage: Storage
) -> str:
    """Write one synthetic frame file, whole or not at all, and return its URL."""
    table = frame_table(synthetic_frame(seed, index, n_rows, n_cols))
    buffer = io.BytesIO()
    if fmt == "parquet":
        pq.write_table(table, buffer, compression="snappy")
    else:
        pacsv.write_csv(table, buffer)
    url = synthetic_frame_path(directory, fmt, index)
    storage.write_whole(url, buffer.getvalue())
    return url


def synthetic_frame_path(directory: str, fmt: str, index: int) -> str:
    return f"{directory.rstrip('/')}/frame_{index}.{fmt}"


def prepare_frame_directory(directory: str, mode: WriteMode, storage: Storage) -> None:
    """Create ``directory`` for synthetic frames.

    A directory already holding frames is refused in mode ``new``, emptied in mode
    ``overwrite``, and kept in mode ``resume`` (its whole frames are not written again).
    """
    pattern = f"{directory.rstrip('/')}/frame_*"
    existing = [url for url in storage.list_files(pattern) if url.endswith((".parquet", ".csv"))]
    if existing and mode == "new":
        raise UserError(
            f"frames '{directory}': already holds {len(existing)} frame files; pass --resume "
            "to keep them, --overwrite to replace them, or --no-synthetic to use them as input"
        )
    if mode == "overwrite":
        for url in existing:
            storage.remove(url)
    try:
        storage.makedirs(directory)
    except OSError as exc:
        raise UserError(f"frames '{directory}': cannot create directory ({exc.strerror})") from None


def synthetic_frames_made(frames: SyntheticFrames, storage: Storage) -> set[int]:
    """The synthetic frames of ``frames`` whose files exist (each is written whole)."""
    fmt = frames.frame_format
    return {
        i
        for i in range(frames.n_frames)
        if storage.exists(synthetic_frame_path(frames.directory, fmt, i))
    }


def synthetic_tasks(frames: SyntheticFrames, storage: Storage, done: set[int]) -> Work:
    """One task per synthetic frame not yet made; each finishes ``("frames", [i])``."""
    token = tokenize(frames)
    keys = {i: (f"generate-{token}", i) for i in range(frames.n_frames) if i not in done}
    graph: dict[Key, Any] = {
        key: (
            write_synthetic_frame,
            frames.directory,
            frames.frame_format,
            frames.seed,
            i,
            frames.n_rows,
            frames.n_cols,
            storage,
        )
        for i, key in keys.items()
    }
    return Work(graph, {key: ("frames", [i]) for i, key in keys.items()})


def check_synthetic_frames(frames: SyntheticFrames, storage: Storage) -> int:
    """Bytes of the frame files in ``frames.directory``, once they are the frames this run
    makes; else (files left by another run, kept by ``--resume``) a :class:`UserError`."""
    files, spec = inspect_frames(find_frame_files(frames.directory, storage), storage)
    if (len(files), spec.n_rows, spec.n_cols) != (frames.n_frames, frames.n_rows, frames.n_cols):
        raise UserError(
            f"frames '{frames.directory}': holds {len(files)} frames of {spec.n_rows} x "
            f"{spec.n_cols}; this run makes {frames.n_frames} of {frames.n_rows} x "
            f"{frames.n_cols} (pass --overwrite to replace them)"
        )
    return sum(f.size for f in files)
