"""Settings of a run: presets in ``conf/*.yaml``, overridden by command-line values.

The presets ship inside the package (``daskcubes/conf``; a checkout's top-level ``conf``
links there), so an installed wheel finds them wherever it runs.

Every setting has one name, used alike in YAML files, on the command line
(``--cubes`` for ``cubes``) and in Python (``Config(cubes=...)``).
"""

from __future__ import annotations

import reprlib
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from daskcubes.core.definition import (
    ColumnMode,
    CubeSizes,
    Definition,
    FrameMode,
    RowMode,
    check_cube_fits,
    check_grid_count,
)
from daskcubes.core.windows import GridEdge
from daskcubes.errors import UserError

#: Settings known by an older name too: ``batch_size`` was the setting ``task_size``
#: (cubes per Dask task; a *batch* is what training gets).
ALIASES = {"batch_size": "task_size"}

#: The presets shipped with the package: ``NAME.yaml`` is ``--config NAME``.
PRESETS: Traversable = files("daskcubes") / "conf"

#: Schedulers that run in this process; ``distributed`` (or a cluster's address) runs on
#: dask.distributed.
LOCAL_SCHEDULERS = ("sync", "threads", "processes")
DType = Literal["float64", "float32"]
Compressor = Literal["none", "lz4", "zstd"]
FrameFormat = Literal["parquet", "csv"]


