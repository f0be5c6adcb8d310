"""The zarr stores: layout, provenance attributes, and the completion record.

Frames store: a zarr v3 group with one array ``frames`` (n_frames, n_rows, n_cols).
Cube store: a zarr v3 group with ``cubes`` (n_cubes, depth, dim, dim) and the recipe
arrays ``columns`` (n_cubes, dim), ``rows`` (n_cubes,), ``frames`` (n_cubes, depth).

A missing zarr chunk reads back as the fill value, so chunk files prove nothing: a
store is *complete* only once its group attribute ``daskcubes.complete`` is set, which
happens after every write has finished.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from zarr.errors import GroupNotFoundError

from daskcubes.core.plan import stored_recipe
from daskcubes.errors import UserError
from daskcubes.io.schema import CHUNK_KEY_ENCODING, CubeSchema, chunk_codecs
from daskcubes.io.sources import FRAMES, FrameSource, VolumeSource, digest_of
from daskcubes.io.storage import AccessMode, Storage, local_path
from daskcubes.version import __version__

ATTRS = "daskcubes"
#: Rows per chunk of the frames store: a cube reads only the first ``dim`` rows of each
#: frame, so loading them must not read whole frames.
FRAME_ROW_CHUNK = 128


def versions() -> dict[str, str]:
    import dask
    import pyarrow

    return {
        "daskcubes": __version__,
        "dask": dask.__version__,
        "zarr": zarr.__version__,
        "numpy": np.__version__,
        "pyarrow": pyarrow.__version__,
    }


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


WriteMode = Literal["new", "overwrite", "resume"]


def prepare_store(url: str, what: str, mode: WriteMode, storage: Storage) -> bool:
    """Make way for a store at ``url``; return whether an unfinished one is to be resumed.

    An existing store is refused in mode ``new``, deleted in mode ``overwrite``, and kept
    in mode ``resume`` (the caller then checks it was started with the same settings).
    """
    path = local_path(url)
    storage.check_reachable(url, what)
    try:
        if storage.exists(url):
            if mode == "resume":
                if path is not None:
                    remove_leftovers(Path(path))
                return True
            if mode == "new":
                raise UserError(
                    f"{what} '{url}' already exists; pass --resume to finish it "
                    "or --overwrite to replace it"
                )
            storage.remove(url)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{what} '{url}': cannot write there ({exc.strerror or exc})") from None
    return False


def _is_store_key(parts: tuple[str, ...]) -> bool:
    """Whether a file at relative path ``parts`` is metadata or a chunk of a daskcubes store."""
    if parts[-1] == "zarr.json":
        return True
    if _DOTTED_CHUNK.fullmatch(parts[-1]):  # c.i.j...: the chunk keys of new stores
        return True
    return "c" in parts and all(part.isdigit() for part in parts[parts.index("c") + 1 :])


#: A chunk key of the encoding with separator ``.`` (:data:`CHUNK_KEY_ENCODING`).
_DOTTED_CHUNK = re.compile(r"c(\.\d+)+")


def remove_leftovers(root: Path) -> None:
    """Delete the files of a local store that are neither metadata nor chunks.

    Every write goes to a temporary file that is then renamed (by zarr, or by
    :func:`daskcubes.io.storage.write_atomically`), so a killed run can leave temporary
    files behind; they hold nothing that the resumed run does not write again.
    """
    for folder, _, names in os.walk(root):
        inside = os.path.relpath(folder, root)
        parts = () if inside == os.curdir else tuple(inside.split(os.sep))
        for name in names:
            if not _is_store_key((*parts, name)):
                os.unlink(os.path.join(folder, name))


@contextmanager
def store_lock(url: str, what: str) -> Iterator[None]:
    """Hold an exclusive lock on writing the local store at ``url`` (``STORE.lock`` beside it).

    The operating system releases the lock when the process ends, however it ends, so a
    killed run never leaves a stale lock behind. It stands beside the store's lease
    (:mod:`daskcubes.io.lease`), which object storage and other machines see too.
    """
    path = local_path(url)
    if path is None:
        yield
        return
    lock_path = Path(f"{path.rstrip('/')}.lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a")  # noqa: SIM115 - closed in the finally below
    except OSError as exc:
        raise UserError(f"{what} '{url}': cannot write beside it ({exc.strerror})") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{what} '{url}': another daskcubes run is writing it (lock {lock_path})"
            ) from None
        yield
        lock_path.unlink(missing_ok=True)
    finally:
        handle.close()


def check_resumable(path: str, what: str, started: dict[str, Any], now: dict[str, Any]) -> None:
    """Refuse to resume a store whose defining settings differ from this run's."""
    for name, value in now.items():
        if started.get(name) != value:
            raise UserError(
                f"{what} '{path}' was started with {name}={started.get(name)!r}; this run has "
                f"{name}={value!r}. Resume needs the same settings (or pass --overwrite)"
            )


