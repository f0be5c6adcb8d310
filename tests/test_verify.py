"""``verify`` finds what is wrong with a cube store, and says nothing of a good one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from daskcubes import open_cubes, pipeline
from daskcubes.config import Config
from daskcubes.schema import CubeSchema
from daskcubes.storage import Storage
from daskcubes.verify import verify_cube_store
from daskcubes.workflow import main
from tests.conftest import small_config


@pytest.fixture
def made(tmp_path: Path) -> Config:
    config = small_config(tmp_path)
    pipeline.run(config, show_progress=False)
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
    assert "shard cubes/c/2/0/0/0 (cubes 8-11): missing" in out
    assert "shard cubes/c/5/0/0/0 (cubes 20-23): shard index checksum mismatch" in out
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
    pipeline.generate(other, show_progress=False)
    pipeline.ingest(other, show_progress=False)
    assert main(["verify", made.out, "--against", other.frames_store]) == 1
    assert "not the one these cubes were cut from" in capsys.readouterr().out