class VolumeEntry(BaseModel):
    """One volume of a dataset named in a preset (``volumes:`` as a list): its name, its
    frames (anything ``frames`` takes), and the arrays stored and cut beside them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="the volume's name (numbered in the order listed)")
    frames: str = Field(
        description="its frames: a folder or glob of frame files, a zarr array, or a zarr "
        "store, NetCDF or HDF5 file (frames_variable)"
    )
    labels: str | None = Field(
        None, description="its label volume, of the frames' shape, cut with each cube"
    )
    arrays: dict[str, str] = Field(
        default_factory=dict,
        description="other arrays of the frames' shape cut with each cube, by name (mask: PATH)",
    )
    frames_variable: str | None = Field(
        None,
        description="the variable(s) of its frames, comma separated for channels "
        "(default: the setting frames_variable)",
    )

    @model_validator(mode="before")
    @classmethod
    def _has_frames(cls, values: Any) -> Any:
        # Labels for a volume without frames: one line naming both, not "field required".
        if isinstance(values, dict) and "frames" not in values:
            given = ", ".join(f"{k} {short(v)}" for k, v in values.items() if k != "name")
            raise ValueError(
                f"volume {short(values.get('name'))} has no frames ({given or 'nothing else'} "
                "given); expected frames: PATH"
            )
        return values

    @field_validator("name")
    @classmethod
    def _a_name(cls, value: str) -> str:
        if not value or "/" in value:
            raise ValueError("expected a name, without '/', for each volume")
        return value

    @model_validator(mode="after")
    def _labels_once(self) -> VolumeEntry:
        if "labels" in self.arrays:
            raise ValueError(f"volume '{self.name}': labels given in arrays; give them as labels")
        return self

    @property
    def pairs(self) -> dict[str, str]:
        """The paired arrays by name: ``labels`` first, then ``arrays``."""
        return {**({} if self.labels is None else {"labels": self.labels}), **self.arrays}


class Config(BaseModel):
    """All settings of a daskcubes run, validated.

    Unknown keys and bad values raise :class:`UserError` through :func:`load_config`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # -- frames ------------------------------------------------------------------
    frames: str = Field(
        "daskcubes-data/frames",
        description="the frames: frame files (a directory, or a glob such as "
        "'data/*.parquet'), a zarr array, or a zarr store, NetCDF or HDF5 file holding "
        "them as a variable (frames_variable)",
    )
    frames_variable: str | None = Field(
        None,
        description="the variable of frames (frame, row, column) in a zarr store, NetCDF or "
        "HDF5 file (default: its only 3-D variable)",
    )
    volumes: str | list[VolumeEntry] | None = Field(
        None,
        description="a dataset of many volumes instead of frames: a folder holding one entry "
        "a volume, in natural sort order, each named by its entry less its suffix (a folder "
        "of frame files, a zarr array or group, a NetCDF/HDF5 file, or a folder holding "
        "'frames' and paired arrays such as 'labels'); in a preset also a list of "
        "{name, frames, labels, arrays, frames_variable}. Nothing synthetic is generated",
    )
    synthetic: bool = Field(
        True,
        description="generate synthetic frames into 'frames' before ingesting (false "
        "whenever volumes are given)",
    )
    frame_format: FrameFormat = Field("parquet", description="file format of synthetic frames")
    n_frames: int = Field(100, ge=1, description="synthetic frames: how many")
    n_rows: int = Field(1000, ge=1, description="synthetic frames: rows per frame")
    n_cols: int = Field(1000, ge=1, description="synthetic frames: columns per frame")
    allow_nonfinite: bool = Field(False, description="accept NaN and infinite frame values")
    # -- stores ------------------------------------------------------------------
    frames_store: str = Field(
        "daskcubes-data/frames.zarr", description="zarr store the frames are ingested into"
    )
    out: str = Field("daskcubes-data/cubes.zarr", description="zarr store the cubes are written to")
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options for URLs (s3://, gs://, ...), as JSON on the command line; "
        "credentials may come from the usual environment variables instead",
    )
    compressor: Compressor = Field(
        "none", description="codec of the cube store (random floats compress ~1.14x)"
    )
    storage_retry_seconds: int = Field(
        60,
        ge=0,
        description="seconds a request to remote storage is tried again through transient "
        "faults (connections refused or reset, timeouts, 5xx, throttling) before the run stops "
        "(--resume then finishes it)",
    )
    lease_seconds: int = Field(
        60,
        ge=2,
        description="seconds the lease a run holds on the store it writes lasts unless renewed "
        "(it renews it while alive): a run that dies blocks others this long",
    )
    break_lease: bool = Field(
        False,
        description="take over the lease of another run at once, expired or not: only when "
        "that run is known dead, since two runs writing one store corrupt it",
    )
    write_without_lease: bool = Field(
        False,
        description="write stores on storage without conditional writes (memory://, gs://, "
        "...), where nothing stops a second run from writing the same store",
    )
    # -- cubes -------------------------------------------------------------------
    cubes: int = Field(100, ge=1, description="number of cubes to cut")
    dim: int = Field(
        100, ge=1, description="cube edge: the height and width of cubes that set neither"
    )
    depth: int | None = Field(
        None, ge=1, description="frames per cube (default: every frame of the frames store)"
    )
    height: int | None = Field(None, ge=1, description="rows per cube (default: dim)")
    width: int | None = Field(None, ge=1, description="columns per cube (default: dim)")
    frame_mode: FrameMode = Field(
        "all",
        description="a cube's frames: all (in order), window (depth consecutive frames at a "
        "random start), subset (depth random frames, in order) or grid (windows every "
        "frame_stride frames)",
    )
    row_mode: RowMode = Field(
        "first",
        description="a cube's rows: first (the first height rows), window (height "
        "consecutive rows at a random start) or grid (windows every row_stride rows)",
    )
    column_mode: ColumnMode = Field(
        "random",
        description="a cube's columns: random (width distinct random columns), window "
        "(width consecutive columns at a random start) or grid (windows every column_stride "
        "columns)",
    )
    sorted_columns: bool = Field(
        False, description="column_mode random: columns in increasing order, not as drawn"
    )
    frame_stride: int | None = Field(
        None, ge=1, description="frame_mode grid: frames between windows (default: depth)"
    )
    row_stride: int | None = Field(
        None, ge=1, description="row_mode grid: rows between windows (default: height)"
    )
    column_stride: int | None = Field(
        None, ge=1, description="column_mode grid: columns between windows (default: width)"
    )
    grid_edge: GridEdge = Field(
        "drop",
        description="grid axes: drop the positions past the last whole window, or snap (add "
        "a last window that ends at the edge)",
    )
    weights: str | None = Field(
        None,
        description="a weight map (any array ingest reads) over frames x rows x columns, or "
        "over the window starts: windows are drawn with probability proportional to their "
        "mean weight (or their start's)",
    )
    labels: str | None = Field(
        None,
        description="a label volume of whole-number classes, of the frames' shape: windows "
        "are drawn so that classes come in the shares of label_ratios",
    )
    label_ratios: dict[int, float] = Field(
        default_factory=dict,
        description="label-balanced windows: the share of windows of each class, such as "
        '{"0": 1, "1": 3}, drawn from labels, or without it from the labels ingested with '
        "the frames (each volume's own)",
    )
    label_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description="labels: the least fraction of a window's voxels of a class for the "
        "window to count for it",
    )
    volume_shares: Literal["windows", "equal"] | dict[str, float] = Field(
        "windows",
        description="a dataset of many volumes: each volume's share of the cubes, in "
        "proportion to the windows it holds (windows: every window of the dataset equally "
        'likely), the same for each (equal), or per volume name, such as {"a": 1, "b": 3}',
    )
    seed: int = Field(0, ge=0, description="root seed: cube i depends only on (seed, i)")
    dtype: DType = Field("float64", description="dtype of the cubes")
    shard_size: int = Field(16, ge=1, description="cubes per shard file of the cube store")
    task_size: int | Literal["auto"] = Field(
        "auto",
        description="cubes per Dask task: auto (whole shards, tasks of ~0.1-1 s), or a "
        "multiple of shard_size; it does not change the store (also: batch_size)",
    )
    # -- execution ---------------------------------------------------------------
    scheduler: str = Field(
        "threads",
        description="Dask scheduler: sync, threads, processes, distributed (a LocalCluster), "
        "or the address of a running dask.distributed scheduler (tcp://HOST:PORT)",
    )
    workers: int | None = Field(
        None, ge=1, description="threads, processes or LocalCluster workers (default: per core)"
    )
    threads_per_worker: int | None = Field(
        None, ge=1, description="distributed: threads of each LocalCluster worker"
    )
    dashboard_address: str = Field(
        "127.0.0.1:8787",
        description="distributed: where the LocalCluster's dashboard listens (port 0: any free)",
    )
    dask_scheduler_address: str | None = Field(
        None, description="distributed: run on this existing cluster instead of a LocalCluster"
    )
    connect_timeout: int = Field(
        20, ge=1, description="distributed: seconds to wait for an existing cluster's scheduler"
    )
    report: str | None = Field(
        None, description="distributed: save Dask's performance report of the run to this HTML file"
    )
    max_slab_bytes: int | None = Field(
        None,
        ge=1,
        description="bytes of frame values a worker holds at once to cut cubes from "
        "(default: half a worker's memory); beyond it, cubes are cut band by band",
    )

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str) -> str:
        if value in (*LOCAL_SCHEDULERS, "distributed") or "://" in value:
            return value
        raise ValueError(
            "expected sync, threads, processes, distributed, or a scheduler address "
            "such as tcp://HOST:PORT"
        )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        values = canonical(values)
        if values.get("volumes") is not None:  # the user's data: nothing to generate
            values["synthetic"] = False
        return values

    @field_validator("volumes", mode="before")
    @classmethod
    def _volumes(cls, value: Any) -> str | list[VolumeEntry] | None:
        # One message for each form (a union would report each alternative's error).
        if value is None or isinstance(value, str):
            if value is not None and not value.strip():
                raise ValueError("expected a folder of volumes, or a list of volumes")
            return value
        if not isinstance(value, list | tuple) or not value:
            raise ValueError(
                "expected a folder of volumes, or a list of volumes, each "
                "{name, frames, labels, arrays, frames_variable}"
            )
        entries = [
            entry if isinstance(entry, VolumeEntry) else _entry(k, entry)
            for k, entry in enumerate(value)
        ]
        names = [entry.name for entry in entries]
        for k, name in enumerate(names):
            if name in names[:k]:
                first = entries[names.index(name)]
                raise ValueError(
                    f"volume '{name}': given twice, by frames '{first.frames}' and "
                    f"'{entries[k].frames}'; expected one name a volume"
                )
        return entries

    @field_validator("task_size", mode="plain")
    @classmethod
    def _task_size(cls, value: Any) -> int | Literal["auto"]:
        # One message for both forms (a union would report each alternative's error).
        if value == "auto":
            return "auto"
        if isinstance(value, str) and value.strip().isdigit():  # from the command line
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        raise ValueError("expected auto or a whole number of cubes (at least 1)")

    @field_validator("dask_scheduler_address")
    @classmethod
    def _is_address(cls, value: str | None) -> str | None:
        if value is None or "://" in value:
            return value
        raise ValueError("expected a scheduler address such as tcp://HOST:PORT")

    @property
    def cluster_address(self) -> str | None:
        """Address of the existing cluster to run on; ``None`` for a LocalCluster."""
        return self.scheduler if "://" in self.scheduler else self.dask_scheduler_address

    @property
    def distributed(self) -> bool:
        """Whether the run uses dask.distributed."""
        return self.scheduler not in LOCAL_SCHEDULERS

    @property
    def definition(self) -> Definition:
        """How a cube's frames, rows and columns are chosen."""
        return Definition.from_dict(self.model_dump())

    def cube_sizes(self, n_frames: int) -> CubeSizes:
        """The cube's depth, height and width for ``n_frames`` frames, each named by the
        setting that gives it (``dim`` for a height or width not set)."""
        return (
            ("depth", self.depth or n_frames),
            ("height" if self.height else "dim", self.height or self.dim),
            ("width" if self.width else "dim", self.width or self.dim),
        )

    @model_validator(mode="after")
    def _cube_fits_synthetic_frames(self) -> Config:
        # Before any frame is made; frames from files are checked once in the store.
        if self.synthetic:
            shape = (self.n_frames, self.n_rows, self.n_cols)
            try:
                sizes = self.cube_sizes(self.n_frames)
                check_cube_fits(sizes, self.definition, shape, "the synthetic frames are")
                cube_shape = (sizes[0][1], sizes[1][1], sizes[2][1])
                check_grid_count(self.cubes, cube_shape, self.definition, shape)
            except UserError as exc:
                raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="after")
    def _distributed_settings_need_distributed(self) -> Config:
        for name in ("dask_scheduler_address", "report"):
            if getattr(self, name) and not self.distributed:
                raise ValueError(
                    f"{name} needs scheduler 'distributed' (scheduler is '{self.scheduler}')"
                )
        return self


