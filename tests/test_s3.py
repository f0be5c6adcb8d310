"""Frames and stores on object storage: a real S3-compatible server (moto's standalone
server, in its own process) on loopback, started and stopped by the fixtures here."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import s3fs
import xarray as xr

from daskcubes import open_cubes
from daskcubes.cli import main
from daskcubes.testing import s3_server, store_files
from tests.helpers import KEY, SECRET, recorded_shards, remote_files

pytestmark = pytest.mark.slow


@pytest.fixture
def endpoint(s3_endpoint: str) -> str:
    """The session's S3 server (a bucket 'cubes'; credentials in the environment)."""
    return s3_endpoint


@pytest.fixture
def bucket(endpoint: str, request: pytest.FixtureRequest) -> str:
    """A fresh prefix of the bucket for one test."""
    return f"s3://cubes/s3/{request.node.name}"


def options(endpoint: str) -> str:
    return json.dumps({"endpoint_url": endpoint})


def run_args(endpoint: str, frames: str, frames_store: str, out: str) -> list[str]:
    return [
        *("--frames", frames, "--frames-store", frames_store, "--out", out),
        *("--n-frames", "3", "--n-rows", "20", "--n-cols", "30", "--dim", "8"),
        *("--cubes", "32", "--shard-size", "4", "--batch-size", "8", "--seed", "2"),
        *("--storage-options", options(endpoint), "--quiet"),
    ]


def test_run_on_s3_equals_the_local_run(endpoint: str, bucket: str, tmp_path: Path) -> None:
    remote = run_args(endpoint, f"{bucket}/frames", f"{bucket}/f.zarr", f"{bucket}/c.zarr")
    local = run_args(
        endpoint, str(tmp_path / "frames"), str(tmp_path / "f.zarr"), str(tmp_path / "c.zarr")
    )
    assert main(["run", *remote, "--synthetic", "--frame-format", "csv"]) == 0
    assert main(["run", *local, "--synthetic", "--frame-format", "csv"]) == 0
    assert remote_files(endpoint, f"{bucket}/c.zarr") == store_files(tmp_path / "c.zarr")
    assert remote_files(endpoint, f"{bucket}/f.zarr") == store_files(tmp_path / "f.zarr")

    store = open_cubes(f"{bucket}/c.zarr", storage_options={"endpoint_url": endpoint})
    expected = open_cubes(str(tmp_path / "c.zarr"))[:]
    assert np.array_equal(store[:], expected)
    dataset = xr.open_zarr(
        f"{bucket}/c.zarr", storage_options={"endpoint_url": endpoint}, consolidated=False
    )
    assert np.array_equal(dataset["cubes"].values, expected)
    assert main(["verify", f"{bucket}/c.zarr", "--against", f"{bucket}/f.zarr",
                 "--storage-options", options(endpoint)]) == 0  # fmt: skip


#: Shards of the interrupted run, one cube each.
SHARDS = 400


def test_interrupted_run_on_s3_resumes_to_the_same_bytes(
    endpoint: str, bucket: str, tmp_path: Path
) -> None:
    frames_store = f"{bucket}/f.zarr"
    args = run_args(endpoint, str(tmp_path / "frames"), frames_store, f"{bucket}/c.zarr")
    # Enough shards that the run outlasts several saves of its completion record (each
    # wait is ten times the last save's cost: seconds on a loaded machine), so that the
    # kill lands between the first recorded shard and the last.
    args += ["--cubes", str(SHARDS), "--shard-size", "1", "--batch-size", "1"]
    assert main(["generate", *args, "--synthetic"]) == 0
    assert main(["ingest", *args]) == 0
    process = subprocess.Popen(
        [sys.executable, "-m", "daskcubes.workflow", "sample", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while recorded_shards(endpoint, f"{bucket}/c.zarr") == 0:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert 0 < recorded_shards(endpoint, f"{bucket}/c.zarr") < SHARDS

    assert main(["sample", *args, "--resume"]) == 0
    clean = [*args, "--out", str(tmp_path / "clean.zarr")]
    assert main(["sample", *clean]) == 0
    assert remote_files(endpoint, f"{bucket}/c.zarr") == store_files(tmp_path / "clean.zarr")


def test_missing_bucket(endpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = run_args(endpoint, "s3://nobucket/frames", "s3://nobucket/f.zarr", "s3://nobucket/c")
    assert main(["ingest", *args]) == 2
    assert "bucket 'nobucket' does not exist" in capsys.readouterr().err
    local = run_args(endpoint, str(tmp_path / "frames"), str(tmp_path / "f.zarr"), "s3://no/c")
    assert main(["run", *local, "--synthetic"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "daskcubes: error: cube store 's3://no/c': bucket 'no' does not exist"


def test_credentials_never_reach_attributes_or_output(
    endpoint: str, bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with_keys = json.dumps({"endpoint_url": endpoint, "key": KEY, "secret": SECRET})
    args = run_args(endpoint, str(tmp_path / "frames"), f"{bucket}/f.zarr", f"{bucket}/c.zarr")
    assert main(["run", *args, "--synthetic", "--storage-options", with_keys]) == 0
    printed = capsys.readouterr()
    everything = b"".join(remote_files(endpoint, f"{bucket}/c.zarr").values())
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    everything += fs.cat_file(f"{bucket.removeprefix('s3://')}/c.zarr/zarr.json")
    for secret in (KEY, SECRET):
        assert secret.encode() not in everything
        assert secret not in printed.out + printed.err


def test_bad_credentials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A server that checks credentials (it knows no user) rejects ours: one clear line."""
    with s3_server(INITIAL_NO_AUTH_ACTION_COUNT="0") as endpoint:
        args = run_args(endpoint, str(tmp_path / "frames"), str(tmp_path / "f.zarr"), "s3://c/c")
        assert main(["run", *args, "--synthetic"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "cube store 's3://c/c': access denied" in err and "credentials" in err
