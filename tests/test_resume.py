"""Runs that survive: real processes killed mid-run, then resumed to the same bytes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from daskcubes import UserError, open_cubes
from daskcubes.cli import main
from daskcubes.io import layout
from daskcubes.io import schema as schema_module
from daskcubes.io.frames import find_frame_files
from daskcubes.io.layout import mark_complete, remove_leftovers, store_lock
from daskcubes.io.schema import CubeSchema
from daskcubes.io.sources import files_source
from daskcubes.io.storage import Storage
from daskcubes.runtime.tasks import ingest_tasks
from daskcubes.testing import assert_stores_identical, store_files
from tests.helpers import kill_mid_run

pytestmark = pytest.mark.slow


def frame_args(root: Path, n_frames: int = 6, fmt: str = "parquet") -> list[str]:
    return [
        *("--frames", str(root / "frames"), "--frames-store", str(root / "frames.zarr")),
        *("--n-frames", str(n_frames), "--n-rows", "40", "--n-cols", "60", "--seed", "5"),
        *("--dim", "16"),
        *("--frame-format", fmt, "--quiet"),
    ]


def cube_args(root: Path, out: str = "cubes.zarr") -> list[str]:
    # Many one-cube tasks, so that a run lasts long enough to be killed half-way.
    return [
        *frame_args(root),
        *("--out", str(root / out), "--cubes", "600"),
        *("--shard-size", "1", "--batch-size", "1", "--workers", "2"),
    ]


@pytest.fixture
def frames_ready(tmp_path: Path) -> Path:
    assert main(["generate", *frame_args(tmp_path), "--synthetic"]) == 0
    assert main(["ingest", *frame_args(tmp_path)]) == 0
    return tmp_path


def start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "daskcubes.workflow", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def recorded(store: Path, kind: str) -> int:
    """Units of ``kind`` the store's completion record lists as finished."""
    try:
        attrs = json.loads((store / "zarr.json").read_text())["attributes"]["daskcubes"]
    except (OSError, ValueError, KeyError):
        return 0
    ranges = (attrs.get("progress") or {}).get(kind, [])
    return sum(stop - start for start, stop in ranges)


def interrupt_after_progress(
    process: subprocess.Popen[str], store: Path, kind: str, sig: int
) -> None:
    """Send ``sig`` to ``process`` once the store records some finished ``kind`` units."""
    deadline = time.monotonic() + 120
    while recorded(store, kind) == 0:
        if process.poll() is not None:
            pytest.fail(f"run ended before it could be interrupted: {process.communicate()}")
        assert time.monotonic() < deadline, "run recorded no progress"
        time.sleep(0.02)
    process.send_signal(sig)


def test_sigkill_mid_sample_then_resume_gives_the_uninterrupted_store(frames_ready: Path) -> None:
    root = frames_ready
    killed = kill_mid_run(["sample", *cube_args(root)], 200, root / "kill")
    assert killed.stopped and killed.status == -signal.SIGKILL, killed.output
    finished_before = recorded(root / "cubes.zarr", "shards")
    assert 200 <= finished_before < 600

    with pytest.raises(UserError, match="incomplete"):
        open_cubes(str(root / "cubes.zarr"))
    assert len(open_cubes(str(root / "cubes.zarr"), allow_incomplete=True)) == 600
    assert main(["sample", *cube_args(root)]) == 2  # no silent overwrite, no silent resume

    resumed = start(["sample", *cube_args(root), "--resume"])
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    made_before = int(out.split("cubes (")[1].split(" made by an earlier run")[0])
    assert made_before >= finished_before  # only unfinished batches were redone

    assert main(["sample", *cube_args(root, out="clean.zarr")]) == 0
    assert_stores_identical(root / "clean.zarr", root / "cubes.zarr")
    assert open_cubes(str(root / "cubes.zarr")).complete


def test_ctrl_c_exits_130_and_says_how_to_resume(frames_ready: Path) -> None:
    root = frames_ready
    interrupted = kill_mid_run(["sample", *cube_args(root)], 200, root / "kill", sig=signal.SIGINT)
    assert interrupted.stopped and interrupted.status == 130, interrupted.output
    assert interrupted.output.strip().splitlines()[-1] == (
        "daskcubes: interrupted; run the same command with --resume to finish"
    )
    assert main(["sample", *cube_args(root), "--resume"]) == 0
    assert main(["sample", *cube_args(root, out="clean.zarr")]) == 0
    assert_stores_identical(root / "clean.zarr", root / "cubes.zarr")


