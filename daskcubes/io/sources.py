"""Where frames come from, as one lazy dask array: frame files, or an array that holds them.

Every source becomes a :class:`FrameSource`: a ``(n_frames, n_rows, n_cols)`` dask array
with one chunk per frame, whose chunks are checked as they are computed (numbers, and
finite unless ``allow_nonfinite``), together with what identifies the source (so that a
resumed ingest can tell it is the same) and what the frames store records of it. Ingest
writes chunk ``i`` as frame ``i`` of the frames store, whatever the source.

Sources:

- frame files (parquet, CSV): a directory or a glob, read by :func:`daskcubes.io.frames.read_frame`;
- a zarr array (v2 or v3, any chunking, local or a URL);
- a variable of an xarray-readable store or file: a zarr group (as ``xarray.Dataset.to_zarr``
  writes it), NetCDF or HDF5 (``frames_variable`` names it; needs xarray);
- in Python, a dask or numpy array, an ``xarray.DataArray`` or a zarr array.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize
from natsort import natsorted

from daskcubes.core.volumes import FRAMES
from daskcubes.errors import UserError
from daskcubes.io.frames import (
    FRAME_SUFFIXES,
    FrameSpec,
    find_frame_files,
    fingerprint,
    inspect_frames,
    read_frame,
)
from daskcubes.io.storage import Storage, basename

#: Suffixes of files that xarray opens (NetCDF and HDF5).
XARRAY_FILE_SUFFIXES = (".nc", ".nc4", ".cdf", ".h5", ".hdf5", ".he5")
#: Metadata files that make a folder a zarr store (v3, then v2's array and group).
ZARR_METADATA = ("zarr.json", ".zarray", ".zgroup")


@dataclass(frozen=True)
class FrameSource:
    """Frames as a lazy, checked dask array, and what identifies where they came from.

    Attributes
    ----------
    array : (n_frames, n_rows, n_cols) dask array, one chunk per frame.
    what : how messages name the source (``frames 'data.nc' variable 't'``).
    columns : a name for each column.
    identity : what defines the values, compared when an ingest is resumed.
    fingerprint : a digest of the identity, recorded in every cube store cut from it.
    sources : what the frames store records of where the frames came from.
    location : a path the tasks read (that the workers must see), if any.
    """

    array: da.Array
    what: str
    columns: tuple[str, ...]
    identity: dict[str, Any]
    fingerprint: str
    sources: list[dict[str, Any]]
    location: str | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        n_frames, n_rows, n_cols = self.array.shape
        return int(n_frames), int(n_rows), int(n_cols)

    @property
    def dtype(self) -> str:
        return str(self.array.dtype)


def digest_of(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


# -- frame files ------------------------------------------------------------------------


def _frame_chunk(path: str, spec: FrameSpec, storage: Storage, allow_nonfinite: bool) -> Any:
    return read_frame(path, spec, storage, allow_nonfinite)[np.newaxis]


def files_source(paths: list[str], storage: Storage, allow_nonfinite: bool = False) -> FrameSource:
    """The frame files ``paths`` (in frame order) as a source; their metadata is read and
    checked now, their values as the chunks are computed."""
    files, spec = inspect_frames(paths, storage)
    described = [(basename(f.path), f.size, f.fingerprint) for f in files]
    # The digest stores have always recorded: cube stores name their frames store by it.
    digest = digest_of([described, spec.n_rows, list(spec.columns), spec.dtype])
    name = f"frame-files-{tokenize(digest, allow_nonfinite, storage)}"
    graph = {
        (name, i, 0, 0): (_frame_chunk, f.path, spec, storage, allow_nonfinite)
        for i, f in enumerate(files)
    }
    chunks = ((1,) * len(files), (spec.n_rows,), (spec.n_cols,))
    identity = {
        "frame files": len(files),
        **{basename(f.path): f"{f.size} bytes, fingerprint {f.fingerprint}" for f in files},
        "columns": list(spec.columns),
        "dtype": spec.dtype,
    }
    return FrameSource(
        da.Array(graph, name, chunks, dtype=spec.dtype),
        f"frames '{posixpath.dirname(files[0].path) or '.'}'",
        spec.columns,
        identity,
        digest,
        [{"path": f.path, "size": f.size, "fingerprint": f.fingerprint} for f in files],
        files[0].path,
    )


def frames_array(
    frames: str | list[str],
    storage_options: dict[str, Any] | None = None,
    allow_nonfinite: bool = False,
) -> da.Array:
    """Frame files as a lazy ``(n_frames, n_rows, n_cols)`` dask array, one chunk per frame.

    ``frames`` is a directory or glob of parquet or CSV files (local or a URL), or a list
    of their paths in frame order. Their metadata is checked now (shape, column names,
    numbers), their values as each chunk is computed (finite unless ``allow_nonfinite``):
    the same reader and checks as ``ingest``.
    """
    storage = Storage.of(storage_options)
    paths = find_frame_files(frames, storage) if isinstance(frames, str) else list(frames)
    return files_source(paths, storage, allow_nonfinite).array


# -- arrays -----------------------------------------------------------------------------


def _check_finite(block: np.ndarray, what: str, block_info: Any = None) -> np.ndarray:
    if not np.isfinite(block).all():
        frame0 = block_info[0]["array-location"][0][0] if block_info else 0
        frame, row, col = np.argwhere(~np.isfinite(block))[0]
        raise UserError(
            f"{what}: value {block[frame, row, col]} at frame {frame0 + frame}, row {row}, "
            f"column {col}; expected finite numbers (allow_nonfinite: true accepts NaN and "
            "infinity)"
        )
    return block


def array_source(
    array: da.Array,
    what: str,
    identity: dict[str, Any],
    sources: list[dict[str, Any]],
    allow_nonfinite: bool = False,
    columns: tuple[str, ...] | None = None,
    digest: str | None = None,
) -> FrameSource:
    """A 3-D array of frames (frame, row, column) as a source, checked now for its shape
    and dtype, and chunk by chunk for finite values."""
    if array.ndim != 3:
        raise UserError(
            f"{what}: has {array.ndim} dimensions {tuple(array.shape)}; expected 3 "
            "(frame, row, column)"
        )
    if array.dtype.kind not in "iuf":
        raise UserError(f"{what}: holds {array.dtype} values; expected numbers (int or float)")
    if min(array.shape) < 1 or any(np.isnan(size) for size in array.shape):
        raise UserError(f"{what}: has shape {tuple(array.shape)}; expected frames of data")
    frames = array.rechunk((1, -1, -1))
    if not allow_nonfinite and array.dtype.kind == "f":
        frames = frames.map_blocks(_check_finite, what, dtype=array.dtype)
    identity = {**identity, "shape": list(array.shape), "dtype": str(array.dtype)}
    n_cols = int(array.shape[2])
    return FrameSource(
        frames,
        what,
        columns or tuple(str(c) for c in range(n_cols)),
        identity,
        digest or digest_of(identity),
        sources,
    )


def _xarray(what: str) -> Any:
    try:
        import xarray
    except ImportError:
        raise UserError(
            f"{what}: reading it needs xarray (pip install 'daskcubes[xarray]')"
        ) from None
    return xarray


def _data_array_source(
    data: Any, what: str, identity: dict[str, Any], allow_nonfinite: bool, digest: str | None
) -> FrameSource:
    """An ``xarray.DataArray`` of frames: its last dimension's coordinate names the columns."""
    values = data.data if isinstance(data.data, da.Array) else da.from_array(data.data)
    last = data.dims[-1] if data.dims else None
    columns = None
    if last in data.coords and data.ndim == 3:
        columns = tuple(str(c) for c in data.coords[last].values)
    return array_source(
        values,
        what,
        {**identity, "dims": list(map(str, data.dims))},
        [{k: v for k, v in identity.items() if k in ("array", "variable")}],
        allow_nonfinite,
        columns,
        digest,
    )


