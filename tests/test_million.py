"""The million-cube workflow runs end to end at a tiny size (no timing is checked)."""

from __future__ import annotations

import math
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from daskcubes.io.layout import store_attrs
from daskcubes.io.progress import recorded_progress
from daskcubes.io.storage import Storage
from tests.helpers import Killed, kill_mid_run

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "workflows"))  # the benchmark package, as the scripts see it

from bench import million  # noqa: E402
from bench.rows import Key  # noqa: E402


@pytest.mark.slow
def test_a_small_run_kills_resumes_and_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_sample = million.run_sample
    kills: list[tuple[Killed, int, bool]] = []

    def killed_mid_way(
        args: list[str], store: str, log: Path, kill_at_shards: int | None = None, **more: Any
    ) -> Any:
        """The harness's run, but its kill certain: the harness polls the record, and a run
        this small can end before the poll sees half its shards (it then resumes a complete
        store); here the driver stops at ``kill_at_shards`` until it is killed."""
        if kill_at_shards is None:
            return run_sample(args, store, log, **more)
        killed = kill_mid_run(["sample", *args], kill_at_shards, tmp_path / "kill")
        attrs = store_attrs(Storage.of().open_group(store, mode="r"))
        kills.append((killed, len(recorded_progress(attrs).get("shards", ())), attrs["complete"]))
        return million.Run(killed.status, math.nan, 0.0, 0.0, 0.0, killed.output)

    monkeypatch.setattr(million, "run_sample", killed_mid_way)
    rows = million.measure(tmp_path, cubes=3000, cluster=False)
    values = {row.key: row.rate for row in rows}
    assert len(values) == len(rows), "row keys are unique"
    assert values[Key.MILLION_TASKS] == 188  # 3000 cubes in tasks of 16
    assert values[million.THREADS.finished] == 1

    [(killed, recorded, complete)] = kills
    assert killed.stopped and killed.status == -signal.SIGKILL, killed.output
    assert 94 <= recorded < 188, "killed half-way, at the shards it was stopped at"
    assert not complete, "the store was not complete when it was killed"
    assert values[Key.MILLION_KILLED_AT] == recorded
    assert values[Key.MILLION_IDENTICAL] == 1, "the resumed store equals the clean one"
    assert 0 <= values[Key.MILLION_REDONE] <= values[Key.MILLION_TASKS]
    assert not math.isnan(values[Key.MILLION_VERIFY]), "verify found no problem"
    assert all(isinstance(row.key, Key) for row in rows)


@pytest.mark.slow
def test_a_failed_run_is_reported_not_raised(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    run = million.run_sample(["--frames-store", str(tmp_path / "none.zarr")], "x", log)
    assert not run.finished
    assert "no zarr store there" in run.error
    rows = million.run_rows(million.THREADS, run, 10)
    assert {row.key: row.rate for row in rows}[million.THREADS.finished] == 0.0
