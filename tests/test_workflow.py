"""The command line, called as ``main(argv)`` and as a real subprocess."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from daskcubes import open_cubes
from daskcubes.cli import build_parser, config_from_args, main
from daskcubes.config import PRESETS, Config, load_config
from daskcubes.cut import cutter
from daskcubes.runtime import stages
from tests.helpers import PRESET_NAMES, cli_args, small_args


def test_run_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(small_args(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "daskcubes: 20 cubes" in out and "cubes/s" in out and "cubes.zarr" in out
    store = open_cubes(str(tmp_path / "cubes.zarr"))
    assert store[:].shape == (20, 4, 5, 5)
    assert store.attrs["config"]["seed"] == 3


def test_the_summary_keeps_start_up_apart_from_cutting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded: list[float] = []

    def slow_slab(job: cutter.DatasetCut) -> None:
        time.sleep(0.5)  # a slab that takes long to load: start-up, not cutting
        loaded.append(time.perf_counter())
        cutter.warm_worker(job)

    monkeypatch.setattr(stages, "warm_worker", slow_slab)
    assert main(small_args(tmp_path)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(loaded) == 1  # once, on the threaded scheduler's one process
    sampled = next(line for line in lines if line.startswith("sample: "))
    assert ", 4 tasks " in sampled  # 20 cubes in 3 tasks of 8, and a block of recipes
    startup = float(sampled.split("start-up ")[1].split(" s")[0])
    assert startup >= 0.5
    assert "(start-up " in lines[-1] and "in 4 tasks" in lines[-1]


def test_stages_one_by_one_equal_run(tmp_path: Path) -> None:
    args = small_args(tmp_path / "staged")
    assert main(["generate", *args]) == 0
    ingest_args = [a for a in args if a != "--synthetic"]
    assert main(["ingest", *ingest_args]) == 0
    assert main(["sample", *ingest_args, "--scheduler", "sync"]) == 0
    assert main(small_args(tmp_path / "run")) == 0
    staged = open_cubes(str(tmp_path / "staged" / "cubes.zarr"))[:]
    assert np.array_equal(staged, open_cubes(str(tmp_path / "run" / "cubes.zarr"))[:])


def test_info_describes_both_stores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(small_args(tmp_path))
    capsys.readouterr()
    assert main(["info", str(tmp_path / "cubes.zarr")]) == 0
    out = capsys.readouterr().out
    assert "cubes store" in out
    # The plan as a person reads it, not a Python dict.
    assert "{" not in out
    assert "  plan: 20 cubes of 4 x 5 x 5 (frames x rows x columns), float64, seed 3\n" in out
    assert "  definition: frame_mode all, row_mode first, column_mode random" in out
    assert main(["info", str(tmp_path / "frames.zarr")]) == 0
    assert "frames store" in capsys.readouterr().out


#: A value other than the default for every setting (a new setting must be added here).
CHANGED: dict[str, Any] = {
    "frames": "f",
    "frames_variable": "temperature",
    "synthetic": False,
    "frame_format": "csv",
    "n_frames": 3,
    "n_rows": 20,
    "n_cols": 30,
    "allow_nonfinite": True,
    "frames_store": "fs.zarr",
    "out": "o.zarr",
    "storage_options": {"anon": True, "client_kwargs": {"region_name": "x"}},
    "compressor": "lz4",
    "cubes": 7,
    "dim": 5,
    "depth": 2,
    "height": 4,
    "width": 3,
    "frame_mode": "grid",
    "row_mode": "grid",
    "column_mode": "grid",
    "sorted_columns": True,
    "frame_stride": 3,
    "row_stride": 2,
    "column_stride": 1,
    "grid_edge": "snap",
    "weights": "w.zarr",
    "labels": "l.zarr",
    "label_ratios": {0: 1.0, 2: 3.0},
    "label_fraction": 0.25,
    "volume_shares": {"a": 1.0, "b": 3.0},
    "seed": 9,
    "dtype": "float32",
    "shard_size": 2,
    "batch_size": 4,
    "scheduler": "distributed",
    "workers": 2,
    "threads_per_worker": 3,
    "dashboard_address": "127.0.0.1:0",
    "dask_scheduler_address": "tcp://127.0.0.1:1",
    "connect_timeout": 5,
    "report": "r.html",
    "max_slab_bytes": 10**6,
    "storage_retry_seconds": 5,
    "lease_seconds": 10,
    "break_lease": True,
    "write_without_lease": True,
}


def test_every_setting_is_described_and_reaches_the_config_from_its_option() -> None:
    changed, default = Config(**CHANGED), Config()
    for name, field in Config.model_fields.items():
        assert field.description, f"setting '{name}' has no description for --help"
        if name != "volumes":  # they exclude frames, which CHANGED gives: checked below
            assert getattr(changed, name) != getattr(default, name), f"CHANGED misses '{name}'"
    args = build_parser().parse_args(["run", *cli_args(changed)])
    assert config_from_args(args) == changed
    volumes = Config(**{**CHANGED, "volumes": "vols", "frames": default.frames})
    argv = cli_args(volumes)
    del argv[argv.index("--frames") : argv.index("--frames") + 2]  # --volumes excludes it
    assert config_from_args(build_parser().parse_args(["run", *argv])) == volumes


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dim", "50"], "dim: 50; expected 1 to 10, since the synthetic frames are"),
        (["--cubes", "0"], "setting 'cubes'"),
        (["--config", "no-such-preset.yaml"], "no-such-preset.yaml: cannot read config file"),
    ],
)
def test_bad_settings_give_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main([*small_args(tmp_path), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and err.startswith("daskcubes: error:")
    assert not (tmp_path / "cubes.zarr").exists()


def test_unknown_config_key_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    preset = tmp_path / "bad.yaml"
    preset.write_text("cubes: 4\ncubez: 5\n")
    assert main([*small_args(tmp_path), "--config", str(preset)]) == 2
    assert "unknown setting 'cubez'" in capsys.readouterr().err


def test_existing_output_is_not_overwritten_silently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(small_args(tmp_path)) == 0
    before = open_cubes(str(tmp_path / "cubes.zarr"))[:]
    assert main([*small_args(tmp_path), "--no-synthetic"]) == 2
    assert "already exists; pass --resume to finish it or --overwrite" in capsys.readouterr().err
    assert np.array_equal(open_cubes(str(tmp_path / "cubes.zarr"))[:], before)
    assert main([*small_args(tmp_path), "--overwrite", "--seed", "4"]) == 0
    assert not np.array_equal(open_cubes(str(tmp_path / "cubes.zarr"))[:], before)


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_presets_are_valid(preset: str) -> None:
    assert isinstance(load_config(preset), Config)


def test_default_preset_is_the_embedded_default() -> None:
    values = yaml.safe_load((PRESETS / "default.yaml").read_text())
    assert Config(**values) == Config()


def test_module_runs_as_a_program(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "daskcubes.workflow", *small_args(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "daskcubes: 20 cubes" in done.stdout


def test_resume_of_a_complete_run_says_it_was_complete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(small_args(tmp_path)) == 0
    capsys.readouterr()
    assert main([*small_args(tmp_path), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "inf" not in out
    assert out.splitlines()[-1] == (
        f"daskcubes: cube store {tmp_path / 'cubes.zarr'} was already complete (20 cubes)"
    )


def test_the_sample_command_ends_with_the_run_s_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(small_args(tmp_path)) == 0
    capsys.readouterr()
    out = tmp_path / "again.zarr"
    assert main(["sample", *small_args(tmp_path)[3:], "--out", str(out)]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("daskcubes: 20 cubes") and last.endswith(f"cube store {out}")
