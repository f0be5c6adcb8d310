"""daskcubes as a library: the stages from Python, on threads and on a user's own Client."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import daskcubes
from daskcubes.runtime.executors import DistributedExecutor, create_executor
from daskcubes.testing import assert_stores_identical
from tests.helpers import small_config


def settings(root: Path, **overrides: Any) -> dict[str, Any]:
    return {**small_config(root).model_dump(), **overrides}


def test_run_on_threads_returns_what_a_notebook_shows(tmp_path: Path) -> None:
    result = daskcubes.run(progress=False, **settings(tmp_path, scheduler="threads"))
    assert [stage.stage for stage in result.stages] == ["generate", "ingest", "sample"]
    assert result.path == str(tmp_path / "cubes.zarr")
    assert len(daskcubes.open_cubes(result.path)) == 40
    assert result.summary().startswith("daskcubes: 40 cubes")
    assert "<table>" in result._repr_html_() and result.path in result._repr_html_()
    assert str(result).splitlines()[-1] == result.summary()


def test_stages_take_a_config_and_settings_over_it(tmp_path: Path) -> None:
    config = small_config(tmp_path)
    daskcubes.run(config, progress=False, cubes=8)
    assert len(daskcubes.open_cubes(config.out)) == 8
    again = daskcubes.sample(config, mode="resume", progress=False, cubes=8)
    assert again.already_complete and "already complete" in again.summary()


@pytest.mark.slow
def test_a_run_on_the_user_s_client_leaves_it_running(
    tmp_path: Path, local_cluster: DistributedExecutor
) -> None:
    client = local_cluster.client
    oracle = small_config(tmp_path / "oracle")
    daskcubes.run(oracle, progress=False)
    result = daskcubes.run(progress=False, client=client, **settings(tmp_path / "mine"))
    assert_stores_identical(result.path, oracle.out)
    assert client.status == "running"
    assert client.submit(sum, [1, 2]).result() == 3


def test_bad_settings_are_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"setting 'cubes'"):
        daskcubes.sample(small_config(tmp_path), cubes=0)
    with pytest.raises(ValueError, match=r"frames store .* no zarr store there"):
        daskcubes.sample(small_config(tmp_path), progress=False)
    assert issubclass(daskcubes.UserError, ValueError)


def test_the_console_script_is_the_command_line() -> None:
    scripts = importlib.metadata.entry_points(group="console_scripts")
    (script,) = [entry for entry in scripts if entry.name == "daskcubes"]
    assert script.value == "daskcubes.cli:main"
    found = shutil.which("daskcubes")
    if found:  # installed: the command itself runs
        done = subprocess.run([found, "--help"], capture_output=True, text=True, check=True)
        assert "info" in done.stdout and "sample" in done.stdout


def test_importing_daskcubes_imports_no_torch(tmp_path: Path) -> None:
    """torch is an optional extra: the package, a store, a host stream and its batches
    load without it (it comes in with the first device asked for)."""
    config = small_config(tmp_path)
    daskcubes.run(config, progress=False)
    script = (
        "import sys, daskcubes;"
        f"config = daskcubes.Config.model_validate_json({config.model_dump_json()!r});"
        "stream = daskcubes.open_stream(config);"
        "list(daskcubes.Batches(stream, 8)); daskcubes.open_cubes(config.out)[0];"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_open_stream_takes_what_the_stages_take(tmp_path: Path) -> None:
    config = small_config(tmp_path)
    daskcubes.run(config, progress=False)
    stored = daskcubes.open_cubes(config.out)[:]
    assert daskcubes.open_stream(config)[:].tobytes() == stored.tobytes()
    overridden = daskcubes.open_stream(config, cubes=8)
    assert len(overridden) == 8 and overridden[:].tobytes() == stored[:8].tobytes()
    preset = tmp_path / "preset.yaml"
    preset.write_text(json.dumps(config.model_dump(mode="json")))  # JSON is YAML
    by_file = daskcubes.open_stream(str(preset), cubes=8)
    assert by_file[:].tobytes() == stored[:8].tobytes()


def test_open_stream_of_a_cube_store_says_what_opens_stores(tmp_path: Path) -> None:
    config = small_config(tmp_path)
    daskcubes.run(config, progress=False)
    with pytest.raises(
        daskcubes.UserError,
        match=r"^'[^']*cubes.zarr' is a zarr store, not a "
        r"config: daskcubes.open_cubes\(.*\) opens cube stores[^\n]*$",
    ):
        daskcubes.open_stream(config.out)


def test_errors_from_python_name_the_setting_and_quote_it_short(tmp_path: Path) -> None:
    with pytest.raises(daskcubes.UserError) as raised:
        daskcubes.sample(small_config(tmp_path), cubes=-3, progress=False)
    assert str(raised.value).startswith("setting 'cubes': Input should be greater than")
    assert "command line" not in str(raised.value)
    arrays = {"a": np.zeros((3, 40, 40)), "b": np.ones((3, 40, 40))}
    with pytest.raises(daskcubes.UserError) as raised:
        daskcubes.ingest(frames_store=arrays, progress=False)
    message = str(raised.value)
    assert message.startswith("setting 'frames_store': Input should be a valid string (got {")
    assert "\n" not in message and len(message) < 200
    with pytest.raises(daskcubes.UserError, match=r"^setting 'cubes': .*\(got -3\)$"):
        daskcubes.load_config(cubes=-3)


def test_an_executor_is_built_from_its_name(tmp_path: Path) -> None:
    threads = create_executor("threads", workers=2)
    assert threads.worker_threads() == 2 and threads.where == "this threads run"
    threads.close()
    with pytest.raises(
        ValueError,
        match=r"^Unrecognized executor name: 'spark'; expected one of "
        r"sync, threads, processes, distributed$",
    ):
        create_executor("spark")
