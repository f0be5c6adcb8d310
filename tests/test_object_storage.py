"""Object storage that cannot be corrupted: one writer per store (the lease), outages
survived or ended in one line, and workers that cannot see a store refused before any
task runs.

A real S3-compatible server (moto's, in its own process) on loopback; runs reach it
through :class:`~daskcubes.testing.OutageProxy` where a test cuts the connections. Runs
that must be separate (two writers, a run killed with SIGKILL) are separate processes,
each with its own temporary directory, as runs on two machines would be.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import s3fs
from dask.typing import Key
from distributed import Client

from daskcubes import jobs
from daskcubes.cli import main
from daskcubes.config import Config
from daskcubes.errors import UserError
from daskcubes.io.layout import open_group, store_attrs
from daskcubes.io.lease import Holder, lease_url
from daskcubes.io.storage import Storage
from daskcubes.runtime.executors import DistributedExecutor, LocalExecutor, OnDone
from daskcubes.testing import OutageProxy, store_files
from tests.helpers import (
    DASK,
    KEY,
    SECRET,
    ActOnDone,
    dask_processes,
    recorded_shards,
    remote_files,
    small_config,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FRAMES_STORE = "s3://cubes/object-storage/frames.zarr"


@pytest.fixture(scope="module")
def endpoint(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The session's S3 server, its bucket 'cubes' holding a small frames store (3 x 20 x 30)."""
    frames = tmp_path_factory.mktemp("frames") / "frames"
    args = ["--frames", str(frames), "--frames-store", FRAMES_STORE, "--quiet"]
    args += ["--n-frames", "3", "--n-rows", "20", "--n-cols", "30", "--dim", "8"]
    args += ["--storage-options", json.dumps({"endpoint_url": s3_endpoint})]
    assert main(["generate", *args, "--synthetic"]) == 0
    assert main(["ingest", *args]) == 0
    return s3_endpoint


def out_url(request: pytest.FixtureRequest) -> str:
    return (
        f"s3://cubes/object-storage/{re.sub(r'[^a-z0-9]+', '-', request.node.name.lower())}/c.zarr"
    )


def sample_args(endpoint: str, out: str, cubes: int = 200, seed: int = 2) -> list[str]:
    """A sampling run of one cube per task, so that it lasts long enough to interrupt."""
    return [
        *("sample", "--frames-store", FRAMES_STORE, "--out", out, "--dim", "8"),
        *("--cubes", str(cubes), "--shard-size", "1", "--batch-size", "1", "--seed", str(seed)),
        *("--scheduler", "threads", "--workers", "2"),
        *("--storage-options", json.dumps({"endpoint_url": endpoint}), "--quiet"),
    ]


def start(command: list[str], tmp: Path) -> subprocess.Popen[str]:
    """``python -m daskcubes.workflow COMMAND`` in its own process and temporary directory."""
    tmp.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "TMPDIR": str(tmp),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def workflow(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "daskcubes.workflow", *args]


def wait_for_progress(endpoint: str, out: str, process: subprocess.Popen[str]) -> None:
    """Wait until the run has recorded a finished shard (it is then mid-run)."""
    deadline = time.monotonic() + 120
    while recorded_shards(endpoint, out) == 0:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)


def clean_store(endpoint: str, tmp_path: Path, seed: int = 2, cubes: int = 200) -> dict[str, bytes]:
    """The files of the same sampling run, uninterrupted, into a local store."""
    out = tmp_path / f"clean-{seed}.zarr"
    assert main(sample_args(endpoint, str(out), cubes, seed)) == 0
    return store_files(out)


def stored_attrs(endpoint: str, out: str) -> dict[str, Any]:
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    attrs = json.loads(fs.cat_file(f"{out.removeprefix('s3://')}/zarr.json"))
    return dict(attrs["attributes"]["daskcubes"])


# -- one writer per store -----------------------------------------------------------------


@pytest.mark.parametrize("staggered", [False, True], ids=["together", "staggered"])
def test_of_two_runs_on_one_store_exactly_one_writes(
    endpoint: str, tmp_path: Path, request: pytest.FixtureRequest, staggered: bool
) -> None:
    out = out_url(request)
    first = start(workflow(sample_args(endpoint, out, cubes=400, seed=1)), tmp_path / "a")
    if staggered:
        wait_for_progress(endpoint, out, first)
    # As a colleague, a retried job or a second terminal would start it.
    second_args = [*sample_args(endpoint, out, cubes=400, seed=2), "--overwrite"]
    second = start(workflow(second_args), tmp_path / "b")
    errors = {process: process.communicate()[1] for process in (first, second)}

    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, 2], errors
    winner, loser = (first, second) if first.returncode == 0 else (second, first)
    refusal = errors[loser].strip()
    assert len(refusal.splitlines()) == 1, refusal
    assert refusal.startswith(f"daskcubes: error: cube store '{out}': another daskcubes run")
    assert f"process {winner.pid}" in refusal and "--resume" in refusal
    seed = 1 if winner is first else 2
    assert remote_files(endpoint, out) == clean_store(endpoint, tmp_path, seed, cubes=400)
    assert stored_attrs(endpoint, out)["complete"]


