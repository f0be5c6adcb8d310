"""The benchmark workflow runs end to end at tiny sizes (no timing is checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_benchmark_runs_and_reports_every_row(tmp_path: Path) -> None:
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "workflows" / "benchmark.py"),
            *("--n-frames", "3", "--n-rows", "12", "--n-cols", "20", "--dim", "6"),
            *("--cubes", "8", "--few", "2", "--threads", "2", "--sweep", "1,2"),
            *("--plan-cubes", "1000", "--memory-cubes", "4,8"),
            *("--memory-dir", str(tmp_path), "--scratch", str(scratch), "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "benchmark.json").read_text())
    methods = [row["method"] for row in report["rows"]]
    for expected in [
        "article read: pandas.read_csv",
        "article read: pandas.read_parquet",
        "article step 0: re-read every file per cube",
        "article step 3: numpy + ThreadPool",
        "step 3 on np.stack(DataFrame.to_numpy())",
        "plain dask.array: slice per cube, to_zarr",
        "daskcubes ingest: files -> frames store",
        "daskcubes generation (no store)",
        "daskcubes end to end into the cube store",
        "daskcubes end to end, float32",
        "I/O ceiling: ndarray.tofile",
        "memory ceiling: copy each cube's bytes",
        "planning 1,000 cubes: peak memory",
        "peak memory of a 8-cube run",
    ]:
        assert expected in methods
        assert f"| {expected} |" in done.stdout
    assert all(row["rate"] > 0 for row in report["rows"])
    assert {int(t) for t in report["threads"]["daskcubes generation"]} == {1, 2}
    assert "targets:" in done.stdout and "end to end >= 0.8x I/O ceiling" in done.stdout
    for chart in ("ladder.png", "threads.png"):
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not scratch.exists()
