"""daskcubes as a library: run the stages from Python, on threads or on a cluster.

Each function takes a :class:`~daskcubes.config.Config`, the name or path of a preset, or
nothing (the default preset), and keyword settings that override it (the names of the
command line's options: ``cubes=1000``). ``client`` runs the stage on dask.distributed:
a ``distributed.Client`` the caller made (used as it is, and left running), or the
address of a scheduler. ``mode`` is ``"new"`` (refuse existing output), ``"overwrite"``
or ``"resume"``. Bad settings or input raise :class:`~daskcubes.errors.UserError`, a
``ValueError``.

    >>> import daskcubes
    >>> result = daskcubes.run("small", cubes=64, out="cubes.zarr")  # doctest: +SKIP
    >>> store = daskcubes.open_cubes(result.path)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

from pydantic import ValidationError

from daskcubes import jobs
from daskcubes.config import Config, canonical, describe, load_config
from daskcubes.errors import UserError
from daskcubes.io.layout import WriteMode
from daskcubes.io.lease import LeaseTerms
from daskcubes.io.sources import dataset_sources
from daskcubes.io.storage import Storage
from daskcubes.jobs import Gather
from daskcubes.runtime.executors import Executor, create_executor
from daskcubes.runtime.repair import Repair, repair_cube_store
from daskcubes.runtime.stages import RunResult, StageResult

if TYPE_CHECKING:
    from distributed import Client

    from daskcubes.train.device import DeviceStream, OnDevice
    from daskcubes.train.stream import CubeStream

ConfigLike = Config | str | Path | None
Result = TypeVar("Result", RunResult, StageResult)


def settings_of(config: ConfigLike = None, **settings: Any) -> Config:
    """A :class:`Config` from a config, a preset's name or path, or the default preset,
    with ``settings`` (not None) put over it."""
    if not isinstance(config, Config):
        _refuse_store(config)
        return load_config(config, **settings)
    given = canonical({name: value for name, value in settings.items() if value is not None})
    try:
        return Config(**{**config.model_dump(), **given})
    except ValidationError as exc:
        raise UserError(describe(exc)) from None


def _refuse_store(config: str | Path | None) -> None:
    """A zarr store given where a config was expected: one line saying what opens it."""
    if config is None:
        return
    path = str(config).rstrip("/")
    if Storage().exists(f"{path}/zarr.json"):
        raise UserError(
            f"'{path}' is a zarr store, not a config: daskcubes.open_cubes({path!r}) opens "
            "cube stores; this takes a Config, a preset's name or YAML file, or settings"
        )


@contextmanager
def _on(client: Client | str | None, settings: dict[str, Any]) -> Iterator[Executor | None]:
    """The executor for ``client``: the caller's client as it is (never closed here), or
    ``None`` to open one from the settings (an address among them)."""
    if client is None or isinstance(client, str):
        if client is not None:
            settings["scheduler"] = client
        yield None
        return
    yield create_executor("distributed", client=client)


def _stage(
    function: Callable[..., Result],
    config: ConfigLike,
    client: Client | str | None,
    mode: WriteMode,
    progress: bool,
    settings: dict[str, Any],
    **extra: Any,
) -> Result:
    with _on(client, settings) as executor:
        settled = settings_of(config, **settings)
        return function(settled, mode, progress, executor, **extra)


def run(
    config: ConfigLike = None,
    *,
    client: Client | str | None = None,
    mode: WriteMode = "new",
    progress: bool = True,
    **settings: Any,
) -> RunResult:
    """The whole job: (synthetic frames →) frames store → cube store. Returns what each
    stage made; ``result.path`` is the cube store."""
    return _stage(jobs.run, config, client, mode, progress, settings)


def ingest(
    config: ConfigLike = None,
    *,
    frames: Any = None,
    labels: Any = None,
    paired: Mapping[str, Any] | None = None,
    client: Client | str | None = None,
    mode: WriteMode = "new",
    progress: bool = True,
    **settings: Any,
) -> StageResult:
    """Write frames, and the arrays paired with them, into the frames store (``frames_store``).

    ``frames`` is where they are (frame files, a zarr array, a NetCDF, HDF5 or zarr
    store with ``frames_variable``; several variables, comma separated, are the channels
    of one cube), or the frames themselves: a dask or numpy array, an
    ``xarray.DataArray`` or a zarr array, shaped (frame, row, column), or a list of such
    arrays (the channels). A mapping of volume names to any of these is a dataset of
    many volumes, numbered in the mapping's order. ``labels`` (and each array of
    ``paired``, by name) is stored beside the frames and cut with each cube: one array
    of the frames' shape, or a mapping by volume name as ``frames`` is.
    """
    pairs = {**(paired or {}), **({} if labels is None else {"labels": labels})}
    if (frames is not None or pairs) and settings_of(config, **settings).volumes is not None:
        raise UserError(
            "ingest: frames (or labels) and the setting volumes both name the dataset; give "
            "frames, one volume or a mapping of volumes, or volumes, a folder or a list"
        )
    if (frames is None or isinstance(frames, str | Path)) and not pairs:
        if frames is not None:
            settings["frames"] = str(frames)
        return _stage(jobs.ingest, config, client, mode, progress, settings)
    settled = settings_of(config, **settings)
    volumes = dataset_sources(
        settled.frames if frames is None else str(frames) if isinstance(frames, Path) else frames,
        pairs,
        settled.frames_variable,
        jobs.storage_of(settled),
        settled.allow_nonfinite,
    )
    return _stage(jobs.ingest, config, client, mode, progress, settings, volumes=volumes)


def sample(
    config: ConfigLike = None,
    *,
    client: Client | str | None = None,
    mode: WriteMode = "new",
    progress: bool = True,
    **settings: Any,
) -> StageResult:
    """Cut the cubes of the settings from the frames store into the cube store (``out``)."""
    return _stage(jobs.sample, config, client, mode, progress, settings)


def repair(
    store: str | Path,
    against: str | Path | None = None,
    storage_options: dict[str, Any] | None = None,
    break_lease: bool = False,
) -> Repair:
    """Find the damaged or missing shards and recipe chunks of the complete cube store
    ``store`` and cut their cubes again, from the frames store it records or from
    ``against`` (a copy of it; its fingerprint must match), leaving the store
    byte-identical to a clean run. Holds the store's lease, like a run (``break_lease``
    takes it over at once). Returns what was mended; ``str()`` of it says so."""
    return repair_cube_store(
        str(store),
        Storage.of(storage_options),
        None if against is None else str(against),
        LeaseTerms(break_lease=break_lease),
    )


@overload
def open_stream(
    config: ConfigLike = None, device: None = None, gather: Gather | None = None, **settings: Any
) -> CubeStream: ...


@overload
def open_stream(
    config: ConfigLike, device: Any, gather: Gather | None = None, **settings: Any
) -> CubeStream | DeviceStream | OnDevice: ...


def open_stream(
    config: ConfigLike = None,
    device: Any = None,
    gather: Gather | None = None,
    **settings: Any,
) -> CubeStream | DeviceStream | OnDevice:
    """The cubes the settings would store, cut on demand from the frames store
    (``frames_store``), never written: stream mode.

    Takes what the stages take: a :class:`~daskcubes.config.Config`, a preset's name or
    path, or nothing, plus keyword settings. ``device`` ``None`` gives numpy arrays on the
    host; a torch device (``"cuda"``, ``"cuda:1"``, ``"cpu"``, a ``torch.device``) gives
    tensors there. ``gather`` says where those are cut: ``"device"``, from source rows
    uploaded once (:class:`~daskcubes.train.device.DeviceStream`), or ``"host"``, on the
    host's cores, then copied (:class:`~daskcubes.train.device.OnDevice`); by default on
    the device, except for ``device="cpu"``, where the host's cutter is the faster one.
    """
    return jobs.open_stream(settings_of(config, **settings), device, gather)
