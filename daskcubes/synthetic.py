"""Synthetic frames like the article's: uniform random floats rounded to 10 decimals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from daskcubes.errors import UserError

DECIMALS = 10


def synthetic_frame(seed: int, index: int, n_rows: int, n_cols: int) -> np.ndarray:
    """Frame ``index`` of the synthetic set ``seed``, shape ``(n_rows, n_cols)``."""
    # Entropy (seed, 1) keeps frame values independent of cube recipes, seeded by seed alone.
    rng = np.random.default_rng(np.random.SeedSequence((seed, 1), spawn_key=(index,)))
    return np.round(rng.random((n_rows, n_cols)), DECIMALS)


def frame_table(values: np.ndarray) -> pa.Table:
    """A frame as an arrow table with columns ``c0, c1, ...``."""
    return pa.table({f"c{j}": values[:, j] for j in range(values.shape[1])})


def write_synthetic_frame(
    directory: str, fmt: str, seed: int, index: int, n_rows: int, n_cols: int
) -> str:
    """Write one synthetic frame file and return its path."""
    table = frame_table(synthetic_frame(seed, index, n_rows, n_cols))
    path = str(Path(directory) / f"frame_{index}.{fmt}")
    if fmt == "parquet":
        pq.write_table(table, path, compression="snappy")
    else:
        pacsv.write_csv(table, path)
    return path


def prepare_frame_directory(directory: str, overwrite: bool) -> None:
    """Create ``directory`` for synthetic frames; refuse one holding frames unless told."""
    folder = Path(directory)
    existing = [p for p in folder.glob("frame_*") if p.suffix in (".parquet", ".csv")]
    if existing and not overwrite:
        raise UserError(
            f"frames '{directory}': already holds {len(existing)} frame files; "
            "pass --overwrite to replace them, or --no-synthetic to use them"
        )
    for path in existing:
        path.unlink()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"frames '{directory}': cannot create directory ({exc.strerror})") from None