def open_group(url: str, what: str, storage: Storage, mode: AccessMode = "r") -> zarr.Group:
    """Open an existing daskcubes store, or raise a :class:`UserError`."""
    storage.check_reachable(url, what)
    try:
        group = storage.open_group(url, mode=mode)
    except (GroupNotFoundError, FileNotFoundError):
        raise UserError(f"{what} '{url}': no zarr store there") from None
    except OSError as exc:  # an object store's missing bucket, denied access, ...
        raise UserError(f"{what} '{url}': cannot open ({exc})") from None
    if ATTRS not in group.attrs:
        hint = (
            "; to cut cubes from an array, ingest it first (--frames PATH, with "
            "--frames-variable NAME for a variable of a dataset)"
            if what == "frames store"
            else ""
        )
        raise UserError(f"{what} '{url}': a zarr group, but not written by daskcubes{hint}")
    return group


def store_attrs(group: zarr.Group) -> dict[str, Any]:
    return dict(group.attrs[ATTRS])  # type: ignore[arg-type]


def mark_complete(url: str, storage: Storage, **record: Any) -> None:
    """Record that every write of the store at ``url`` has finished.

    A worker killed in the middle of a write leaves its temporary file behind (its task
    is run again elsewhere); a local store is rid of such files first.
    """
    path = local_path(url)
    if path is not None:
        remove_leftovers(Path(path))
    group = storage.open_group(url, mode="r+")
    attrs = store_attrs(group)
    attrs.pop("progress", None)
    attrs["complete"] = {"finished": now(), **record}
    group.attrs[ATTRS] = attrs


# -- frames store ---------------------------------------------------------------------


@dataclass(frozen=True)
class FramesStoreInfo:
    """One array of frames of a complete frames store, as the cut reads it: the store's
    ``path``, the ``array`` inside it, its shape, dtype and the fingerprint of its values."""

    path: str
    shape: tuple[int, int, int]
    dtype: str
    fingerprint: str
    array: str = "frames"


@dataclass(frozen=True)
class VolumeInfo:
    """One volume of a frames store: its frames (an array per channel) and paired arrays."""

    name: str
    fingerprint: str
    channels: tuple[FramesStoreInfo, ...]
    pairs: tuple[FramesStoreInfo, ...] = ()

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.channels[0].shape