def _variable(dataset: Any, variable: str | None, location: str) -> tuple[Any, str]:
    names = [str(name) for name in dataset.data_vars]
    if variable is None:
        three_d = [name for name in names if dataset[name].ndim == 3]
        if len(three_d) != 1:
            raise UserError(
                f"frames '{location}': holds variables {', '.join(names) or '(none)'}; "
                "name the one of frames with frames_variable (--frames-variable)"
            )
        variable = three_d[0]
    if variable not in names:
        raise UserError(
            f"frames '{location}': no variable '{variable}'; it holds {', '.join(names) or 'none'}"
        )
    return dataset[variable], variable


def is_array_location(location: str, storage: Storage) -> bool:
    """Whether ``location`` names an array store or file rather than frame files."""
    if posixpath.splitext(location.rstrip("/"))[1].lower() in XARRAY_FILE_SUFFIXES:
        return True
    return any(storage.exists(posixpath.join(location.rstrip("/"), name)) for name in ZARR_METADATA)


def location_source(
    location: str, variable: str | None, storage: Storage, allow_nonfinite: bool = False
) -> FrameSource:
    """The frames at ``location``: a zarr array, a variable of a zarr group or of a NetCDF or
    HDF5 file (``variable``), or else frame files (a directory or glob)."""
    if not is_array_location(location, storage):
        if variable is not None:
            raise UserError(
                f"frames_variable: '{variable}' names a variable, but frames '{location}' "
                "are frame files, not a zarr store or NetCDF/HDF5 file"
            )
        return files_source(find_frame_files(location, storage), storage, allow_nonfinite)
    what = f"frames '{location}'" + (f" variable '{variable}'" if variable else "")
    identity: dict[str, Any] = {"array": location}
    if posixpath.splitext(location.rstrip("/"))[1].lower() in XARRAY_FILE_SUFFIXES:
        xr = _xarray(what)
        size = storage.size(location)
        digest_of_file = fingerprint(location, size, storage)
        fs, inner = storage.filesystem(location)
        try:
            dataset = xr.open_dataset(fs.open(inner, "rb"), engine="h5netcdf", chunks={})
        except ImportError:
            raise UserError(
                f"{what}: reading NetCDF and HDF5 needs h5netcdf and h5py "
                "(pip install 'daskcubes[xarray]')"
            ) from None
        except (OSError, ValueError) as exc:
            raise UserError(f"{what}: not a readable NetCDF or HDF5 file ({exc})") from None
        data, variable = _variable(dataset, variable, location)
        identity.update(variable=variable, size=size, fingerprint=digest_of_file)
        source = _data_array_source(
            data, f"frames '{location}' variable '{variable}'", identity, allow_nonfinite, None
        )
        return replace(source, location=location)
    try:
        found = zarr.open(store=storage.zarr_store(location, read_only=True), mode="r")
    except (OSError, ValueError) as exc:
        raise UserError(f"{what}: cannot open it as zarr ({exc})") from None
    if isinstance(found, zarr.Array):
        if variable is not None:
            raise UserError(f"frames_variable: '{variable}'; frames '{location}' is one array")
        identity["metadata"] = digest_of(found.metadata.to_dict())
        source = array_source(da.from_zarr(found), what, identity, [identity], allow_nonfinite)
        return replace(source, location=location)
    if "daskcubes" in found.attrs:
        raise UserError(
            f"frames '{location}': a daskcubes store; sample reads a frames store as "
            "frames_store (--frames-store), and frames names its sources"
        )
    xr = _xarray(what)
    dataset = xr.open_zarr(storage.zarr_store(location, read_only=True), consolidated=False)
    data, variable = _variable(dataset, variable, location)
    identity.update(variable=variable, metadata=digest_of(found[variable].metadata.to_dict()))
    source = _data_array_source(
        data, f"frames '{location}' variable '{variable}'", identity, allow_nonfinite, None
    )
    return replace(source, location=location)


