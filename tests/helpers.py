"""What the tests share: settings, command lines, the frames read independently, real
dask processes, S3 on loopback. Test modules import from here, never from each other nor
from ``conftest.py`` (which keeps only fixtures and hooks); tests/test_layers_of_tests.py
checks it."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from natsort import natsorted

from daskcubes.config import PRESETS, Config
from daskcubes.runtime.executors import DistributedExecutor, OnDone

if TYPE_CHECKING:  # imported where used: tests/test_device.py runs without distributed
    from dask.typing import Key
    from distributed import Client

REPO = Path(__file__).resolve().parents[1]

#: Names of the shipped presets (``--config NAME``).
PRESET_NAMES = sorted(
    p.name.removesuffix(".yaml") for p in PRESETS.iterdir() if p.name.endswith(".yaml")
)
#: The default dashboard host with any free port, so that runs never collide.
DASHBOARD = Config.model_validate({}).dashboard_address.rsplit(":", 1)[0] + ":0"
#: The executor matrix: settings that run a job on each executor (batch sizes differ too:
#: they must not change the store). ``distributed`` runs on the session's LocalCluster.
EXECUTORS: dict[str, dict[str, Any]] = {
    "sync": {"scheduler": "sync", "task_size": 4},
    "threads": {"scheduler": "threads", "workers": 3, "task_size": 4},
    "processes": {"scheduler": "processes", "workers": 2, "task_size": 16},
    "distributed": {"task_size": 8},
}


@contextmanager
def triton_interpreted(monkeypatch: Any) -> Iterator[None]:
    """Device streams cut by the Triton kernel, run on the CPU by Triton's interpreter
    (``TRITON_INTERPRET=1``, read when the kernel is defined: so its module is loaded
    again, and again afterwards). Imports torch: for modules that skip without it."""
    from daskcubes.train import device, device_kernel

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    importlib.reload(device_kernel)
    monkeypatch.setattr(device, "device_gather", lambda _, uploads: device.TritonGather(uploads))
    try:
        yield
    finally:
        monkeypatch.undo()
        importlib.reload(device_kernel)


#: Windows along every axis, as the map tests draw them.
WINDOWS: dict[str, Any] = {"frame_mode": "window", "row_mode": "window", "column_mode": "window"}


def save(path: Path, values: np.ndarray) -> str:
    """``values`` as a zarr array at ``path``; returns the path."""
    import zarr

    array = zarr.open_array(str(path), mode="w", shape=values.shape, dtype=values.dtype)
    array[...] = values
    return str(path)


def map_config(root: Path, kind: str, **more: Any) -> Config:
    """A run of windows drawn from a weight map or a label volume of 6 x 30 x 20."""
    shape = (6, 30, 20)
    if kind == "weights":
        weights = np.random.default_rng(2).random(shape)
        weights[:, 10:] = 0.0
        maps: dict[str, Any] = {"weights": save(root / "weights.zarr", weights)}
    else:
        labels = np.zeros(shape, dtype=np.int16)
        labels[:, :, 12:] = 3
        maps = {
            "labels": save(root / "labels.zarr", labels),
            "label_ratios": {0: 1.0, 3: 1.0},
            "label_fraction": 0.75,
        }
    values = {"n_frames": 6, "n_rows": 30, "n_cols": 20, "depth": 2, "height": 5, "width": 4}
    return small_config(root, **values, **WINDOWS, **maps, **more)


def small_config(root: Path, **overrides: Any) -> Config:
    """Settings of a small run whose files all live under ``root``."""
    values: dict[str, Any] = {
        "frames": str(root / "frames"),
        "frames_store": str(root / "frames.zarr"),
        "out": str(root / "cubes.zarr"),
        "n_frames": 5,
        "n_rows": 12,
        "n_cols": 20,
        "cubes": 40,
        "dim": 6,
        "seed": 7,
        "shard_size": 4,
        "task_size": 8,
        "scheduler": "sync",
    }
    return Config(**{**values, **overrides})


def values_digest(path: str | Path) -> str:
    """sha256 over the values of a cube store's arrays (cubes and recipes) as zarr reads
    them: unlike a digest of its files, it does not change with the store's codecs."""
    import hashlib

    import zarr

    digest = hashlib.sha256()
    group = zarr.open_group(str(path), mode="r")
    for name in ("cubes", "columns", "rows", "frames"):
        array = np.ascontiguousarray(group[name][...])  # type: ignore[index]
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\n".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def without_checksums(path: str | Path) -> None:
    """Rewrite the arrays of the local store at ``path`` as daskcubes wrote them before
    chunks carried a crc32c: the same codecs less ``crc32c``, the same values."""
    import zarr
    from zarr.codecs import Crc32cCodec, ShardingCodec

    group = zarr.open_group(str(path), mode="r+")
    for name, array in list(group.arrays()):
        values = array[...]
        codecs = array.metadata.codecs  # type: ignore[union-attr]
        if isinstance(codecs[0], ShardingCodec):
            codecs = codecs[0].codecs
        compressors = [c for c in codecs[1:] if not isinstance(c, Crc32cCodec)]
        old = group.create_array(
            name,
            shape=array.shape,
            dtype=array.dtype,
            chunks=array.chunks,
            shards=array.shards,
            compressors=compressors or None,  # type: ignore[arg-type]
            fill_value=array.fill_value,
            dimension_names=array.metadata.dimension_names,  # type: ignore[union-attr]
            chunk_key_encoding=array.metadata.chunk_key_encoding,  # type: ignore[union-attr]
            overwrite=True,
        )
        old.with_config({"write_empty_chunks": True})[...] = values


