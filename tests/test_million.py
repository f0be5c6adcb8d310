"""The million-cube workflow runs end to end at a tiny size (no timing is checked)."""

from __future__ import annotations

import importlib.util
import math
import signal
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from daskcubes.io.layout import store_attrs
from daskcubes.io.progress import recorded_progress
from daskcubes.io.storage import Storage
from tests.helpers import Killed, kill_mid_run

ROOT = Path(__file__).resolve().parent.parent


def load_million() -> ModuleType:
    spec = importlib.util.spec_from_file_location("million", ROOT / "workflows" / "million.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_small_run_kills_resumes_and_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    million = load_million()
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
    values = {key: value for key, value, _ in rows}
    assert len(values) == len(rows), "row keys are unique"
    assert values[million.TASKS] == 188  # 3000 cubes in tasks of 16
    assert values[million.THREADS.finished] == 1

    [(killed, recorded, complete)] = kills
    assert killed.stopped and killed.status == -signal.SIGKILL, killed.output
    assert 94 <= recorded < 188, "killed half-way, at the shards it was stopped at"
    assert not complete, "the store was not complete when it was killed"
    assert values[million.KILLED_AT] == recorded
    assert values[million.IDENTICAL] == 1, "the resumed store equals the clean one"
    assert 0 <= values[million.REDONE] <= values[million.TASKS]
    assert not math.isnan(values[million.VERIFY]), "verify found no problem"
    assert all(isinstance(key, str) and isinstance(unit, str) for key, _, unit in rows)


@pytest.mark.slow
def test_a_failed_run_is_reported_not_raised(tmp_path: Path) -> None:
    million = load_million()
    log = tmp_path / "run.log"
    run = million.run_sample(["--frames-store", str(tmp_path / "none.zarr")], "x", log)
    assert not run.finished
    assert "no zarr store there" in run.error
    rows = million._run_rows(million.THREADS, run, 10)
    assert (million.THREADS.finished, 0.0, "") in rows
