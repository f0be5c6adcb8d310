"""The PyTorch adapter under DataLoader with worker processes, forked and spawned."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

from daskcubes import open_cubes, pipeline
from daskcubes.config import Config
from tests.conftest import small_config

# CI installs torch; skip only where it is not installed at all.
torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader  # noqa: E402

from daskcubes.loaders.torch import CubeDataset  # noqa: E402


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Config:
    config = small_config(tmp_path_factory.mktemp("torch"), cubes=21)
    pipeline.run(config, show_progress=False)
    return config


def load_all(dataset: CubeDataset, context: str, workers: int) -> tuple[list, list]:
    """Every batch of one epoch in a shuffled order, and that order."""
    order = [int(i) for i in np.random.default_rng(0).permutation(len(dataset))]
    loader = DataLoader(
        dataset,
        batch_size=4,
        sampler=order,
        num_workers=workers,
        multiprocessing_context=context,
        timeout=60 if workers else 0,  # a deadlock fails the test instead of hanging it
    )
    return order, [batch.numpy() for batch in loader]


@pytest.mark.slow
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_read_the_store(stored: Config, context: str) -> None:
    if context == "fork" and sys.platform != "linux":
        pytest.skip("fork is the default start method on Linux only")
    expected = open_cubes(stored.out)[:]
    dataset = CubeDataset(stored.out)
    dataset.source  # opened in the parent: workers must still open their own  # noqa: B018
    order, batches = load_all(dataset, context, workers=2)
    got = np.concatenate(batches)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected[order])


@pytest.mark.slow
def test_dataloader_streams_cubes_identical_to_the_store(stored: Config) -> None:
    expected = open_cubes(stored.out)[:]
    dataset = CubeDataset(stored)
    # A spawned worker gets the dataset pickled: only the config travels, not the slab.
    assert pickle.loads(pickle.dumps(dataset))._opened is None
    order, batches = load_all(dataset, "fork", workers=2)
    assert np.concatenate(batches).tobytes() == expected[order].tobytes()


def test_dataset_indexing(stored: Config) -> None:
    dataset = CubeDataset(stored.out)
    expected = open_cubes(stored.out)[:]
    assert len(dataset) == len(expected)
    assert np.array_equal(dataset[-1].numpy(), expected[-1])
    assert np.array_equal(torch.stack(dataset.__getitems__([3, 0])).numpy(), expected[[3, 0]])
    with pytest.raises(IndexError):
        dataset[len(expected)]


def test_missing_torch_gives_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.delitem(sys.modules, "daskcubes.loaders.torch")
    with pytest.raises(ImportError, match=r"daskcubes\[torch\]"):
        importlib.import_module("daskcubes.loaders.torch")