def cli_args(config: Config) -> list[str]:
    """Command-line options that give ``config``."""
    args = []
    for name, value in config.model_dump().items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict):
            args += [flag, json.dumps(value)]
        elif value is not None:
            args += [flag, str(value)]
    return [*args, "--quiet"]


def source_frames(config: Config) -> np.ndarray:
    """The frame files read independently, with pandas, in natural name order."""
    paths = natsorted(Path(config.frames).iterdir())
    read = pd.read_csv if config.frame_format == "csv" else pd.read_parquet
    return np.stack([read(path).to_numpy() for path in paths])


def small_args(root: Path) -> list[str]:
    """Command-line options of a small run (synthetic frames) whose files all live under
    ``root``."""
    return [
        *("--frames", str(root / "frames"), "--synthetic"),
        *("--frames-store", str(root / "frames.zarr"), "--out", str(root / "cubes.zarr")),
        *("--n-frames", "4", "--n-rows", "10", "--n-cols", "12", "--dim", "5"),
        *("--cubes", "20", "--seed", "3", "--shard-size", "4", "--batch-size", "8", "--quiet"),
    ]


#: Definitions on frames of 6 frames x 30 rows x 20 columns.
DEFINITIONS: dict[str, dict[str, Any]] = {
    "row-window": {"row_mode": "window"},
    "frame-window": {"frame_mode": "window", "depth": 3},
    "frame-subset": {"frame_mode": "subset", "depth": 4},
    "column-window": {"column_mode": "window"},
    "sorted-columns": {"sorted_columns": True},
    "all-windows": {
        "frame_mode": "window",
        "row_mode": "window",
        "column_mode": "window",
        "depth": 2,
        "height": 7,
        "width": 3,
    },
    "non-cubic": {
        "height": 9,
        "width": 4,
        "row_mode": "window",
        "frame_mode": "subset",
        "depth": 5,
    },
}


KEY, SECRET = "daskcubes-test-key", "daskcubes-test-secret"


def with_bucket(url: str) -> Iterator[str]:
    """Test credentials in the environment (as users keep them) and a bucket 'cubes' on the
    S3 server at ``url``; yields ``url``, then puts the environment back."""
    saved = {name: os.environ.get(name) for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET)
    import s3fs

    s3fs.S3FileSystem(endpoint_url=url).mkdir("cubes")
    yield url
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def remote_files(endpoint: str, url: str) -> dict[str, bytes]:
    """Every object of a store on S3 by relative key, except the root group's metadata."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    root = url.removeprefix("s3://")
    return {
        key.removeprefix(root + "/"): fs.cat_file(key)
        for key in fs.find(root)
        if key != f"{root}/zarr.json"
    }


def recorded_shards(endpoint: str, url: str) -> int:
    """Shards in the completion record of the store at ``url`` on S3 (0 before it exists)."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    try:
        attrs = json.loads(fs.cat_file(f"{url.removeprefix('s3://')}/zarr.json"))
    except FileNotFoundError:
        return 0
    progress = attrs["attributes"]["daskcubes"].get("progress") or {}
    return sum(stop - start for start, stop in progress.get("shards", []))


