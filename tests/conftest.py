from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from daskcubes.config import PRESETS, Config

#: Names of the shipped presets (``--config NAME``).
PRESET_NAMES = sorted(
    p.name.removesuffix(".yaml") for p in PRESETS.iterdir() if p.name.endswith(".yaml")
)


def small_config(root: Path, **overrides: Any) -> Config:
    """Settings of a small run whose files all live under ``root``."""
    values: dict[str, Any] = {
        "frames": str(root / "frames"),
        "frames_store": str(root / "frames.zarr"),
        "out": str(root / "cubes.zarr"),
        "n_frames": 5,
        "n_rows": 12,
        "n_cols": 20,
        "cubes": 40,
        "dim": 6,
        "seed": 7,
        "shard_size": 4,
        "batch_size": 8,
        "scheduler": "sync",
    }
    return Config(**{**values, **overrides})


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return small_config(tmp_path)
