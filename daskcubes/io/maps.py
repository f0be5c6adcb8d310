"""Window maps read from storage: a weight map or a label volume that chooses where
windows lie, summarised by :mod:`daskcubes.core.tables` (what a table holds, and how).

A map is any array ``ingest`` reads (a zarr array, a variable of a zarr store, NetCDF or
HDF5 file, or frame files). It is read whole once, frame by frame, checked against the
frames' shape or the window starts', and its digest computed as it is read; a table is
kept per process by that digest, which a cube store records and checks. The table reads
the map again, a block of frames and rows at a time, as windows are drawn from it
(:class:`ArrayReader`, the :class:`~daskcubes.core.tables.MapReader` of the core).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import dask.array as da
import numpy as np

from daskcubes.core.tables import MapSpec, Shape, WindowTable, starts_shape, summarise
from daskcubes.errors import UserError
from daskcubes.io.sources import location_source
from daskcubes.io.storage import Storage


def window_table(
    maps: MapSpec,
    storage: Storage,
    modes: tuple[str, str, str],
    cube_shape: Shape,
    frames_shape: Shape,
    fresh: bool = False,
) -> WindowTable:
    """The table of ``maps`` (reached through ``storage``) for windows of ``cube_shape``;
    refuses a map whose values
    are not those ``maps.fingerprint`` names.

    A table is read once per process and kept by its digest; ``fresh`` (and a map of no
    digest yet) reads the map again, so that one rewritten since is noticed.
    """
    key = (maps, storage, modes, cube_shape, frames_shape)
    if not fresh and maps.fingerprint is not None and key in _tables:
        _tables[key] = _tables.pop(key)  # the most recently used, last
        return _tables[key]
    table = _summary(maps, storage, modes, cube_shape, frames_shape)
    if maps.fingerprint is not None and table.fingerprint != maps.fingerprint:
        raise UserError(
            f"{maps.what}: not the map these cubes were drawn with (its values differ from "
            "those the cube store recorded)"
        )
    while len(_tables) >= _KEPT_TABLES:
        del _tables[next(iter(_tables))]
    _tables[(replace(maps, fingerprint=table.fingerprint), *key[1:])] = table
    return table


#: Tables read in this process, least recently used first, by their map (with its
#: digest) and window.
_tables: dict[tuple[MapSpec, Storage, tuple[str, str, str], Shape, Shape], WindowTable] = {}
#: A dataset of many volumes has a table per volume, and a batch draws from any of them:
#: with 4 kept, a stream of 24 labelled volumes summarised most of them again for every
#: batch (its first epoch of 3,072 patches ran over 8 minutes; bench/volumes.py).
_KEPT_TABLES = 256


def _summary(
    maps: MapSpec,
    storage: Storage,
    modes: tuple[str, str, str],
    cube_shape: Shape,
    frames_shape: Shape,
) -> WindowTable:
    """Read the map frame by frame and summarise it over the window starts."""
    try:
        source = location_source(maps.path, None, storage, allow_nonfinite=True)
    except UserError as exc:
        raise UserError(f"{maps.kind}: {exc}") from None
    starts = starts_shape(modes, cube_shape, frames_shape)
    shape = source.shape
    if maps.kind == "labels" and shape != frames_shape:
        raise UserError(f"{maps.what}: shape {shape}; expected the frames' shape {frames_shape}")
    if shape not in (frames_shape, starts):
        raise UserError(
            f"{maps.what}: shape {shape}; expected the frames' shape {frames_shape} (a "
            f"window's weight is its mean) or the window starts' {starts} (a window's "
            "weight is its start's)"
        )
    digest = hashlib.blake2b(f"{shape} {source.dtype}".encode(), digest_size=16)

    def layer(frame: int) -> np.ndarray:
        values = np.asarray(source.array[frame].compute(scheduler="sync"))
        if frame not in read:
            digest.update(np.ascontiguousarray(values).tobytes())
            read.add(frame)
        return values

    read: set[int] = set()
    reader = ArrayReader(source.array)
    return summarise(maps, layer, reader, shape, starts, cube_shape, digest)


@dataclass(frozen=True, eq=False)
class ArrayReader:
    """A map's values, read again a block at a time (:class:`~daskcubes.core.tables.MapReader`)."""

    array: da.Array

    def read(self, frames: tuple[int, int], rows: tuple[int, int]) -> np.ndarray:
        block = self.array[frames[0] : frames[1], rows[0] : rows[1]]
        return np.asarray(block.compute(scheduler="sync"))