def _entry(index: int, given: Any) -> VolumeEntry:
    """The ``index``-th volume of a preset's list, whose first problem is one line naming
    it (a ValueError, as a setting's validator raises)."""
    if not isinstance(given, dict):
        raise ValueError(
            f"volume {index} is {short(given)}; expected a mapping "
            "{name, frames, labels, arrays, frames_variable}"
        )
    try:
        return VolumeEntry(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = f"volume {index}" + (
            f" '{given['name']}'" if isinstance(given.get("name"), str) else ""
        )
        key = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            known = ", ".join(VolumeEntry.model_fields)
            raise ValueError(f"{where}: unknown key '{key}'; known keys: {known}") from None
        if not key:
            raise ValueError(
                message if message.startswith("volume ") else f"{where}: {message}"
            ) from None
        raise ValueError(f"{where}: {key}: {message} (got {short(first.get('input'))})") from None


def canonical(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with every older name (:data:`ALIASES`) given its current one."""
    renamed = dict(settings)
    for old, new in ALIASES.items():
        if old in renamed:
            value = renamed.pop(old)
            if renamed.get(new, value) != value:
                raise UserError(f"{old} and {new} name one setting; give one of them")
            renamed[new] = value
    return renamed


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxdict = _SHORT.maxlist = 3


def short(value: Any) -> str:
    """``value`` as an error message quotes it: one line, at most about 60 characters
    (an array given where a path was expected must not fill the screen)."""
    return " ".join(_SHORT.repr(value).split())


def describe(error: ValidationError, source: str | None = None) -> str:
    """The first problem of ``error`` in one line naming the setting, after ``source``
    (a preset file, the command line) if given."""
    first = error.errors()[0]
    name = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        line = f"unknown setting '{name}'; known settings: {', '.join(Config.model_fields)}"
    elif not name:  # a check across settings: its message names them
        line = message
    elif name == "volumes" and first["type"] == "value_error":  # it names the volume
        line = f"setting '{name}': {message}"
    else:
        line = f"setting '{name}': {message} (got {short(first.get('input'))})"
    return f"{source}: {line}" if source else line


def preset_file(preset: str | Path) -> Traversable:
    """The file a preset names: a path, or a name without suffix for ``conf/NAME.yaml``."""
    file = Path(preset)
    if file.suffix or file.exists():
        return file
    return PRESETS / f"{preset}.yaml"


def read_preset(file: Traversable) -> dict[str, Any]:
    """Read a YAML preset into a mapping."""
    try:
        data = yaml.safe_load(file.read_text())
    except OSError as exc:
        raise UserError(f"{file}: cannot read config file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{file}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{file}: expected a mapping of settings, got {type(data).__name__}")
    return data


def load_config(preset: str | Path | None = None, **overrides: Any) -> Config:
    """Build a :class:`Config` from a preset (default ``conf/default.yaml``) and overrides.

    ``preset`` is a YAML file, or the name of a shipped preset (``"small"``). Overrides
    whose value is ``None`` are ignored, so parsed command-line options can be passed
    straight through.
    """
    return config_of(preset, overrides)


def config_of(
    preset: str | Path | None, overrides: dict[str, Any], given_on: str | None = None
) -> Config:
    """:func:`load_config`, whose errors in ``overrides`` name where they were given
    (``given_on``: "command line"), if anywhere but in Python."""
    file = preset_file(preset) if preset else PRESETS / "default.yaml"
    values = canonical(read_preset(file))
    try:
        Config(**values)
    except ValidationError as exc:
        raise UserError(describe(exc, str(file))) from None
    given = canonical({key: value for key, value in overrides.items() if value is not None})
    try:
        return Config(**{**values, **given})
    except ValidationError as exc:
        raise UserError(describe(exc, given_on)) from None
