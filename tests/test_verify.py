"""``verify`` finds what is wrong with a cube store, and says nothing of a good one."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import zarr

import daskcubes.runtime.verify
from daskcubes import jobs, open_cubes
from daskcubes.cli import main
from daskcubes.config import Config
from daskcubes.io.schema import CubeSchema
from daskcubes.io.shards import MISSING, decode_index, index_nbytes
from daskcubes.io.storage import Storage
from daskcubes.runtime.verify import verify_cube_store
from tests.helpers import small_config


@pytest.fixture
def made(tmp_path: Path) -> Config:
    config = small_config(tmp_path)
    jobs.run(config, show_progress=False)
    return config


def verify(config: Config, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    status = main(["verify", config.out, "--against", config.frames_store, *extra])
    return status, capsys.readouterr().out


def test_a_good_store_passes(made: Config, capsys: pytest.CaptureFixture[str]) -> None:
    status, out = verify(made, capsys, "--sample", "40")
    assert status == 0, out
    assert "40 sampled cubes recomputed and compared" in out
    assert out.strip().endswith("no problems")


def shard(config: Config, index: int) -> Path:
    schema = CubeSchema.from_attrs(open_cubes(config.out).attrs["plan"])
    return Path(config.out) / schema.shard_key(index)


def test_the_sample_is_chosen_by_the_seed(made: Config) -> None:
    def sampled(seed: int) -> list[int]:
        return verify_cube_store(made.out, Storage.of(), sample=5, seed=seed).sampled

    assert sampled(3) == sampled(3)
    assert len(sampled(3)) == 5
    assert sampled(3) != sampled(4)


def test_missing_and_truncated_shards(made: Config, capsys: pytest.CaptureFixture[str]) -> None:
    shard(made, 2).unlink()
    data = shard(made, 5).read_bytes()
    shard(made, 5).write_bytes(data[: len(data) // 2])
    status, out = verify(made, capsys)
    assert status == 1
    assert "shard cubes/c.2.0.0.0 (cubes 8-11): missing" in out
    assert "shard cubes/c.5.0.0.0 (cubes 20-23): shard index checksum mismatch" in out
    assert not out.strip().endswith("no problems")


def test_changed_cube_bytes_differ_from_recomputed(
    made: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    cubes = zarr.open_array(made.out, path="cubes", mode="r+")
    cubes[:] = np.asarray(cubes[:]) + 1  # whole shards rewritten: indexes stay valid
    status, out = verify(made, capsys, "--sample", "3")
    assert status == 1
    assert out.count("differs from the cube cut anew") == 3


def test_invalid_recipes(made: Config, capsys: pytest.CaptureFixture[str]) -> None:
    columns = zarr.open_array(made.out, path="columns", mode="r+")
    bad = np.asarray(columns[:])
    bad[3, 1] = bad[3, 0]
    bad[7, 0] = made.n_cols
    columns[:] = bad
    status, out = verify(made, capsys)
    assert status == 1
    assert "1 cubes with a repeated column (first: cube 3)" in out
    assert "1 cubes with a column out of bounds (first: cube 7)" in out


def test_incomplete_store(made: Config, capsys: pytest.CaptureFixture[str]) -> None:
    meta = Path(made.out) / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["daskcubes"]["complete"] = None
    meta.write_text(json.dumps(doc))
    status, out = verify(made, capsys)
    assert status == 1
    assert "incomplete" in out


def test_other_frames_store(made: Config, capsys: pytest.CaptureFixture[str]) -> None:
    other = small_config(Path(made.out).parent / "other", seed=99)
    jobs.generate(other, show_progress=False)
    jobs.ingest(other, show_progress=False)
    assert main(["verify", made.out, "--against", other.frames_store]) == 1
    assert "not the one these cubes were cut from" in capsys.readouterr().out


def rewrite_index(path: Path, change: Callable[[np.ndarray], None]) -> None:
    """Change a shard's index in place, with a valid checksum, so only its entries are wrong."""
    data = path.read_bytes()
    tail = index_nbytes(4)
    index = decode_index(data[-tail:]).copy()
    change(index)
    raw = index.astype("<u8").tobytes()
    checksum = np.uint32(google_crc32c.value(raw)).astype("<u4").tobytes()
    path.write_bytes(data[:-tail] + raw + checksum)


def test_index_entries_are_checked_in_every_block_of_shards(
    made: Config, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daskcubes.runtime.verify, "SHARD_BLOCK", 3)  # shards 0-2, 3-5, 6-8, 9

    def drop_two(index: np.ndarray) -> None:
        index[1:3] = MISSING

    def point_past_end(index: np.ndarray) -> None:
        index[3, 0] += 1

    rewrite_index(shard(made, 2), drop_two)
    rewrite_index(shard(made, 4), point_past_end)
    shard(made, 9).unlink()
    status, out = verify(made, capsys)
    assert status == 1
    assert "shard cubes/c.2.0.0.0 (cubes 8-11): 2 cubes missing from the shard" in out
    assert "shard cubes/c.4.0.0.0 (cubes 16-19): chunk past the end of the file" in out
    assert "shard cubes/c.9.0.0.0 (cubes 36-39): missing" in out
    assert out.count("PROBLEM: array 'cubes', shard") == 3


def test_the_last_shard_may_be_partial(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = small_config(tmp_path, cubes=42)  # 10 shards of 4 cubes, then one of 2
    jobs.run(config, show_progress=False)
    status, out = verify(config, capsys)
    assert status == 0, out
    rewrite_index(shard(config, 10), lambda index: index.__setitem__((1, 0), MISSING))
    status, out = verify(config, capsys)
    assert "shard cubes/c.10.0.0.0 (cubes 40-41): 1 cubes missing from the shard" in out


def test_ten_bad_shards_are_listed_and_all_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daskcubes.runtime.verify, "SHARD_BLOCK", 4)
    config = small_config(tmp_path, cubes=60)  # 15 shards
    jobs.run(config, show_progress=False)
    for index in range(1, 13):
        shard(config, index).unlink()
    status, out = verify(config, capsys)
    assert status == 1
    listed = [f"shard cubes/c.{index}.0.0.0" for index in range(1, 11)]
    assert all(f"PROBLEM: array 'cubes', {name} " in out for name in listed), out
    assert out.count("PROBLEM: array 'cubes', shard") == 10
    assert "... 12 bad shards in all" in out


def test_verify_holds_a_few_shards_at_a_time(tmp_path: Path) -> None:
    """Every chunk is read and checked, yet the shards are not held together: a block of
    4,096 article shards would be 512 GB (verify held each block whole before)."""
    config = small_config(
        tmp_path, cubes=64, shard_size=8, task_size=8, n_rows=64, n_cols=128, dim=64
    )  # 8 shards of 8 cubes of 5 x 64 x 64 float64: 1.3 MB a shard, 10.5 MB in all
    jobs.run(config, show_progress=False)
    verify_cube_store(config.out, Storage(), sample=0)  # warm: zarr's imports and caches
    tracemalloc.start()
    try:
        report = verify_cube_store(config.out, Storage(), sample=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not report.problems and "every chunk of 8 shards read and checked" in report.facts
    assert peak < 6 * 2**20  # a shard per thread, not all eight
