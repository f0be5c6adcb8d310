"""The PyTorch adapter under DataLoader with worker processes, forked and spawned."""

from __future__ import annotations

import pickle
import sys
from typing import Any

import numpy as np
import pytest

from daskcubes import open_cubes, pipeline
from daskcubes.config import Config
from tests.conftest import small_config

# CI installs torch; skip only where it is not installed at all.
torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader  # noqa: E402

from daskcubes.loaders.torch import CubeBatchSampler, CubeDataset  # noqa: E402


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


# -- resumable epochs ----------------------------------------------------------------


def sampler(dataset: CubeDataset, **settings: object) -> CubeBatchSampler:
    values: dict = {"batch_size": 3, "shuffle": True, "seed": 5, **settings}
    return CubeBatchSampler(len(dataset), **values)


# torchdata 0.11 calls torch.set_vital, which torch 2.13 deprecates.
SET_VITAL = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")


def stateful_loader(dataset: CubeDataset, workers: int, **settings: object) -> Any:
    from torchdata.stateful_dataloader import StatefulDataLoader

    return StatefulDataLoader(
        dataset,
        batch_sampler=sampler(dataset, **settings),
        num_workers=workers,
        multiprocessing_context="fork" if workers else None,
        timeout=60 if workers else 0,
    )


def batch_bytes(batches: object) -> list[bytes]:
    return [batch.numpy().tobytes() for batch in batches]  # type: ignore[attr-defined]


@SET_VITAL
@pytest.mark.parametrize(
    "workers", [0, pytest.param(2, marks=pytest.mark.slow)], ids=["in-process", "2-workers"]
)
def test_stateful_dataloader_resumes_mid_epoch(stored: Config, workers: int) -> None:
    pytest.importorskip("torchdata")
    dataset = CubeDataset(stored.out)
    uninterrupted = stateful_loader(dataset, 0, rank=1, world_size=2)
    epochs = [batch_bytes(uninterrupted), batch_bytes(uninterrupted)]
    assert epochs[0] != epochs[1]
    for k in (0, 2, len(epochs[0]) - 1):
        first = stateful_loader(dataset, workers, rank=1, world_size=2)
        taken = [b.numpy().tobytes() for _, b in zip(range(k), first, strict=False)]
        state = first.state_dict()
        del first  # its workers stop here
        resumed = stateful_loader(dataset, workers, rank=1, world_size=2)
        resumed.load_state_dict(state)
        assert taken + batch_bytes(resumed) == epochs[0]
        assert batch_bytes(resumed) == epochs[1]


def test_plain_dataloader_resumes_from_the_sampler_state(stored: Config) -> None:
    dataset = CubeDataset(stored.out)
    expected = open_cubes(stored.out)[:]
    first = sampler(dataset)
    loader = DataLoader(dataset, batch_sampler=first)
    taken = [b.numpy() for _, b in zip(range(2), loader, strict=False)]
    second = sampler(dataset)
    second.load_state_dict(first.state_dict())
    rest = [b.numpy() for b in DataLoader(dataset, batch_sampler=second)]
    order = [i for batch in sampler(dataset) for i in batch]
    assert np.concatenate(taken + rest).tobytes() == expected[order].tobytes()
    second.set_epoch(0)  # over: epoch 0 starts again
    assert [i for batch in second for i in batch] == order