def test_sigkill_mid_ingest_then_resume(tmp_path: Path) -> None:
    args = frame_args(tmp_path, n_frames=300, fmt="csv")
    assert main(["generate", *args, "--synthetic"]) == 0
    process = start(["ingest", *args, "--scheduler", "sync"])
    interrupt_after_progress(process, tmp_path / "frames.zarr", "frames", signal.SIGKILL)
    process.communicate()
    assert 0 < recorded(tmp_path / "frames.zarr", "frames") < 300
    assert main(["ingest", *args, "--resume"]) == 0
    clean = [*args, "--frames-store", str(tmp_path / "clean.zarr")]
    assert main(["ingest", *clean]) == 0
    assert_stores_identical(tmp_path / "clean.zarr", tmp_path / "frames.zarr")


@pytest.fixture
def interrupted(frames_ready: Path) -> Path:
    killed = kill_mid_run(["sample", *cube_args(frames_ready)], 200, frames_ready / "kill")
    assert killed.stopped and killed.status == -signal.SIGKILL, killed.output
    return frames_ready


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (["--seed", "6"], "seed=5; this run has seed=6"),
        (["--dim", "15"], "height=16; this run has height=15"),
        (["--cubes", "500"], "n_cubes=600; this run has n_cubes=500"),
        (["--dtype", "float32"], "dtype='float64'; this run has dtype='float32'"),
        (["--shard-size", "3", "--batch-size", "3"], "shard_size=1; this run has shard_size=3"),
    ],
)
def test_resume_refuses_changed_settings(
    interrupted: Path, capsys: pytest.CaptureFixture[str], change: list[str], named: str
) -> None:
    assert main(["sample", *cube_args(interrupted), "--resume", *change]) == 2
    err = capsys.readouterr().err
    assert named in err and "Resume needs the same settings" in err


