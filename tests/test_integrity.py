"""Bytes that rot: every chunk's crc32c finds them, ``verify`` and every reader report
them in one line, and ``repair`` cuts the damaged cubes again, byte for byte."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from daskcubes import jobs, open_cubes, repair
from daskcubes.cli import main
from daskcubes.config import Config
from daskcubes.errors import UserError
from daskcubes.io.layout import open_group, store_attrs
from daskcubes.io.lease import LeaseTerms, hold_lease
from daskcubes.io.schema import CubeSchema
from daskcubes.io.storage import Storage
from daskcubes.testing import assert_stores_identical
from tests.helpers import small_config, without_checksums


@pytest.fixture
def made(tmp_path: Path) -> tuple[Config, Path]:
    """A complete small run, and a copy of its clean cube store."""
    config = small_config(tmp_path)
    jobs.run(config, show_progress=False)
    clean = tmp_path / "clean.zarr"
    shutil.copytree(config.out, clean)
    return config, clean


def shard_path(config: Config, shard: int) -> Path:
    attrs = store_attrs(open_group(config.out, "cube store", Storage.of()))
    return Path(config.out) / CubeSchema.from_attrs(attrs["plan"]).shard_key(shard)


def chunk_path(store: str, array: str, coords: tuple[int, ...]) -> Path:
    found = zarr.open_array(store, path=array, mode="r")
    return Path(store) / array / found.metadata.encode_chunk_key(coords)


def flip(path: Path, at: int = 10) -> None:
    """Flip one bit of the byte ``at`` of the file ``path``, as rot does."""
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def verify(store: str, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    status = main(["verify", store, *extra])
    return status, capsys.readouterr().out


def test_a_flipped_byte_in_a_shard_is_found_refused_and_repaired(
    made: tuple[Config, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, clean = made
    flip(shard_path(config, 5))  # inside cube 20, the first of shard 5
    status, out = verify(config.out, capsys)
    assert status == 1
    problems = [line for line in out.splitlines() if "PROBLEM" in line]
    assert len(problems) == 1, out
    assert "array 'cubes', shard" in problems[0] and "(cubes 20-23)" in problems[0]
    assert "1 cubes fail their crc32c checksum (first: cube 20)" in problems[0]
    assert "repair" in out
    with pytest.raises(UserError, match=r"cube 20 is damaged.*cubes 20-23.*repair") as caught:
        open_cubes(config.out)[20]
    assert "\n" not in str(caught.value) and config.out in str(caught.value)
    with pytest.raises(UserError, match="cube 20 is damaged"):
        open_cubes(config.out)[[3, 21, 20]]
    assert np.array_equal(open_cubes(config.out)[21], open_cubes(str(clean))[21])

    assert main(["repair", config.out]) == 0
    out = capsys.readouterr().out
    assert "(cubes 20-23) cut again" in out and "repaired 1 shards" in out
    assert_stores_identical(config.out, clean)
    assert verify(config.out, capsys)[0] == 0


def test_other_zarr_readers_refuse_a_damaged_chunk(made: tuple[Config, Path]) -> None:
    config, _ = made
    flip(shard_path(config, 0))
    with pytest.raises(ValueError, match="checksum"):
        zarr.open_array(config.out, path="cubes", mode="r")[0]
    xr = pytest.importorskip("xarray")
    with pytest.raises(ValueError, match="checksum"):
        _ = xr.open_zarr(config.out, consolidated=False)["cubes"][0].values
    ts = pytest.importorskip("tensorstore")
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{config.out}/cubes"}}
    array = ts.open(spec, read=True).result()
    with pytest.raises(ValueError, match="Digest mismatch"):
        array[0].read().result()
    assert np.array_equal(array[1].read().result(), open_cubes(config.out)[1])


def test_a_deleted_shard_is_repaired(
    made: tuple[Config, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, clean = made
    shard_path(config, 9).unlink()
    assert "(cubes 36-39) cut again" in str(repair(config.out))
    assert_stores_identical(config.out, clean)


def test_a_flipped_byte_in_the_recipes_is_found_and_repaired(
    made: tuple[Config, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, clean = made
    flip(chunk_path(config.out, "columns", (0, 0)), at=20)
    status, out = verify(config.out, capsys)
    assert status == 1
    assert "PROBLEM: array 'columns', cubes 0-39: damaged: fails its crc32c checksum" in out
    with pytest.raises(UserError, match=r"array 'columns' is damaged.*repair"):
        open_cubes(config.out).recipes(3)
    assert "recipes of cubes 0-39 written again" in str(repair(config.out))
    assert_stores_identical(config.out, clean)


def test_a_flipped_byte_in_the_frames_store_is_found(
    made: tuple[Config, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = made
    flip(chunk_path(config.frames_store, "frames", (2, 0, 0)))
    status, out = verify(config.frames_store, capsys)
    assert status == 1
    assert "array 'frames', frame 2, rows 0-11: damaged: fails its crc32c checksum" in out
    status, out = verify(config.out, capsys, "--against", config.frames_store)
    assert status == 1 and "frame 2, rows 0-11: damaged" in out
    with pytest.raises(UserError, match="cannot cut cubes again from frames store"):
        repair(config.out)


def test_repair_is_refused_in_one_line(
    made: tuple[Config, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = made
    other = small_config(Path(config.out).parent / "other", seed=99)
    jobs.generate(other, show_progress=False)
    jobs.ingest(other, show_progress=False)
    with pytest.raises(UserError, match="is not the one its cubes were cut from"):
        repair(config.out, against=other.frames_store)
    with hold_lease(config.out, "cube store", Storage.of(), LeaseTerms()):
        assert main(["repair", config.out]) == 2
        assert "another daskcubes run is writing it" in capsys.readouterr().err
    moved = Path(config.frames_store).with_name("moved.zarr")
    Path(config.frames_store).rename(moved)
    assert main(["repair", config.out]) == 2
    err = capsys.readouterr().err
    assert "name a copy of it with --against" in err and len(err.strip().splitlines()) == 1
    flip(shard_path(config, 1))
    assert "(cubes 4-7) cut again" in str(repair(config.out, against=moved))


def test_a_compressed_store_is_checked_chunk_by_chunk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = small_config(tmp_path, compressor="lz4")
    jobs.run(config, show_progress=False)
    clean = tmp_path / "clean.zarr"
    shutil.copytree(config.out, clean)
    flip(shard_path(config, 3), at=30)
    status, out = verify(config.out, capsys)
    assert status == 1 and "(cubes 12-15): damaged" in out
    repair(config.out)
    assert_stores_identical(config.out, clean)


def test_quick_look_reads_some_shards(
    made: tuple[Config, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = made
    status, out = verify(config.out, capsys, "--shards", "3")
    assert status == 0 and "3 of 10 shards read and checked" in out


# -- stores written before chunks had checksums ----------------------------------------


def test_an_old_store_verifies_by_recompute_and_repairs(
    made: tuple[Config, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, clean = made
    without_checksums(config.out)
    without_checksums(clean)
    status, out = verify(config.out, capsys)
    assert status == 0 and "chunks carry no checksums" in out
    flip(shard_path(config, 4), at=100)  # cube 16: nothing but a recompute sees it
    assert verify(config.out, capsys)[0] == 0
    status, out = verify(config.out, capsys, "--against", config.frames_store, "--sample", "all")
    assert status == 1 and "cube 16: differs from the cube cut anew" in out
    assert "40 sampled cubes recomputed" in out
    assert "(cubes 16-19) cut again" in str(repair(config.out))
    assert_stores_identical(config.out, clean)


def test_an_unfinished_old_store_resumes_in_its_own_layout(made: tuple[Config, Path]) -> None:
    config, clean = made
    without_checksums(config.out)
    without_checksums(clean)
    group = zarr.open_group(config.out, mode="r+")
    attrs = dict(group.attrs["daskcubes"])  # type: ignore[arg-type]
    attrs["complete"] = None  # no progress recorded: every task runs again
    group.attrs["daskcubes"] = attrs
    shard_path(config, 2).unlink()
    jobs.sample(config, mode="resume", show_progress=False)
    assert_stores_identical(config.out, clean)