def in_memory_source(frames: Any, allow_nonfinite: bool = False) -> FrameSource:
    """Frames given in Python: a dask or numpy array, an ``xarray.DataArray`` or a zarr
    array, (frame, row, column). A dask array's name (a hash of how it is computed, or of
    its values) identifies it."""
    if isinstance(frames, zarr.Array):
        frames = da.from_zarr(frames)
    if hasattr(frames, "dims") and hasattr(frames, "coords"):  # an xarray.DataArray
        name = frames.name if frames.name is not None else "unnamed"
        values = frames.data if isinstance(frames.data, da.Array) else da.from_array(frames.data)
        identity = {"array": f"DataArray '{name}'", "dask": values.name}
        return _data_array_source(
            frames, f"frames (DataArray '{name}')", identity, allow_nonfinite, None
        )
    if not isinstance(frames, da.Array):
        array = np.asarray(frames)
        if array.ndim == 3:
            frames = da.from_array(array, chunks=(1, -1, -1))
        else:
            frames = da.from_array(array)
    what = f"frames (dask array '{frames.name}')"
    identity = {"array": "dask array", "dask": frames.name}
    return array_source(frames, what, identity, [identity], allow_nonfinite)


# -- datasets of many volumes -------------------------------------------------------------


@dataclass(frozen=True)
class VolumeSource:
    """One volume of a dataset: its frames (one source per channel, by channel name) and
    the arrays paired with them (``labels``, masks, a second modality), of the frames'
    shape, by name."""

    name: str
    channels: tuple[tuple[str, FrameSource], ...]
    pairs: tuple[tuple[str, FrameSource], ...] = ()

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.channels[0][1].shape

    @property
    def arrays(self) -> tuple[tuple[str, FrameSource], ...]:
        """Every array of the volume by its name in the frames store: channels, then pairs."""
        return (*self.channels, *self.pairs)


