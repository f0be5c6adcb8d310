"""Reading a cube store from training code.

Imports nothing from the executors: reading needs only zarr, numpy and (for
``to_dask``) dask.array.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

import dask.array as da
import numpy as np
import zarr

from daskcubes.core.plan import Recipes
from daskcubes.errors import UserError
from daskcubes.io.layout import open_group, store_attrs
from daskcubes.io.schema import CUBES, VOLUMES
from daskcubes.io.shards import ChecksumMismatch, RawShards
from daskcubes.io.storage import Storage
from daskcubes.train.buffers import Arrays, empty_outputs

Index = int | slice | Sequence[int] | np.ndarray
#: What a source's reads give: numpy arrays, or tensors on a device.
Cubes = TypeVar("Cubes")


def cube_positions(index: Index, n_cubes: int) -> np.ndarray | int:
    """Non-negative cube positions for an int, slice or sequence ``index`` into ``n_cubes``."""
    if isinstance(index, int | np.integer):
        if not -n_cubes <= index < n_cubes:
            raise IndexError(f"cube {index} out of range for {n_cubes} cubes")
        return int(index) % n_cubes
    if isinstance(index, slice):
        return np.arange(n_cubes)[index]
    found = np.asarray(index, dtype=np.int64)
    if found.size and not (-n_cubes <= found.min() and found.max() < n_cubes):
        raise IndexError(f"cube index out of range for {n_cubes} cubes")
    return found % n_cubes


def first_of(read: Any) -> Any:
    """The first cube of a read: of each array, for a read of several arrays."""
    if isinstance(read, dict):
        return {name: values[0] for name, values in read.items()}
    return read[0]


class CubeIndexing(ABC, Generic[Cubes]):
    """Indexing for a source of cubes: ``source[i]`` is cube ``i`` as a ``(depth, height,
    width)`` array (or tensor), ``source[a:b]`` and ``source[[i, j]]`` a stacked ``(n,
    depth, height, width)`` one, all through the subclass's ``read(positions)``. A
    source with paired arrays hands out a mapping of array names to such arrays
    (``{"cubes": ..., "labels": ...}``); cubes of several channels have a channel axis
    after the cube axis, ``(n, channel, depth, height, width)``."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def read(self, positions: np.ndarray, out: Cubes | None = None) -> Cubes: ...

    def __getitem__(self, index: Index) -> Cubes:
        found = cube_positions(index, len(self))
        if isinstance(found, int):
            return first_of(self.read(np.array([found])))
        return self.read(found)


