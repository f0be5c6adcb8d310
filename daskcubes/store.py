"""The zarr stores: layout, provenance attributes, and the completion record.

Frames store: a zarr v3 group with one array ``frames`` (n_frames, n_rows, n_cols).
Cube store: a zarr v3 group with ``cubes`` (n_cubes, depth, dim, dim) and the recipe
arrays ``columns`` (n_cubes, dim), ``rows`` (n_cubes,), ``frames`` (n_cubes, depth).

A missing zarr chunk reads back as the fill value, so chunk files prove nothing: a
store is *complete* only once its group attribute ``daskcubes.complete`` is set, which
happens after every write has finished.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.codecs
from zarr.errors import GroupNotFoundError

from daskcubes.errors import UserError
from daskcubes.frames import FrameFile, FrameSpec
from daskcubes.plan import CubePlan

ATTRS = "daskcubes"
#: Rows per chunk of the frames store: a cube reads only the first ``dim`` rows of each
#: frame, so loading them must not read whole frames.
FRAME_ROW_CHUNK = 128


def versions() -> dict[str, str]:
    import dask
    import pyarrow

    from daskcubes import __version__

    return {
        "daskcubes": __version__,
        "dask": dask.__version__,
        "zarr": zarr.__version__,
        "numpy": np.__version__,
        "pyarrow": pyarrow.__version__,
    }


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _prepare_path(path: str, what: str, overwrite: bool) -> None:
    """Refuse an existing store unless ``overwrite``; check the parent can be written."""
    target = Path(path)
    if target.exists():
        if not overwrite:
            raise UserError(f"{what} '{path}' already exists; pass --overwrite to replace it")
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{what} '{path}': cannot create its directory ({exc.strerror})") from None


def open_group(path: str, what: str) -> zarr.Group:
    """Open an existing daskcubes store read-only, or raise a :class:`UserError`."""
    try:
        group = zarr.open_group(path, mode="r")
    except (GroupNotFoundError, FileNotFoundError):
        raise UserError(f"{what} '{path}': no zarr store there") from None
    if ATTRS not in group.attrs:
        raise UserError(f"{what} '{path}': a zarr group, but not written by daskcubes")
    return group


def store_attrs(group: zarr.Group) -> dict[str, Any]:
    return dict(group.attrs[ATTRS])  # type: ignore[arg-type]


def mark_complete(path: str, **record: Any) -> None:
    """Record that every write of the store at ``path`` has finished."""
    group = zarr.open_group(path, mode="r+")
    attrs = store_attrs(group)
    attrs["complete"] = {"finished": now(), **record}
    group.attrs[ATTRS] = attrs


# -- frames store ---------------------------------------------------------------------


@dataclass(frozen=True)
class FramesStoreInfo:
    """What sampling needs to know of a complete frames store."""

    path: str
    shape: tuple[int, int, int]
    dtype: str
    fingerprint: str


def frames_fingerprint(files: list[FrameFile], spec: FrameSpec) -> str:
    described = [(Path(f.path).name, f.size, f.fingerprint) for f in files]
    text = json.dumps([described, spec.n_rows, spec.columns, spec.dtype])
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def create_frames_store(
    path: str, files: list[FrameFile], spec: FrameSpec, overwrite: bool
) -> zarr.Array:
    """An empty frames store for ``files``, with their provenance in its attributes."""
    _prepare_path(path, "frames store", overwrite)
    group = zarr.open_group(path, mode="w")
    attrs: dict[str, Any] = {
        "kind": "frames",
        "sources": [{"path": f.path, "size": f.size, "fingerprint": f.fingerprint} for f in files],
        "columns": list(spec.columns),
        "dtype": spec.dtype,
        "fingerprint": frames_fingerprint(files, spec),
        "versions": versions(),
        "created": now(),
        "complete": None,
    }
    group.attrs[ATTRS] = attrs
    return group.create_array(
        "frames",
        shape=(len(files), spec.n_rows, spec.n_cols),
        dtype=spec.dtype,
        chunks=(1, min(FRAME_ROW_CHUNK, spec.n_rows), spec.n_cols),
        compressors=None,
        fill_value=0,
        dimension_names=("frame", "row", "col"),
    )


def frames_store_info(path: str) -> FramesStoreInfo:
    """Describe a complete frames store, or raise a :class:`UserError`."""
    group = open_group(path, "frames store")
    attrs = store_attrs(group)
    if attrs.get("kind") != "frames":
        raise UserError(f"frames store '{path}': holds {attrs.get('kind')}, not frames")
    if not attrs.get("complete"):
        raise UserError(f"frames store '{path}': incomplete (its ingest did not finish)")
    shape = group["frames"].shape  # type: ignore[union-attr]
    return FramesStoreInfo(
        path, (shape[0], shape[1], shape[2]), attrs["dtype"], attrs["fingerprint"]
    )


# -- cube store -----------------------------------------------------------------------


def _codecs(compressor: str) -> list[Any] | None:
    if compressor == "lz4":
        return [zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]
    if compressor == "zstd":
        return [zarr.codecs.ZstdCodec(level=3)]
    return None


def create_cube_store(
    path: str,
    plan: CubePlan,
    dtype: str,
    compressor: str,
    provenance: dict[str, Any],
    overwrite: bool,
) -> zarr.Group:
    """An empty cube store for ``plan``: one chunk per cube, ``shard_size`` cubes per file."""
    _prepare_path(path, "cube store", overwrite)
    group = zarr.open_group(path, mode="w")
    group.attrs[ATTRS] = {
        "kind": "cubes",
        "semantics": "article",
        "plan": {
            "n_cubes": plan.n_cubes,
            "dim": plan.dim,
            "depth": plan.depth,
            "n_rows": plan.n_rows,
            "n_cols": plan.n_cols,
            "seed": plan.seed,
            "shard_size": plan.shard_size,
        },
        **provenance,
        "versions": versions(),
        "created": now(),
        "complete": None,
    }
    n, depth, dim = plan.n_cubes, plan.depth, plan.dim
    group.create_array(
        "cubes",
        shape=(n, depth, dim, dim),
        dtype=dtype,
        chunks=(1, depth, dim, dim),
        shards=(plan.shard_size, depth, dim, dim),
        compressors=_codecs(compressor),
        fill_value=0,
        dimension_names=("cube", "frame", "row", "col"),
    )
    block = plan.recipe_block
    for name, shape, dims in (
        ("columns", (n, dim), ("cube", "col")),
        ("rows", (n,), ("cube",)),
        ("frames", (n, depth), ("cube", "frame")),
    ):
        group.create_array(
            name,
            shape=shape,
            dtype="int32",
            chunks=(block, *shape[1:]),
            fill_value=-1,
            dimension_names=dims,
        )
    return group