def check_dataset(volumes: list[VolumeSource]) -> None:
    """Refuse, in one line naming the volume, a dataset whose volumes or arrays disagree:
    two volumes of one name, channels or paired arrays of another shape than the frames,
    volumes of other channels or pairs than the first, or a paired array of another dtype
    than the first volume's (frames of any number dtype are cast to the cubes' dtype)."""
    if not volumes:
        raise UserError("frames: no volumes given; expected at least one")
    seen: set[str] = set()
    first = volumes[0]
    for volume in volumes:
        if volume.name in seen:
            raise UserError(f"volume '{volume.name}': given twice; expected one name a volume")
        seen.add(volume.name)
        if not volume.name or "/" in volume.name:
            raise UserError(
                f"volume {volume.name!r}: expected a name, without '/', for each volume"
            )
        shape = volume.shape
        for name, source in volume.arrays[1:]:
            kind = "channel" if any(name == c for c, _ in volume.channels) else "paired array"
            if source.shape != shape:
                raise UserError(
                    f"volume '{volume.name}': {kind} '{name}' ({source.what}) has shape "
                    f"{source.shape}; expected the frames' shape {shape}"
                )
        names = [name for name, _ in volume.arrays]
        if len(set(names)) != len(names):
            raise UserError(
                f"volume '{volume.name}': arrays {names}; expected channel and paired "
                "array names that differ"
            )
        for what, mine, theirs in (
            ("channels", volume.channels, first.channels),
            ("paired arrays", volume.pairs, first.pairs),
        ):
            if [n for n, _ in mine] != [n for n, _ in theirs]:
                raise UserError(
                    f"volume '{volume.name}' ({volume.channels[0][1].what}): {what} "
                    f"{[n for n, _ in mine]}; expected those of volume '{first.name}': "
                    f"{[n for n, _ in theirs]}"
                )
        for (name, source), (_, firsts) in zip(volume.pairs, first.pairs, strict=True):
            if source.dtype != firsts.dtype:
                raise UserError(
                    f"volume '{volume.name}': paired array '{name}' ({source.what}) is "
                    f"{source.dtype}; expected {firsts.dtype}, as in volume '{first.name}' "
                    "(a paired array keeps its dtype in the cube store)"
                )


def _channels(
    frames: Any, variable: str | None, storage: Storage, allow_nonfinite: bool
) -> tuple[tuple[str, FrameSource], ...]:
    """A volume's frames as channels: one array (channel ``frames``), a list of arrays
    (channels ``0``, ``1``, ...), or a store's variables ``variable`` names, comma
    separated (channels named by them)."""
    if isinstance(frames, list | tuple):
        return tuple(
            (str(c), in_memory_source(array, allow_nonfinite)) for c, array in enumerate(frames)
        )
    if not isinstance(frames, str):
        return ((FRAMES, in_memory_source(frames, allow_nonfinite)),)
    names = [v.strip() for v in variable.split(",")] if variable else [None]
    if len(names) == 1:
        return ((FRAMES, location_source(frames, names[0], storage, allow_nonfinite)),)
    if len(set(names)) != len(names) or not all(names):
        raise UserError(f"frames_variable: '{variable}'; expected distinct names, comma separated")
    return tuple((str(v), location_source(frames, v, storage, allow_nonfinite)) for v in names)


