"""The PyTorch adapter under DataLoader with worker processes, forked and spawned."""

from __future__ import annotations

import pickle
import sys
from typing import Any

import numpy as np
import pytest

from daskcubes import jobs, open_cubes
from daskcubes.config import Config
from tests.helpers import small_config

# CI installs torch; skip only where it is not installed at all.
torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader  # noqa: E402

from daskcubes.loaders.torch import CubeBatchSampler, CubeDataset, SharedBuffers  # noqa: E402


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Config:
    config = small_config(tmp_path_factory.mktemp("torch"), cubes=21)
    jobs.run(config, show_progress=False)
    return config


def load_all(
    dataset: CubeDataset, context: str, workers: int, collate: Any = None
) -> tuple[list, list]:
    """Every batch of one epoch in a shuffled order, and that order."""
    order = [int(i) for i in np.random.default_rng(0).permutation(len(dataset))]
    loader = DataLoader(
        dataset,
        batch_size=4,
        sampler=order,
        num_workers=workers,
        multiprocessing_context=context,
        collate_fn=collate,
        timeout=60 if workers else 0,  # a deadlock fails the test instead of hanging it
    )
    return order, [batch.numpy() for batch in loader]


@pytest.mark.slow
@pytest.mark.parametrize("collate", [None, CubeDataset.collate], ids=["default", "cubes"])
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_read_the_store(stored: Config, context: str, collate: Any) -> None:
    if context == "fork" and sys.platform != "linux":
        pytest.skip("fork is the default start method on Linux only")
    expected = open_cubes(stored.out)[:]
    dataset = CubeDataset(stored.out)
    dataset.source  # opened in the parent: workers must still open their own  # noqa: B018
    order, batches = load_all(dataset, context, workers=2, collate=collate)
    got = np.concatenate(batches)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected[order])


def test_collate_hands_on_the_batch_read(stored: Config) -> None:
    dataset = CubeDataset(stored.out)
    expected = open_cubes(stored.out)[:]
    rows = dataset.__getitems__([3, 0])
    batch = CubeDataset.collate(rows)
    assert batch.data_ptr() == rows[0].data_ptr()  # not copied
    assert np.array_equal(batch.numpy(), expected[[3, 0]])
    # Other batches (of a dataset wrapped in another, say) are collated as by default.
    assert np.array_equal(CubeDataset.collate([dataset[1], dataset[2]]).numpy(), expected[1:3])


@pytest.mark.slow
def test_batches_held_by_the_loop_are_never_overwritten(stored: Config) -> None:
    """Workers reuse their shared-memory buffers, but never one the main process holds."""
    loader = DataLoader(
        CubeDataset(stored.out),
        batch_size=2,
        shuffle=True,  # a new order every epoch: an overwritten batch changes
        num_workers=2,
        persistent_workers=True,  # the same workers, and buffers, for every epoch
        multiprocessing_context="fork",
        collate_fn=CubeDataset.collate,
        timeout=60,
    )
    for _ in range(3):
        # Two epochs, every batch of them held, with a copy taken as it arrived.
        held = [(batch, batch.clone()) for _ in range(2) for batch in loader]
        for batch, arrived in held:
            assert torch.equal(batch, arrived)
        del held  # dropped: the next epochs may reuse their buffers


def test_shared_buffers_are_reused_once_no_batch_of_them_is_held() -> None:
    buffers = SharedBuffers(keep=2)
    dtype = np.dtype("float32")
    write, batch = buffers.take((2, 3), dtype)
    write[:] = 1
    assert batch.is_shared()
    assert batch.data_ptr() != write.ctypes.data  # a mapping of its own
    assert np.array_equal(batch.numpy(), write)
    other, _held = buffers.take((2, 3), dtype)  # the first batch is held: another buffer
    assert not np.shares_memory(other, write) and other.ctypes.data != write.ctypes.data
    del batch
    again, _again = buffers.take((1, 3), dtype)  # a smaller last batch fits a buffer too
    assert again.ctypes.data == write.ctypes.data
    fresh, kept = buffers.take((2, 3), dtype)  # both kept buffers held: fresh memory
    assert fresh.ctypes.data not in {write.ctypes.data, other.ctypes.data}
    assert kept.is_shared()


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
        collate_fn=CubeDataset.collate,
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
