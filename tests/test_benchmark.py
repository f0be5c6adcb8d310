"""The benchmark's wiring at tiny sizes: every target finds its rows, a missing row is an
error, and the article's step 3 keeps no cubes (no timing is checked)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "workflows"))  # the benchmark package, as the scripts see it

import bench.targets  # noqa: E402
from bench.anchors import article_step3  # noqa: E402
from bench.rows import CUBES_PER_S, NEEDS, OPT_IN, Key, Row, importable  # noqa: E402
from bench.targets import TARGETS, MissingRow, target_lines  # noqa: E402


def every_row() -> list[Row]:
    return [Row(key, 1.0 + k, CUBES_PER_S) for k, key in enumerate(Key)]


def test_a_target_whose_row_is_missing_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every target's wiring, torch's too where torch is not installed.
    monkeypatch.setattr(bench.targets, "importable", lambda module: True)
    assert len(target_lines(TARGETS, every_row())) == len(TARGETS)
    for target in TARGETS:
        rows = [row for row in every_row() if row.key != target.row]
        with pytest.raises(MissingRow, match=re.escape(str(target.row))):
            target_lines([target], rows)


def test_targets_on_missing_torch_read_not_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    rows = [row for row in every_row() if NEEDS.get(row.key) != "torch"]
    lines = target_lines(TARGETS, rows)
    assert len(lines) == len(TARGETS)
    needing_torch = sum(target.needs == "torch" for target in TARGETS)
    assert needing_torch == 3
    assert sum(line.endswith("not measured (torch missing)") for line in lines) == needing_torch


def test_article_step3_keeps_no_cubes() -> None:
    """Peak memory of the anchor stays at a few cubes however many it cuts."""
    n_frames, dim, n_cols, n_cubes, threads = 16, 128, 1024, 64, 2
    arr = np.random.default_rng(0).random((n_frames, dim, n_cols))
    rng = np.random.default_rng(1)
    columns = [rng.choice(n_cols, dim, replace=False) for _ in range(n_cubes)]
    cube_bytes = n_frames * dim * dim * arr.itemsize
    tracemalloc.start()
    try:
        rate = article_step3(arr, dim, columns, threads)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rate > 0
    # The pool hands over a few cubes per thread while the consumer drops them;
    # keeping them all would reach n_cubes.
    assert peak < n_cubes // 4 * cube_bytes


def tiny_benchmark(out: Path, scratch: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``workflows/benchmark.py`` at tiny shapes with ``extra`` options; checked to succeed."""
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "workflows" / "benchmark.py"),
            *("--n-frames", "3", "--n-rows", "12", "--n-cols", "20", "--dim", "6"),
            *("--cubes", "8", "--few", "2", "--threads", "2"),
            *("--scratch", str(scratch), "--out", str(out), *extra),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.slow
def test_tiny_run_measures_every_row_and_decides_every_target(tmp_path: Path) -> None:
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    done = tiny_benchmark(
        out,
        scratch,
        *("--sweep", "1,2", "--plan-cubes", "1000", "--memory-cubes", "4,8"),
        *("--memory-dir", str(tmp_path)),
    )
    report = json.loads((out / "benchmark.json").read_text())
    # Every row, but those whose module is not installed (the README's test line installs
    # neither torch nor the patch libraries): their targets are said to be not measured;
    # and but the opt-in rows (a million cubes), whose targets a full run leaves out.
    without = {key for key, module in NEEDS.items() if not importable(module)}
    assert {row["key"] for row in report["rows"]} == set(Key) - without - OPT_IN.keys()
    assert all(row["rate"] > 0 for row in report["rows"])
    for row in report["rows"]:
        assert f"| {row['method']} |" in done.stdout
    assert not any(
        f"- {target.text}: " in done.stdout for target in TARGETS if target.keys & OPT_IN.keys()
    )
    for target in TARGETS:
        if target.keys & OPT_IN.keys():
            continue
        missing = target.needs and not importable(target.needs)
        verdict = (
            rf"not measured \({target.needs} missing\)" if missing else r"[\d,.]+ -> (met|MISSED)"
        )
        assert re.search(rf"- {re.escape(target.text)}: {verdict}\n", done.stdout), target
    assert {int(t) for t in report["threads"][Key.STEP3]} == {1, 2}
    for chart in ("ladder.png", "threads.png"):
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not scratch.exists()


@pytest.mark.slow
def test_only_some_measurements_decide_only_their_targets(tmp_path: Path) -> None:
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    done = tiny_benchmark(out, scratch, "--only", "cut_rows")
    measured = {row["key"] for row in json.loads((out / "benchmark.json").read_text())["rows"]}
    assert Key.CUT_KERNEL in measured and Key.INGEST not in measured
    decided = [t for t in TARGETS if t.keys <= measured]
    assert Key.STREAM_LOOP in {t.row for t in decided}
    assert done.stdout.count(" -> ") == len(decided)


@pytest.mark.slow
# Six interpreters (four with torch), five rounds, TorchIO's queue starting its workers
# every epoch: 3.7 min at load 8, past the suite's 300 s at load 13-18.
@pytest.mark.timeout(900)
def test_tiny_volumes_run_measures_its_rows_and_decides_its_targets(tmp_path: Path) -> None:
    """``--only volumes`` at tiny shapes: every row of the group (the peers' where TorchIO
    and MONAI are installed), its targets decided, labels balanced in every row."""
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    done = tiny_benchmark(
        out,
        scratch,
        *("--only", "volumes", "--volume-count", "3", "--volume-frames", "12"),
        *("--volume-size", "24", "--volume-patch", "6", "--volume-patches", "48"),
    )
    rows = json.loads((out / "benchmark.json").read_text())["rows"]
    volumes = {key for key, name in OPT_IN.items() if name == "volumes"}
    peers = {Key.VOLUMES_TORCHIO: "torchio", Key.VOLUMES_MONAI: "monai"}
    without = {key for key, module in peers.items() if not importable(module)}
    if without == peers.keys():  # the faster peer's rows need one of them
        without |= {Key.VOLUMES_FASTER_PEER, Key.VOLUMES_PEER_PEAK}
    measured = {row["key"] for row in rows}
    assert measured == volumes - without
    assert all(row["rate"] > 0 for row in rows)
    for row in rows:
        assert f"| {row['method']} |" in done.stdout
        # Every patch row says how many of its patches are at least half class 1:
        # label-balanced 1:1 between classes 0 and 1 puts that near half.
        share = re.search(r"; (\d+)% at least half class 1;", row["method"])
        if row["unit"] == "cubes/s" and row["key"] != Key.VOLUMES_FASTER_PEER:
            assert share and 25 <= int(share.group(1)) <= 75, row["method"]
    ours = [t for t in TARGETS if t.keys & volumes]
    assert len(ours) == 4
    # Each of its targets is decided where its rows were measured, and only those.
    decided = [t for t in ours if t.keys <= measured]
    assert done.stdout.count(" -> ") == len(decided)
    assert len(decided) == (4 if peers.keys() - without else 1)
    for target in decided:
        assert re.search(rf"- {re.escape(target.text)}: [\d,.]+ -> (met|MISSED)\n", done.stdout)
    assert not scratch.exists()