def test_resume_refuses_a_different_frames_store(
    interrupted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = [*frame_args(interrupted), "--frames", str(interrupted / "other")]
    assert main(["generate", *other, "--synthetic", "--seed", "9"]) == 0
    assert main(["ingest", *other, "--overwrite"]) == 0
    assert main(["sample", *cube_args(interrupted), "--resume"]) == 2
    assert "frames_fingerprint" in capsys.readouterr().err


def test_a_second_writer_is_refused(frames_ready: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = frames_ready / "cubes.zarr"
    with store_lock(str(out), "cube store"):
        assert main(["sample", *cube_args(frames_ready)]) == 2
    assert "another daskcubes run is writing it" in capsys.readouterr().err
    assert main(["sample", *cube_args(frames_ready)]) == 0  # the lock went with its holder


def test_resume_of_a_finished_run_does_nothing(frames_ready: Path) -> None:
    args = ["sample", *cube_args(frames_ready), "--cubes", "20"]
    assert main(args) == 0
    before = (frames_ready / "cubes.zarr" / "zarr.json").read_bytes()
    assert main([*args, "--resume"]) == 0
    assert (frames_ready / "cubes.zarr" / "zarr.json").read_bytes() == before


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 3 MiB tmpfs, mounted for the test (needs root, as on CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=False
    )
    if done.returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_ends_with_one_line_and_resumes_once_space_is_freed(
    frames_ready: Path, small_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*frame_args(frames_ready), "--cubes", "400", "--shard-size", "4"]
    args += ["--task-size", "4"]
    full = [*args, "--out", str(small_disk / "cubes.zarr")]  # 400 x 12 KiB = 4.8 MB > 3 MiB
    assert main(["sample", *full]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "No space left on device" in err and "--resume" in err
    assert f"cube store '{small_disk / 'cubes.zarr'}'" in err  # names the store being written
    assert not json.loads((small_disk / "cubes.zarr" / "zarr.json").read_text())["attributes"][
        "daskcubes"
    ]["complete"]

    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    assert main(["sample", *full, "--resume"]) == 0
    assert main(["sample", *args, "--out", str(frames_ready / "clean.zarr")]) == 0
    assert_stores_identical(frames_ready / "clean.zarr", small_disk / "cubes.zarr")
    assert not os.path.exists(small_disk / "cubes.zarr.lock")


def test_resume_removes_temporary_files_of_interrupted_writes(frames_ready: Path) -> None:
    out = frames_ready / "cubes.zarr"
    assert main(["sample", *frame_args(frames_ready), "--out", str(out), "--cubes", "8"]) == 0
    expected = store_files(out)
    schema = CubeSchema.from_attrs(open_cubes(str(out)).attrs["plan"])
    shard_dir = (out / schema.shard_key(0)).parent
    # Left by a killed writer: zarr's own temporary naming, and daskcubes' atomic writer's.
    (shard_dir / "0.3f2a.partial").write_bytes(b"torn")
    (shard_dir / ".0.9c1b.partial").write_bytes(b"torn")
    remove_leftovers(out)
    assert store_files(out) == expected


def test_ingest_tasks_are_one_per_unfinished_frame(frames_ready: Path) -> None:
    storage = Storage.of()
    source = files_source(find_frame_files(str(frames_ready / "frames"), storage), storage)
    work = ingest_tasks([("frames", source)], str(frames_ready / "frames.zarr"), storage, {1})
    n_frames = source.shape[0]
    assert sorted(units for _, units in work.finishes.values()) == [
        [i] for i in range(n_frames) if i != 1
    ]
    # The graph holds the reads of every frame, and a write of each unfinished one.
    assert set(work.finishes) < set(work.graph)
    assert len(work.graph) == n_frames + len(work.finishes)


def test_a_complete_store_holds_no_temporary_files_of_lost_writers(frames_ready: Path) -> None:
    out = frames_ready / "cubes.zarr"
    args = ["sample", *frame_args(frames_ready), "--out", str(out), "--cubes", "8"]
    assert main(args) == 0
    expected = store_files(out)
    # What a worker killed in the middle of a write leaves, while its task runs again.
    schema = CubeSchema.from_attrs(open_cubes(str(out)).attrs["plan"])
    (out / schema.shard_key(0)).with_name(".0.5e1f.partial").write_bytes(b"torn")
    mark_complete(str(out), Storage.of(), cubes=8)
    assert store_files(out) == expected


def test_a_store_of_an_older_layout_resumes_in_it_and_verifies(
    frames_ready: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store made when chunk keys were ``c/i/0/0/0`` (a folder per shard), interrupted,
    keeps them when resumed, and reads and verifies as before."""
    args = ["sample", *cube_args(frames_ready), "--cubes", "20"]
    assert main([*args, "--out", str(frames_ready / "new.zarr")]) == 0
    older = {"name": "default", "separator": "/"}
    with monkeypatch.context() as patch:
        patch.setattr(layout, "CHUNK_KEY_ENCODING", older)
        patch.setattr(schema_module, "CHUNK_KEY_ENCODING", older)
        assert main(args) == 0
    out = frames_ready / "cubes.zarr"
    n_shards = len(list((out / "cubes" / "c").glob("*/0/0/0")))
    assert n_shards > 2 and not list((out / "cubes").glob("c.*"))
    group = zarr.open_group(str(out), mode="r+")
    attrs: dict[str, Any] = dict(group.attrs["daskcubes"])  # type: ignore[arg-type]
    attrs["complete"], attrs["progress"] = None, {"shards": [[0, 2]], "recipes": [[0, 1]]}
    group.attrs["daskcubes"] = attrs  # as a run killed after two shards leaves it
    for shard in range(2, n_shards):
        shutil.rmtree(out / "cubes" / "c" / str(shard))
    assert main([*args, "--resume"]) == 0
    assert len(list((out / "cubes" / "c").glob("*/0/0/0"))) == n_shards
    assert not list((out / "cubes").glob("c.*")), "the resumed run kept the store's layout"
    assert main(["verify", str(out), "--against", str(frames_ready / "frames.zarr")]) == 0
    new = open_cubes(str(frames_ready / "new.zarr"))
    assert open_cubes(str(out))[:].tobytes() == new[:].tobytes()


# -- datasets of many volumes -----------------------------------------------------------

#: Volumes of other shapes and frame counts: (name, frames, rows, columns).
VOLUMES = (("v2", 90, 24, 30), ("v10", 110, 20, 36), ("v11", 100, 28, 26))


def volume_args(root: Path) -> list[str]:
    return [
        *("--volumes", str(root / "vols"), "--frames-store", str(root / "frames.zarr")),
        "--quiet",
    ]


def volumes_folder(root: Path, fmt: str = "parquet", labels: bool = True) -> Path:
    """A folder of volumes, each a folder of frame files (written by ``generate``) and,
    with ``labels``, int8 labels (class 1 in the left half of every frame, else 0)."""
    for k, (name, n_frames, n_rows, n_cols) in enumerate(VOLUMES):
        folder = root / "vols" / name
        frames = folder / "frames" if labels else folder
        generate = ["generate", "--frames", str(frames), "--synthetic", "--frame-format", fmt]
        generate += ["--n-frames", str(n_frames), "--n-rows", str(n_rows)]
        generate += ["--n-cols", str(n_cols), "--seed", str(k), "--dim", "4", "--quiet"]
        assert main(generate) == 0
        if labels:
            values = np.zeros((n_frames, n_rows, n_cols), dtype="int8")
            values[:, :, : n_cols // 2] = 1
            zarr.create_array(str(folder / "labels.zarr"), data=values, chunks=(8, n_rows, n_cols))
    return root / "vols"


def test_sigkill_mid_ingest_of_many_volumes_then_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    volumes_folder(tmp_path, fmt="csv")
    args = volume_args(tmp_path)
    process = start(["ingest", *args, "--scheduler", "sync"])
    interrupt_after_progress(process, tmp_path / "frames.zarr", "frames", signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    total = 2 * sum(n_frames for _, n_frames, _, _ in VOLUMES)  # frames and labels
    assert 0 < recorded(tmp_path / "frames.zarr", "frames") < total
    assert main(["sample", "--frames-store", str(tmp_path / "frames.zarr"), "--quiet"]) == 2
    assert "incomplete (its ingest did not finish)" in capsys.readouterr().err
    assert main(["ingest", *args, "--resume"]) == 0
    clean = [*args, "--frames-store", str(tmp_path / "clean.zarr")]
    assert main(["ingest", *clean]) == 0
    assert_stores_identical(tmp_path / "clean.zarr", tmp_path / "frames.zarr")
    stored: Any = zarr.open_group(str(tmp_path / "frames.zarr"), mode="r")
    assert [v["name"] for v in stored.attrs["daskcubes"]["volumes"]] == ["v2", "v10", "v11"]


def volume_cube_args(root: Path, out: str = "cubes.zarr") -> list[str]:
    # Many one-cube tasks of label-balanced windows, so that a run lasts long enough to
    # be killed half-way.
    return [
        *("--frames-store", str(root / "frames.zarr"), "--out", str(root / out)),
        *("--no-synthetic", "--depth", "6", "--frame-mode", "window", "--dim", "8"),
        *("--row-mode", "window", "--column-mode", "window"),
        *("--label-ratios", '{"0": 1, "1": 1}', "--seed", "5", "--cubes", "600"),
        *("--shard-size", "1", "--batch-size", "1", "--workers", "2", "--quiet"),
    ]


def test_sigkill_mid_sample_of_many_volumes_with_labels_then_resume(tmp_path: Path) -> None:
    volumes_folder(tmp_path)
    assert main(["ingest", *volume_args(tmp_path)]) == 0
    killed = kill_mid_run(["sample", *volume_cube_args(tmp_path)], 200, tmp_path / "kill")
    assert killed.stopped and killed.status == -signal.SIGKILL, killed.output
    out = tmp_path / "cubes.zarr"
    assert 200 <= recorded(out, "shards") < 600, killed.output
    with pytest.raises(UserError, match="incomplete"):
        open_cubes(str(out))

    finished_before = recorded(out, "shards")
    resumed = start(["sample", *volume_cube_args(tmp_path), "--resume"])
    done, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    made_before = int(done.split("cubes (")[1].split(" made by an earlier run")[0])
    assert made_before >= finished_before  # only unfinished cubes were cut again
    assert main(["sample", *volume_cube_args(tmp_path, out="clean.zarr")]) == 0
    assert_stores_identical(tmp_path / "clean.zarr", out)
    group: Any = zarr.open_group(str(out), mode="r")
    volumes, labels = np.asarray(group["volumes"][...]), np.asarray(group["labels"][...])
    assert set(volumes.tolist()) == {0, 1, 2}  # every volume is cut from
    assert labels.dtype == np.int8 and 0.4 < (labels == 1).mean() < 0.6  # balanced 1:1
    assert open_cubes(str(out)).complete