def _pair(value: Any, storage: Storage) -> FrameSource:
    if isinstance(value, str):
        return location_source(value, None, storage, allow_nonfinite=True)
    return in_memory_source(value, allow_nonfinite=True)


def dataset_sources(
    frames: Any,
    pairs: Mapping[str, Any],
    variable: str | None,
    storage: Storage,
    allow_nonfinite: bool = False,
) -> list[VolumeSource]:
    """The volumes of a dataset, in the order given: ``frames`` is one volume's frames
    (anything :func:`location_source` or :func:`in_memory_source` takes, or a list of
    arrays, its channels) or a mapping of volume names to such; ``pairs`` maps the name of
    each paired array (``labels``) to one volume's array, or to a mapping by volume name."""
    named = isinstance(frames, Mapping)
    volumes = dict(frames) if named else {FRAMES: frames}
    by_volume: dict[str, dict[str, Any]] = {name: {} for name in volumes}
    for pair, given in pairs.items():
        if isinstance(given, Mapping) != named:
            raise UserError(
                f"{pair}: expected "
                + (
                    "a mapping of volume names to arrays, as frames is"
                    if named
                    else "one array, as frames is"
                )
            )
        for name, value in given.items() if named else [(FRAMES, given)]:
            if name not in by_volume:
                raise UserError(
                    f"{pair}: volume '{name}' has no frames; expected one of "
                    f"{', '.join(map(repr, volumes))}"
                )
            by_volume[name][pair] = value
    found = [
        VolumeSource(
            str(name),
            _channels(value, variable, storage, allow_nonfinite),
            tuple((p, _pair(v, storage)) for p, v in by_volume[name].items()),
        )
        for name, value in volumes.items()
    ]
    check_dataset(found)
    return found


# -- a folder of volumes, and volumes named one by one -----------------------------------


@dataclass(frozen=True)
class VolumeFiles:
    """Where one volume of a dataset is: its frames (frame files, a zarr array or group, a
    NetCDF or HDF5 file), the variable(s) of its frames (``None``: the setting's), and the
    paired arrays stored beside them, by name."""

    name: str
    frames: str
    pairs: tuple[tuple[str, str], ...] = ()
    variable: str | None = None


#: Suffixes a volume's name drops: a folder of volumes names each volume by its entry's
#: name less one of these (``a.zarr`` and ``a.nc`` are volume ``a``).
ARRAY_SUFFIXES = (".zarr", *XARRAY_FILE_SUFFIXES)


def entry_stem(url: str) -> str:
    """The name of a folder's entry less an array suffix (``.zarr``, ``.nc``, ``.h5``, ...);
    other names (a folder ``run.1`` of frame files) stay whole."""
    name = basename(url)
    stem, suffix = posixpath.splitext(name)
    return stem if suffix.lower() in ARRAY_SUFFIXES else name


def _entry_kind(url: str, storage: Storage) -> str | None:
    """``array`` (a zarr store, a NetCDF or HDF5 file), ``folder`` (any other folder), or
    ``None`` (another file)."""
    if is_array_location(url, storage):
        return "array"
    return "folder" if storage.isdir(url) else None


_NEITHER = (
    "expected a folder of frame files (parquet or CSV), a zarr array or group, or a NetCDF "
    "or HDF5 file"
)


def _listed(folder: str, storage: Storage) -> list[str]:
    """The entries of ``folder`` in natural sort order, less hidden ones (``.DS_Store``)."""
    return list(
        natsorted(
            (url for url in storage.entries(folder) if not basename(url).startswith(".")),
            key=basename,
        )
    )


def _unique(entries: list[str], what: str) -> dict[str, str]:
    """``entries`` by stem; two entries of one stem are refused, naming both."""
    by_stem: dict[str, str] = {}
    for url in entries:
        stem = entry_stem(url)
        if stem in by_stem:
            raise UserError(
                f"{what} '{stem}': given twice, by '{by_stem[stem]}' and '{url}'; expected "
                f"one entry a {what}"
            )
        by_stem[stem] = url
    return by_stem


