"""The one place settings become jobs: a :class:`~daskcubes.config.Config` in, the plain
values the layers below take out (the executor by name and options, the lease's terms,
the synthetic frames, the frame source, the cut's job), and the stages run with them.

Nothing below this module knows :class:`~daskcubes.config.Config`. Each function here
takes a config, how to treat existing output (``mode``), whether to draw a progress bar,
and optionally an executor that is already open (used as it is, and left open).
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal, overload

from daskcubes.config import Config
from daskcubes.cut.job import DatasetCut, plan_cut
from daskcubes.errors import UserError
from daskcubes.io.layout import WriteMode, frames_store_info
from daskcubes.io.lease import LeaseTerms
from daskcubes.io.sources import (
    VolumeFiles,
    VolumeSource,
    dataset_sources,
    folder_volumes,
    volume_sources,
)
from daskcubes.io.storage import Storage
from daskcubes.io.synthetic import SyntheticFrames
from daskcubes.runtime import stages
from daskcubes.runtime.executors import Executor, create_executor
from daskcubes.runtime.stages import RunResult, StageOptions, StageResult
from daskcubes.runtime.tasks import SampleJob
from daskcubes.train.stream import CubeStream

if TYPE_CHECKING:
    from daskcubes.train.device import DeviceStream, OnDevice

#: Where a stream's cubes are cut when they go to a device: there, or on the host.
Gather = Literal["device", "host"]


def storage_of(config: Config) -> Storage:
    """The storage the config's stores and frames are on (fsspec options, retries)."""
    return Storage.of(config.storage_options, config.storage_retry_seconds)


def new_executor(config: Config) -> Executor:
    """The executor the config's ``scheduler`` names, built from its options."""
    if not config.distributed:
        return create_executor(config.scheduler, workers=config.workers)
    return create_executor(
        "distributed",
        address=config.cluster_address,
        workers=config.workers,
        threads_per_worker=config.threads_per_worker,
        dashboard_address=config.dashboard_address,
        connect_timeout=config.connect_timeout,
        report=config.report,
    )


@contextmanager
def executor_for(config: Config, executor: Executor | None = None) -> Iterator[Executor]:
    """``executor`` as it is, or for the ``with`` block one the config asks for."""
    if executor is not None:
        yield executor
        return
    opened = new_executor(config)
    try:
        yield opened
    finally:
        opened.close()


def _options(
    config: Config, executor: Executor, mode: WriteMode, show_progress: bool
) -> StageOptions:
    lease = LeaseTerms(config.lease_seconds, config.break_lease, config.write_without_lease)
    return StageOptions(executor, lease, mode, show_progress)


def cut_job(config: Config) -> DatasetCut:
    """The cut of the config's cubes from its frames store: the plan checked against the
    store (and its maps read, once), laid out for this machine. A volume too small for
    the cube is left out, with a line on stderr naming it."""
    storage = storage_of(config)
    frames = frames_store_info(config.frames_store, storage)
    counts = sorted({shape[0] for shape in frames.shapes})
    if config.depth is None and len(counts) > 1 and config.frame_mode != "all":
        raise UserError(
            f"depth: not set, and the volumes of frames store '{frames.path}' have "
            f"{counts[0]} to {counts[-1]} frames; set depth (frames per cube)"
        )
    if len(frames.volumes) > 1 and (config.weights or config.labels):
        setting = "weights" if config.weights else "labels"
        raise UserError(
            f"{setting}: one map of one volume's shape, but frames store '{frames.path}' holds "
            f"{len(frames.volumes)} volumes; balance windows on their ingested labels "
            "(label_ratios without labels)"
        )
    cut = plan_cut(
        frames,
        storage,
        cubes=config.cubes,
        sizes=config.cube_sizes(counts[0]),
        definition=config.definition,
        seed=config.seed,
        task_size=config.task_size,
        shard_size=config.shard_size,
        dtype=config.dtype,
        shares=config.volume_shares,
        max_slab_bytes=config.max_slab_bytes,
    )
    for volume, plan in zip(frames.volumes, cut.plan.plans, strict=True):
        if plan is None:
            print(
                f"daskcubes: volume '{volume.name}' ({' x '.join(map(str, volume.shape))}) "
                f"holds no cube of {' x '.join(map(str, cut.plan.cube_shape))}: left out",
                file=sys.stderr,
            )
    return cut