@dataclass(frozen=True)
class DatasetInfo:
    """What sampling needs to know of a complete frames store: its volumes, in order, and
    the names of their channels and paired arrays (the same in every volume).

    ``layered``: the store holds its arrays by volume (``volumes/<k>/<name>``); a store
    of one volume of plain frames holds one array ``frames``, as it always has.
    """

    path: str
    fingerprint: str
    volumes: tuple[VolumeInfo, ...]
    channels: tuple[str, ...] = (FRAMES,)
    pairs: tuple[tuple[str, str], ...] = ()
    layered: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(volume.name for volume in self.volumes)

    @property
    def shapes(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(volume.shape for volume in self.volumes)


def is_layered(volumes: list[VolumeSource]) -> bool:
    """Whether a dataset needs the layered layout: more than plain frames of one volume."""
    only = volumes[0]
    return len(volumes) > 1 or bool(only.pairs) or [n for n, _ in only.channels] != [FRAMES]


def volume_array(k: int, name: str) -> str:
    """The path, inside a layered frames store, of array ``name`` of volume ``k``."""
    return f"volumes/{k}/{name}"


def store_arrays(volumes: list[VolumeSource]) -> list[tuple[str, FrameSource]]:
    """Each array of the dataset by its path in the frames store, in the order ingest
    numbers their frames."""
    if not is_layered(volumes):
        return [(FRAMES, volumes[0].channels[0][1])]
    return [
        (volume_array(k, name), source)
        for k, volume in enumerate(volumes)
        for name, source in volume.arrays
    ]


def _dataset_record(volumes: list[VolumeSource]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The identity of a layered dataset (what a resumed ingest compares) and its volumes'
    attributes."""
    identity: dict[str, Any] = {}
    records = []
    for volume in volumes:
        arrays = {name: source.identity for name, source in volume.arrays}
        identity[volume.name] = arrays
        fingerprints = {name: source.fingerprint for name, source in volume.arrays}
        records.append(
            {
                "name": volume.name,
                "shape": list(volume.shape),
                "fingerprint": digest_of([volume.name, fingerprints]),
                "arrays": {
                    name: {
                        "dtype": source.dtype,
                        "fingerprint": source.fingerprint,
                        "sources": source.sources,
                    }
                    for name, source in volume.arrays
                },
            }
        )
    return identity, records


def create_frames_store(
    path: str, volumes: list[VolumeSource], mode: WriteMode, storage: Storage
) -> dict[str, Any]:
    """The frames store of the dataset ``volumes`` (new, or resumed if unfinished);
    returns its attributes. One volume of plain frames is stored as it always was."""
    layered = is_layered(volumes)
    source = volumes[0].channels[0][1]
    if layered:
        identity, records = _dataset_record(volumes)
        fingerprint = digest_of([record["fingerprint"] for record in records])
    else:
        identity, fingerprint = source.identity, source.fingerprint
    if prepare_store(path, "frames store", mode, storage):
        started = store_attrs(open_group(path, "frames store", storage))
        check_resumable(path, "frames store", started["identity"], identity)
        return started
    attrs: dict[str, Any] = {"kind": "frames"}
    if layered:
        attrs["volumes"] = records
        attrs["channels"] = [name for name, _ in volumes[0].channels]
        attrs["pairs"] = {name: pair.dtype for name, pair in volumes[0].pairs}
    else:
        attrs.update(sources=source.sources, columns=list(source.columns), dtype=source.dtype)
    attrs.update(
        identity=identity,
        fingerprint=fingerprint,
        versions=versions(),
        created=now(),
        complete=None,
    )
    group = storage.open_group(path, mode="w", attributes={ATTRS: attrs})
    for name, array in store_arrays(volumes):
        n_frames, n_rows, n_cols = array.shape
        group.create_array(
            name,
            shape=(n_frames, n_rows, n_cols),
            dtype=array.dtype,
            chunks=(1, min(FRAME_ROW_CHUNK, n_rows), n_cols),
            compressors=chunk_codecs("none"),  # each chunk's crc32c: zarr readers check it
            fill_value=0,
            dimension_names=("frame", "row", "col"),
            chunk_key_encoding=CHUNK_KEY_ENCODING,  # type: ignore[arg-type]
        )
    return attrs


def frames_store_info(path: str, storage: Storage) -> DatasetInfo:
    """Describe a complete frames store, or raise a :class:`UserError`."""
    group = open_group(path, "frames store", storage)
    attrs = store_attrs(group)
    if attrs.get("kind") != "frames":
        raise UserError(f"frames store '{path}': holds {attrs.get('kind')}, not frames")
    if not attrs.get("complete"):
        raise UserError(f"frames store '{path}': incomplete (its ingest did not finish)")
    if "volumes" not in attrs:
        n_frames, n_rows, n_cols = group["frames"].shape  # type: ignore[union-attr]
        frames = FramesStoreInfo(
            path, (n_frames, n_rows, n_cols), attrs["dtype"], attrs["fingerprint"]
        )
        return DatasetInfo(
            path, frames.fingerprint, (VolumeInfo(FRAMES, frames.fingerprint, (frames,)),)
        )
    channels, pairs = list(attrs["channels"]), dict(attrs["pairs"])

    def array(k: int, record: dict[str, Any], name: str) -> FramesStoreInfo:
        n_frames, n_rows, n_cols = record["shape"]
        found = record["arrays"][name]
        return FramesStoreInfo(
            path,
            (n_frames, n_rows, n_cols),
            found["dtype"],
            found["fingerprint"],
            volume_array(k, name),
        )

    volumes = tuple(
        VolumeInfo(
            record["name"],
            record["fingerprint"],
            tuple(array(k, record, name) for name in channels),
            tuple(array(k, record, name) for name in pairs),
        )
        for k, record in enumerate(attrs["volumes"])
    )
    return DatasetInfo(
        path, attrs["fingerprint"], volumes, tuple(channels), tuple(pairs.items()), layered=True
    )


# -- cube store -----------------------------------------------------------------------


def create_cube_store(
    path: str,
    schema: CubeSchema,
    provenance: dict[str, Any],
    mode: WriteMode,
    storage: Storage,
) -> dict[str, Any]:
    """The cube store of ``schema`` (new, or resumed if unfinished); returns its attributes."""
    plan_attrs = schema.attrs()
    if prepare_store(path, "cube store", mode, storage):
        attrs = store_attrs(open_group(path, "cube store", storage))
        made_by = stored_recipe(attrs["plan"])
        if made_by != plan_attrs["recipe"]:
            raise UserError(
                f"cube store '{path}' was started with recipe function {made_by!r}; this "
                f"version makes new cubes with {plan_attrs['recipe']!r}, so cannot finish it. "
                "It still opens and verifies; pass --overwrite to cut it anew"
            )
        # Read through the schema, so that a store started before its definition was
        # recorded (the article's, edge ``dim``) is compared in today's terms.
        started = CubeSchema.from_attrs(attrs["plan"]).attrs()
        check_resumable(path, "cube store", started, plan_attrs)
        return attrs
    attrs = {
        "kind": "cubes",
        "plan": plan_attrs,
        **provenance,
        "versions": versions(),
        "created": now(),
        "complete": None,
    }
    schema.create(storage.open_group(path, mode="w", attributes={ATTRS: attrs}))
    return attrs