class CubeStore(CubeIndexing[Any]):
    """A complete cube store, opened read-only.

    ``len(store)`` is the number of cubes; ``store[i]`` is cube ``i`` as a numpy array
    of shape ``(depth, dim, dim)``; ``store[a:b]`` and ``store[[i, j]]`` give a stacked
    ``(n, depth, dim, dim)`` array; ``store.recipes(...)`` tells where each cube came
    from, and ``store.volumes(...)`` from which volume. A store with paired arrays
    (``labels``) hands out a mapping of array names to arrays.
    """

    def __init__(self, group: zarr.Group, path: str) -> None:
        self.path = path
        self.attrs: dict[str, Any] = store_attrs(group)
        self.cubes: zarr.Array = group[CUBES]  # type: ignore[assignment]
        self._group = group
        pairs = list(self.attrs.get("plan", {}).get("pairs", {}))
        self._arrays: dict[str, zarr.Array] = {
            name: group[name]  # type: ignore[misc]
            for name in (CUBES, *pairs)
        }
        self._raws = {name: RawShards.of(array) for name, array in self._arrays.items()}

    def __len__(self) -> int:
        return int(self.cubes.shape[0])

    def __repr__(self) -> str:
        return f"<CubeStore {self.path!r}: {len(self)} cubes of {self.cube_shape} {self.dtype}>"

    @property
    def cube_shape(self) -> tuple[int, int, int]:
        depth, rows, cols = self.cubes.shape[-3:]
        return (depth, rows, cols)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.cubes.dtype)

    @property
    def arrays(self) -> Arrays:
        """Each array handed out per cube: its item shape and dtype."""
        return {
            name: (tuple(array.shape[1:]), np.dtype(array.dtype))
            for name, array in self._arrays.items()
        }

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete"))

    def read(self, positions: np.ndarray, out: Any = None) -> Any:
        """Cubes at ``positions`` (non-negative, in any order), into ``out`` if given.

        Returns an ``(len(positions), depth, dim, dim)`` array, or a mapping of such
        arrays by name for a store with paired arrays. Uncompressed stores are read
        straight from the shard files, in file order; others go through zarr.
        """
        positions = np.asarray(positions, dtype=np.int64)
        if out is None:
            out = empty_outputs(self.arrays, len(positions))
        outs = out if isinstance(out, dict) else {CUBES: out}
        for name, target in outs.items():
            try:
                self._read(name, positions, target)
            except ChecksumMismatch as damaged:
                raise self._damaged(name, damaged.item) from None
            except ValueError as error:
                if "checksum" not in str(error):
                    raise
                raise self._damaged(name, self._first_damaged(name, positions)) from None
        return out

    def _damaged(self, name: str, cube: int) -> UserError:
        """The one line a damaged cube gets: the store, the cube and its shard's cubes."""
        array = self._arrays[name]
        size = array.shards[0] if array.shards else 1
        first = cube - cube % size
        last = min(first + size, len(self)) - 1
        return UserError(
            f"cube store '{self.path}': cube {cube} is damaged (a chunk of array '{name}' fails "
            f"its crc32c checksum; its shard holds cubes {first}-{last}); "
            f"'python -m daskcubes.workflow repair {self.path}' cuts them again from the "
            "frames store"
        )

    def _first_damaged(self, name: str, positions: np.ndarray) -> int:
        """The first of ``positions`` whose chunk fails its checksum, read one by one."""
        for position in np.sort(positions).tolist():
            try:
                self._arrays[name][position]
            except ValueError:
                return int(position)
        return int(positions.min())

    def _read(self, name: str, positions: np.ndarray, out: np.ndarray) -> None:
        raw, array = self._raws[name], self._arrays[name]
        if raw is not None:
            raw.read_into(positions, out)
        elif len(positions) > 1 and np.all(np.diff(positions) == 1):
            # One zarr request for a run: on object storage its chunks are fetched together.
            out[:] = array[int(positions[0]) : int(positions[-1]) + 1]
        else:
            for slot in np.argsort(positions, kind="stable"):
                out[slot] = array[int(positions[slot])]

    def volumes(self, index: Index) -> np.ndarray:
        """The volume of each cube at ``index`` (``attrs["plan"]["volumes"]`` names them;
        0 for a store cut from one volume)."""
        found = np.atleast_1d(np.asarray(cube_positions(index, len(self))))
        if VOLUMES not in self._group:
            return np.zeros(len(found), dtype=np.int32)
        return self._recipe(VOLUMES, found)

    def recipes(self, index: Index) -> Recipes:
        """Source frames, first row and source columns of the cubes at ``index``."""
        found = np.atleast_1d(np.asarray(cube_positions(index, len(self))))
        return Recipes(*(self._recipe(name, found) for name in ("frames", "rows", "columns")))

    def _recipe(self, name: str, positions: np.ndarray) -> np.ndarray:
        array: zarr.Array = self._group[name]  # type: ignore[assignment]
        try:
            return np.asarray(array.get_orthogonal_selection((positions,)))
        except ValueError as error:
            if "checksum" not in str(error):
                raise
            raise UserError(
                f"cube store '{self.path}': array '{name}' is damaged among cubes "
                f"{positions.min()}-{positions.max()} (a chunk fails its crc32c checksum); "
                f"'python -m daskcubes.workflow repair {self.path}' writes it again"
            ) from None

    def _dask_array(self, name: str) -> da.Array:
        array: zarr.Array = self._group[name]  # type: ignore[assignment]
        # One dask chunk per shard file: a chunk per cube would make a million-task graph.
        chunks = array.shards or array.chunks
        return da.from_zarr(array, chunks=chunks)

    def to_dask(self) -> da.Array:
        """The cubes as a lazy ``(n_cubes, depth, dim, dim)`` dask array, one chunk per shard."""
        return self._dask_array("cubes")

    def to_xarray(self) -> Any:
        """The cubes as a lazy ``xarray.DataArray`` with dims ``cube, frame, row, col``.

        The recipe arrays are coordinates: ``columns`` (cube, col), ``rows`` (cube,)
        and ``frames`` (cube, frame), and ``volumes`` (cube,) for a store of several
        volumes, so a selection keeps track of where cubes came from. Cubes of several
        channels have dims ``cube, channel, frame, row, col``.
        """
        try:
            import xarray as xr
        except ImportError:
            raise ImportError("CubeStore.to_xarray needs xarray: pip install xarray") from None
        coords = {
            "columns": (("cube", "col"), self._dask_array("columns")),
            "rows": (("cube",), self._dask_array("rows")),
            "frames": (("cube", "frame"), self._dask_array("frames")),
        }
        if VOLUMES in self._group:
            coords[VOLUMES] = (("cube",), self._dask_array(VOLUMES))
        return xr.DataArray(
            self.to_dask(),
            dims=tuple(self.cubes.metadata.dimension_names or ()),  # type: ignore[union-attr]
            coords=coords,
            name="cubes",
            attrs={"daskcubes": self.attrs},
        )


def open_cubes(
    path: str,
    allow_incomplete: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> CubeStore:
    """Open the cube store at ``path`` (a local path or a URL such as ``s3://...``).

    Raises :class:`UserError` unless the store is complete, since missing chunks of an
    unfinished run would silently read back as zeros; ``allow_incomplete=True`` opens
    it anyway. ``storage_options`` are fsspec options for a URL (credentials, endpoint).
    """
    group = open_group(path, "cube store", Storage.of(storage_options))
    store = CubeStore(group, path)
    if store.attrs.get("kind") != "cubes":
        raise UserError(f"cube store '{path}': holds {store.attrs.get('kind')}, not cubes")
    if not store.complete and not allow_incomplete:
        raise UserError(
            f"cube store '{path}': incomplete (its run did not finish); "
            "open_cubes(..., allow_incomplete=True) reads it anyway"
        )
    return store