def generate(
    config: Config,
    mode: WriteMode = "new",
    show_progress: bool = True,
    executor: Executor | None = None,
) -> StageResult:
    """Write the config's ``n_frames`` synthetic frame files into ``frames``."""
    if config.volumes is not None:
        raise UserError(
            "generate: writes synthetic frames into frames, but volumes are given "
            "(the dataset to ingest); leave volumes out to generate frames"
        )
    frames = SyntheticFrames(
        config.frames,
        config.frame_format,
        config.n_frames,
        config.n_rows,
        config.n_cols,
        config.seed,
    )
    with executor_for(config, executor) as on:
        return stages.generate(
            frames, storage_of(config), _options(config, on, mode, show_progress)
        )


def ingest(
    config: Config,
    mode: WriteMode = "new",
    show_progress: bool = True,
    executor: Executor | None = None,
    volumes: list[VolumeSource] | None = None,
) -> StageResult:
    """Write the frames (the dataset ``volumes``, by default those ``frames`` or
    ``volumes`` names) into the frames store ``frames_store``."""
    storage = storage_of(config)
    if volumes is None:
        volumes = config_volumes(config, storage)
    with executor_for(config, executor) as on:
        options = _options(config, on, mode, show_progress)
        return stages.ingest(volumes, config.frames_store, storage, options)


def config_volumes(config: Config, storage: Storage) -> list[VolumeSource]:
    """The dataset the config names: its ``volumes`` (a folder of volumes, or a preset's
    list), or else the frames at ``frames`` (one volume); each with channels where its
    ``frames_variable`` names several variables."""
    if config.volumes is None:
        return dataset_sources(
            config.frames, {}, config.frames_variable, storage, config.allow_nonfinite
        )
    if isinstance(config.volumes, str):
        found = folder_volumes(config.volumes, storage)
    else:
        found = [
            VolumeFiles(v.name, v.frames, tuple(v.pairs.items()), v.frames_variable)
            for v in config.volumes
        ]
    return volume_sources(found, config.frames_variable, storage, config.allow_nonfinite)


def sample(
    config: Config,
    mode: WriteMode = "new",
    show_progress: bool = True,
    executor: Executor | None = None,
) -> StageResult:
    """Cut the config's cubes from its frames store into its cube store ``out``."""
    job = SampleJob(cut_job(config), config.out, uuid.uuid4().hex)  # checked before workers start
    provenance: dict[str, Any] = {
        "config": config.model_dump(exclude={"storage_options"}),  # may hold credentials
        "seed": config.seed,
        "frames_store": {"path": job.cut.frames.path, "fingerprint": job.cut.frames.fingerprint},
    }
    with executor_for(config, executor) as on:
        options = _options(config, on, mode, show_progress)
        return stages.sample(job, config.compressor, provenance, options)


def run(
    config: Config,
    mode: WriteMode = "new",
    show_progress: bool = True,
    executor: Executor | None = None,
) -> RunResult:
    """The whole job: (synthetic frames →) frames store → cube store, on one executor.

    Starting the executor (a cluster) counts as the first stage's start-up.
    """
    entered = time.perf_counter()
    with executor_for(config, executor) as on:
        opened = time.perf_counter() - entered
        results = [generate(config, mode, show_progress, on)] if config.synthetic else []
        results.append(ingest(config, mode, show_progress, on))
        results.append(sample(config, mode, show_progress, on))
    results[0] = replace(results[0], startup=results[0].startup + opened)
    return RunResult(results)


@overload
def open_stream(
    config: Config, device: None = None, gather: Gather | None = None
) -> CubeStream: ...


@overload
def open_stream(
    config: Config, device: Any, gather: Gather | None = None
) -> CubeStream | DeviceStream | OnDevice: ...


def open_stream(
    config: Config, device: Any = None, gather: Gather | None = None
) -> CubeStream | DeviceStream | OnDevice:
    """The cubes the config would store, cut on demand from its frames store: on the host
    (``device`` None), or handed out as tensors on a torch device, cut there (``gather``
    ``"device"``) or on the host's cores and copied (``"host"``); by default on the
    device, except for ``device="cpu"``, where the host's cutter is the faster one."""
    if gather not in (None, "device", "host"):
        raise UserError(f"gather: {gather!r}; expected 'device' or 'host'")
    if device is None:
        return CubeStream(cut_job(config))
    from daskcubes.train import device as on  # torch only when a device is asked for

    found = on.usable_device(device)  # before the frames store: no device, one line
    job = cut_job(config)
    if (gather or ("host" if found.type == "cpu" else "device")) == "device":
        return on.DeviceStream(job, found)
    return on.OnDevice(CubeStream(job), found)