def unshare_works(*namespaces: str) -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", *namespaces, "true"], capture_output=True).returncode == 0


def on_another_host(command: list[str], host: str) -> list[str]:
    """``command`` in its own UTS namespace under the host name ``host``: a run of another
    machine, as far as the lease can tell."""
    return ["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$@"', "sh", *command]


@pytest.mark.skipif(not unshare_works("--uts"), reason="needs unshare --uts (root)")
def test_the_lease_of_a_killed_run_expires_and_resume_then_completes(
    endpoint: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = out_url(request)
    args = [*sample_args(endpoint, out), "--lease-seconds", "6"]
    process = start(on_another_host(workflow(args), "elsewhere"), tmp_path / "a")
    wait_for_progress(endpoint, out, process)
    process.send_signal(signal.SIGKILL)
    process.communicate()

    assert main([*args, "--resume"]) == 2  # its lease still lives
    refusal = capsys.readouterr().err.strip()
    assert len(refusal.splitlines()) == 1
    assert "another daskcubes run is writing it (host elsewhere" in refusal
    assert not stored_attrs(endpoint, out)["complete"]

    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    expires = json.loads(fs.cat_file(f"{out.removeprefix('s3://')}.lease"))["expires"]
    while time.time() <= expires:
        time.sleep(0.2)
    assert main([*args, "--resume"]) == 0
    assert remote_files(endpoint, out) == clean_store(endpoint, tmp_path)
    assert not fs.exists(f"{out.removeprefix('s3://')}.lease")  # released at the end


# -- outages ------------------------------------------------------------------------------


def test_a_short_outage_and_a_flapping_link_are_survived_without_a_traceback(
    endpoint: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    out = out_url(request)
    with OutageProxy(endpoint.removeprefix("http://")) as proxy:
        args = [*sample_args(proxy.endpoint, out), "--storage-retry-seconds", "30"]
        process = start(workflow(args), tmp_path / "a")
        wait_for_progress(endpoint, out, process)
        proxy.outage(3)
        time.sleep(4)
        for _ in range(5):  # then a flapping link: every connection reset as it is used
            proxy.outage(0)
            time.sleep(0.3)
        output, errors = process.communicate(timeout=240)
    assert process.returncode == 0, errors
    assert errors == ""  # not a line of the retries, nor of aiohttp's unretrieved tasks
    assert "cube store s3://" in output
    assert remote_files(endpoint, out) == clean_store(endpoint, tmp_path)


def test_a_long_outage_ends_in_one_line_and_resume_then_completes(
    endpoint: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    out = out_url(request)
    with OutageProxy(endpoint.removeprefix("http://")) as proxy:
        args = [*sample_args(proxy.endpoint, out), "--storage-retry-seconds", "2"]
        process = start(workflow(args), tmp_path / "a")
        wait_for_progress(endpoint, out, process)
        proxy.outage(3600)
        errors = process.communicate(timeout=240)[1].strip()
        assert process.returncode == 2
        assert len(errors.splitlines()) == 1, errors
        assert errors.startswith(f"daskcubes: error: cube store '{out}': storage {proxy.endpoint}")
        assert errors.endswith("run the same command with --resume to finish it")
        assert not stored_attrs(endpoint, out)["complete"]

        proxy.outage(0)  # the server is back
        # Its lease is left (the run could not delete it), but its process is gone.
        assert main([*args, "--resume"]) == 0
    assert remote_files(endpoint, out) == clean_store(endpoint, tmp_path)


# -- distributed --------------------------------------------------------------------------


def test_a_worker_killed_while_writing_to_s3_leaves_the_same_bytes(
    endpoint: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    local_cluster: DistributedExecutor,
) -> None:
    out = out_url(request)
    # Credentials in the options, which travel with the tasks to the workers.
    options = {"endpoint_url": endpoint, "key": KEY, "secret": SECRET}
    config = small_config(
        tmp_path, frames_store=FRAMES_STORE, out=out, storage_options=options, cubes=64, dim=8
    )
    killed: list[int] = []

    def kill_a_worker(client: Client) -> None:
        killed.append(next(iter(client.run(os.getpid).values())))
        os.kill(killed[0], signal.SIGKILL)

    jobs.sample(config, show_progress=False, executor=ActOnDone(local_cluster, kill_a_worker))
    assert killed
    clean = Config.model_validate({**config.model_dump(), "out": str(tmp_path / "clean.zarr")})
    jobs.sample(clean, show_progress=False)
    assert remote_files(endpoint, out) == store_files(clean.out)


@pytest.fixture
def cluster_without_the_disk(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A `dask scheduler` and a `dask worker` whose mount namespace has an empty tmpfs
    over ``hidden``, as a worker on another machine sees the driver's folder; yields the
    scheduler's address and ``hidden``."""
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    private = ["unshare", "--mount", "sh", "-c", f'mount -t tmpfs tmpfs {hidden} && exec "$@"']
    commands = [
        [*DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"],
        [
            *private,
            "sh",
            *DASK,
            "worker",
            "--nthreads",
            "1",
            "--host",
            "127.0.0.1",
            "--no-dashboard",
        ],
    ]
    with dask_processes(tmp_path, commands, 1) as address:
        yield address, hidden


@pytest.mark.skipif(not unshare_works("--mount"), reason="needs unshare --mount (root)")
def test_workers_that_cannot_see_a_store_are_refused_before_any_task(
    cluster_without_the_disk: tuple[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    address, hidden = cluster_without_the_disk
    seen, unseen = tmp_path / "frames.zarr", hidden / "frames.zarr"
    frames = ["--frames", str(tmp_path / "frames"), "--dim", "8", "--quiet"]
    assert main(["generate", *frames, "--n-frames", "3", "--n-rows", "20", "--n-cols", "30"]) == 0
    for frames_store in (seen, unseen):
        assert main(["ingest", *frames, "--frames-store", str(frames_store)]) == 0

    def sample_on_cluster(frames_store: Path, out: Path) -> str:
        args = ["sample", "--frames-store", str(frames_store), "--out", str(out), "--dim", "8"]
        assert main([*args, "--scheduler", address, "--quiet"]) == 2
        dashboard, error = capsys.readouterr().err.strip().splitlines()  # nothing else
        assert dashboard.startswith("daskcubes: Dask dashboard")
        assert f"the workers of {address} cannot see" in error
        assert "object-store URL" in error and "every worker mounts" in error
        assert not out.exists()  # refused before the store was created
        return error

    error = sample_on_cluster(seen, hidden / "c.zarr")
    assert error.startswith(f"daskcubes: error: cube store '{hidden / 'c.zarr'}':")
    error = sample_on_cluster(unseen, tmp_path / "c2.zarr")
    assert error.startswith(f"daskcubes: error: frames store '{unseen}':")


# -- the lease, locally -------------------------------------------------------------------


@dataclass(frozen=True)
class BreaksTheLease(LocalExecutor):
    """The single-threaded executor, which writes another run's lease over this run's as
    its first task ends, as ``--break-lease`` elsewhere would."""

    lease: Path = Path()

    def run(self, dsk: Mapping[Key, Any], keys: Sequence[Key], on_done: OnDone) -> None:
        def break_then_report(key: Key) -> None:
            if b"elsewhere" not in self.lease.read_bytes():
                other = Holder("elsewhere", 1, "other-run", "now", time.time() + 60)
                self.lease.write_bytes(other.to_bytes())
            on_done(key)

        super().run(dsk, keys, break_then_report)


def test_a_run_that_lost_its_lease_never_marks_the_store_complete(config: Config) -> None:
    jobs.generate(config, show_progress=False)
    jobs.ingest(config, show_progress=False)
    breaking = BreaksTheLease("sync", lease=Path(lease_url(config.out)))
    with pytest.raises(UserError, match="this run lost its lease"):
        jobs.sample(config, show_progress=False, executor=breaking)
    assert not store_attrs(open_group(config.out, "cube store", Storage()))["complete"]


def test_storage_without_conditional_writes_is_refused_unless_asked(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs.generate(config, show_progress=False)
    jobs.ingest(config, show_progress=False)
    args = ["sample", "--frames-store", config.frames_store, "--dim", "6", "--quiet"]
    assert main([*args, "--out", "memory://refused.zarr"]) == 2
    assert capsys.readouterr().err.strip() == (
        "daskcubes: error: cube store 'memory://refused.zarr': memory:// offers no conditional "
        "write, so nothing would stop a second run from writing this store at the same time "
        "and corrupting it; write to a local path or s3://, or pass --write-without-lease if "
        "no other run can write it"
    )
    assert main([*args, "--out", "memory://asked.zarr", "--write-without-lease"]) == 0