def _folder_volume(name: str, url: str, storage: Storage) -> VolumeFiles:
    """The volume in the folder ``url``: frame files, or an entry named ``frames`` and
    the arrays paired with it (``labels``, ...) as entries of their own names."""
    entries = _listed(url, storage)
    arrays = [e for e in entries if _entry_kind(e, storage) is not None]
    files = [e for e in entries if e not in arrays]
    frame_files = [f for f in files if posixpath.splitext(f)[1].lower() in FRAME_SUFFIXES]
    by_name = _unique(arrays, f"volume '{name}': array")
    if FRAMES not in by_name:
        if arrays:
            raise UserError(
                f"volume '{name}' ('{url}'): holds '{basename(arrays[0])}' but no frames; "
                f"a volume with paired arrays holds its frames as an entry named "
                f"'{FRAMES}' ({_NEITHER})"
            )
        if not frame_files:
            raise UserError(f"volume '{name}' ('{url}'): holds no frames; {_NEITHER}")
        return VolumeFiles(name, url)
    if files:
        raise UserError(
            f"volume '{name}': '{files[0]}' beside its frames '{by_name[FRAMES]}'; a volume "
            f"with an entry '{FRAMES}' holds only it and its paired arrays ({_NEITHER})"
        )
    pairs = tuple((pair, found) for pair, found in by_name.items() if pair != FRAMES)
    return VolumeFiles(name, by_name[FRAMES], pairs)


def folder_volumes(folder: str, storage: Storage) -> list[VolumeFiles]:
    """The volumes of the folder ``folder``, one an entry (hidden ones aside), in the
    natural sort order of their names, each named by its entry's name less its suffix:

    - a folder of frame files (parquet or CSV);
    - a zarr array or group, a NetCDF or HDF5 file (``frames_variable`` names its
      variable, or several, comma separated, for channels);
    - a folder holding an entry named ``frames`` (any of the above, less its suffix) and
      the arrays paired with it, each an entry named by the array (``labels.zarr``).

    Anything else, or an empty folder, is refused in one line naming it."""
    storage.check_reachable(folder, "volumes")
    if not storage.exists(folder):
        raise UserError(f"volumes '{folder}': no such folder; expected a folder of volumes")
    if not storage.isdir(folder) or is_array_location(folder, storage):
        raise UserError(
            f"volumes '{folder}': not a folder of volumes; give one store or folder of "
            "frame files as frames (--frames)"
        )
    entries = _listed(folder, storage)
    if not entries:
        raise UserError(f"volumes '{folder}': an empty folder; expected one entry a volume")
    found = []
    for name, url in _unique(entries, "volume").items():
        kind = _entry_kind(url, storage)
        if kind is None:
            raise UserError(f"volumes '{folder}': '{url}' is not a volume; {_NEITHER}")
        found.append(
            VolumeFiles(name, url) if kind == "array" else _folder_volume(name, url, storage)
        )
    return found


def volume_sources(
    volumes: list[VolumeFiles],
    variable: str | None,
    storage: Storage,
    allow_nonfinite: bool = False,
) -> list[VolumeSource]:
    """The dataset ``volumes`` as sources, in the order given, checked as
    :func:`check_dataset` checks; each volume's ``variable``, or else ``variable``, names
    the variable(s) of its frames. Problems name the volume and its file."""
    seen: dict[str, str] = {}
    for volume in volumes:
        if volume.name in seen:
            raise UserError(
                f"volume '{volume.name}': given twice, by '{seen[volume.name]}' and "
                f"'{volume.frames}'; expected one name a volume"
            )
        seen[volume.name] = volume.frames
    found = []
    for volume in volumes:
        try:
            channels = _channels(
                volume.frames, volume.variable or variable, storage, allow_nonfinite
            )
            pairs = tuple(
                (name, replace(_pair(url, storage), what=f"{name} '{url}'"))
                for name, url in volume.pairs
            )
        except UserError as error:
            message = str(error)
            raise UserError(
                message
                if message.startswith(f"volume '{volume.name}'")
                else f"volume '{volume.name}': {message}"
            ) from None
        found.append(VolumeSource(volume.name, channels, pairs))
    check_dataset(found)
    return found
