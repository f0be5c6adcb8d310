"""workflows/train.py: a training run killed with SIGKILL and resumed computes the same losses."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from daskcubes import jobs
from daskcubes.config import Config
from tests.helpers import small_config

pytest.importorskip("torch")

TRAIN = Path(__file__).parents[1] / "workflows" / "train.py"
STEP = re.compile(r"^step (\d+) epoch \d+ loss (\S+) ")


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Config:
    config = small_config(tmp_path_factory.mktemp("train"), cubes=40)
    jobs.run(config, show_progress=False)
    return config


def command(store: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(TRAIN),
        "--store",
        store,
        "--epochs",
        "4",
        "--batch-size",
        "4",
        "--pool",
        "1",
        *extra,
    ]


def losses(output: str) -> dict[int, str]:
    """Step number -> loss as logged."""
    found = (STEP.match(line) for line in output.splitlines())
    return {int(m[1]): m[2] for m in found if m}


@pytest.mark.slow
def test_a_killed_run_resumes_with_the_same_losses(stored: Config, tmp_path: Path) -> None:
    clean = subprocess.run(command(stored.out), capture_output=True, text=True, check=True)
    expected = losses(clean.stdout)
    assert sorted(expected) == list(range(1, 41))  # 4 epochs of 10 batches

    run = command(stored.out, "--checkpoint", str(tmp_path / "ckpt"), "--every", "3")
    seen = []
    with subprocess.Popen(run, stdout=subprocess.PIPE, text=True) as killed:
        assert killed.stdout is not None
        for line in killed.stdout:
            seen.append(line)
            if line.startswith("step 14 "):  # mid-epoch 1
                os.kill(killed.pid, signal.SIGKILL)
                break
        seen.append(killed.stdout.read())
    assert killed.returncode == -signal.SIGKILL
    before = losses("".join(seen))
    assert 14 in before and 40 not in before

    again = subprocess.run(run, capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr  # never silently restarted
    resumed = subprocess.run([*run, "--resume"], capture_output=True, text=True, check=True)
    after = losses(resumed.stdout)
    first = min(after)
    assert first % 3 == 1 and first <= 15  # from the last checkpoint before the kill
    assert max(after) == 40
    assert {**before, **after} == expected
    assert all(after[s] == before[s] for s in before.keys() & after.keys())


@pytest.mark.slow
def test_trains_on_a_stream(stored: Config, tmp_path: Path) -> None:
    config = tmp_path / "stream.yaml"
    config.write_text(yaml.safe_dump(stored.model_dump(mode="json")))
    run = [sys.executable, str(TRAIN), "--stream", str(config), "--cubes", "8", "--pool", "1"]
    done = subprocess.run(
        [*run, "--epochs", "1", "--batch-size", "3"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert sorted(losses(done.stdout)) == [1, 2, 3]
