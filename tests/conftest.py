from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daskcubes import jobs
from daskcubes.config import PRESETS, Config
from daskcubes.runtime.executors import DistributedExecutor

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


def cuda_available() -> bool:
    """Whether torch is installed and sees a CUDA device."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``gpu`` skip where torch sees no CUDA device."""
    if item.get_closest_marker("gpu") is not None and not cuda_available():
        pytest.skip("needs a CUDA device")


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return small_config(tmp_path)


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DistributedExecutor]:
    """A 2-worker LocalCluster on loopback, started as a distributed run starts one, shared
    by the session and stopped at its end."""
    settings = small_config(
        tmp_path_factory.mktemp("cluster"),
        scheduler="distributed",
        workers=2,
        threads_per_worker=1,
        dashboard_address=DASHBOARD,
    )
    with jobs.executor_for(settings) as executor:
        assert isinstance(executor, DistributedExecutor)
        yield executor


@pytest.fixture(
    params=[
        *(name for name in EXECUTORS if name != "distributed"),
        pytest.param("distributed", marks=pytest.mark.slow),
    ]
)
def executor_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings that run on one executor of the matrix; each executor is a test id.

    The LocalCluster starts only when a ``distributed`` test runs.
    """
    settings = EXECUTORS[request.param]
    if request.param == "distributed":
        cluster: DistributedExecutor = request.getfixturevalue("local_cluster")
        settings = {**settings, "scheduler": cluster.client.scheduler_info()["address"]}
    return settings