class ActOnDone:
    """An executor that runs ``action(client)`` when the ``at``-th tasks of a graph (by
    default the first) finish, while the rest of the run is still outstanding."""

    def __init__(
        self,
        executor: DistributedExecutor,
        action: Callable[[Client], None],
        at: Sequence[int] = (1,),
    ) -> None:
        self.client = executor.client
        self._executor = executor
        self._action = action
        self._at = set(at)

    @property
    def where(self) -> str:
        return self._executor.where

    def close(self) -> None:
        """The cluster is the caller's: left running."""

    def run(self, dsk: Mapping[Key, Any], keys: Sequence[Key], on_done: OnDone) -> None:
        done = 0

        def act_then_report(key: Key) -> None:
            nonlocal done
            on_done(key)
            done += 1
            if done in self._at:
                self._action(self.client)

        self._executor.run(dsk, keys, act_then_report)

    def publish(self, progress: dict[str, Any]) -> None:
        self._executor.publish(progress)

    def worker_memory(self) -> int:
        return self._executor.worker_memory()

    def on_each_worker(self, function: Callable[..., object], *args: Any) -> None:
        self._executor.on_each_worker(function, *args)

    def worker_threads(self) -> int:
        return self._executor.worker_threads()


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


#: ``python -m dask``, as the tests start its scheduler and workers.
DASK = [sys.executable, "-m", "dask"]


@contextmanager
def dask_processes(root: Path, commands: list[list[str]], n_workers: int) -> Iterator[str]:
    """Run real ``dask scheduler`` and ``dask worker`` ``commands`` (each given the same
    scheduler file under ``root``, with daskcubes importable and logs under ``root``);
    yield the scheduler's address once ``n_workers`` workers joined, and stop them all."""
    from distributed import Client

    scheduler_file = root / "scheduler.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for i, command in enumerate(commands):
            with (root / f"process-{i}.log").open("wb") as log:  # the process keeps a copy
                processes.append(
                    subprocess.Popen(
                        [*command, "--scheduler-file", str(scheduler_file)],
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        with Client(scheduler_file=str(scheduler_file), timeout=60) as client:
            client.wait_for_workers(n_workers, timeout=60)
            address = client.scheduler.address
        yield address
    finally:
        _stop(processes)


# -- a run killed mid-way, for certain --------------------------------------------------

#: ``python -c`` code that runs ``python -m daskcubes.workflow ARGS`` (``argv[3:]``) whose
#: driver, once its completion record holds ``argv[1]`` shards, saves the record, touches
#: the file ``argv[2]`` and sleeps: the run can then neither finish nor mark its store
#: complete before it is killed (the task threads may still write shards the record lacks,
#: as in a run killed between two saves).
_STOPS_AT_SHARDS = """
import runpy, sys, time
from pathlib import Path
from daskcubes.io.progress import ProgressRecord

at, stopped = int(sys.argv[1]), Path(sys.argv[2])
finished = ProgressRecord.finished

def finished_then_stop(self, kind, units):
    finished(self, kind, units)
    if kind == "shards" and len(self.done[kind]) >= at:
        self.save()
        stopped.touch()
        time.sleep(3600)

ProgressRecord.finished = finished_then_stop
sys.argv = ["daskcubes.workflow", *sys.argv[3:]]
runpy.run_module("daskcubes.workflow", run_name="__main__", alter_sys=True)
"""


@dataclass(frozen=True)
class Killed:
    """How a run meant to be killed mid-way ended."""

    #: Its exit status: ``-signal.SIGKILL`` once killed.
    status: int
    #: Whether its driver had stopped at the shard count asked for when it was killed.
    stopped: bool
    #: What it printed (stdout and stderr).
    output: str


def kill_mid_run(
    args: list[str], at_shards: int, root: Path, timeout: float = 120, sig: int = signal.SIGKILL
) -> Killed:
    """Run ``python -m daskcubes.workflow ARGS`` in a process group of its own, stop its
    driver once ``at_shards`` shards are in the completion record, and SIGKILL the group
    (or send ``sig`` to the driver: ``SIGINT`` is a Ctrl-C);
    a run that ends before it stops is not killed, one that does not stop within
    ``timeout`` seconds is killed then (``stopped`` is then false). Files go under ``root``.
    """
    root.mkdir(parents=True, exist_ok=True)
    stopped, log = root / "stopped", root / "killed.log"
    command = [sys.executable, "-c", _STOPS_AT_SHARDS, str(at_shards), str(stopped), *args]
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            env={**os.environ, "PYTHONPATH": path},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while not stopped.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        if process.poll() is None and sig != signal.SIGKILL and stopped.exists():
            process.send_signal(sig)
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=60)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return Killed(process.returncode, stopped.exists(), log.read_text())
