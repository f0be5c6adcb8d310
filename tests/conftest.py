from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from daskcubes import jobs
from daskcubes.config import Config
from daskcubes.runtime.executors import DistributedExecutor
from daskcubes.testing import s3_server
from tests.helpers import DASHBOARD, EXECUTORS, small_config, with_bucket

# Timing never decides a test: a first example that loads and compiles numba's code (half
# a second) must not fail hypothesis's deadline.
settings.register_profile("daskcubes", deadline=None)
settings.load_profile("daskcubes")


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


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """One S3-compatible server (moto's, in its own process) on loopback for the session
    (for each xdist worker), with a bucket 'cubes' and the test credentials in the
    environment, as users keep them; each test keeps to a prefix of its own."""
    with s3_server() as url:
        yield from with_bucket(url)
