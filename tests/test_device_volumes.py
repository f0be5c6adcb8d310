"""Datasets of many volumes, paired arrays and channels on a torch device (``device="cpu"``
here): the device stream (through the host's gather and through the Triton kernel, run
by Triton's interpreter), batches of a cube store handed to a device, and the torch
loader all hand out each cube with its paired cubes, byte for byte the stored ones,
within any budget; without paired arrays or channels a reader hands out a plain tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader  # noqa: E402

import daskcubes  # noqa: E402
from daskcubes import Batches, open_cubes  # noqa: E402
from daskcubes.api import settings_of  # noqa: E402
from daskcubes.loaders.torch import CubeDataset  # noqa: E402
from daskcubes.train.device import DeviceStream, OnDevice, TritonGather  # noqa: E402
from tests.helpers import triton_interpreted  # noqa: E402

#: Three volumes of different shapes (frames, rows, columns).
SHAPES = {"a": (6, 12, 10), "b": (8, 14, 9), "c": (7, 11, 13)}
#: Windows in every axis, shards of 4 cubes: the cubes of a batch come from several volumes.
SETTINGS: dict[str, Any] = {
    "cubes": 48,
    "depth": 3,
    "height": 4,
    "width": 5,
    "frame_mode": "window",
    "row_mode": "window",
    "column_mode": "window",
    "seed": 11,
    "shard_size": 4,
}
#: Budgets (bytes of source the device holds, shared by a volume's arrays): every
#: upload kept; each volume's arrays whole, but not every volume's at once (the least
#: recently used dropped: bytes of the largest float64 array, for each array of a
#: volume); each array worked through in blocks.
BUDGETS: dict[str, int | None] = {
    "whole": None,
    "lru": 8 * max(int(np.prod(shape)) for shape in SHAPES.values()),
    "blocks": 3_000,
}


class Dataset:
    """A frames store of ``SHAPES`` and the cube store sampled from it."""

    def __init__(self, root: Path, kind: str) -> None:
        rng = np.random.default_rng(5)
        channels = 2 if "channels" in kind else 1
        frames = {
            name: [rng.random(shape).astype(np.float32 if c else np.float64) for c in range(2)]
            for name, shape in SHAPES.items()
        }
        given: dict[str, Any] = {
            "frames": {name: v[:channels] if channels > 1 else v[0] for name, v in frames.items()}
        }
        if "labels" in kind:
            given["labels"] = {
                name: rng.integers(-100, 100, shape).astype(np.int8)
                for name, shape in SHAPES.items()
            }
        self.frames_store = str(root / "frames.zarr")
        self.out = str(root / "cubes.zarr")
        daskcubes.ingest(**given, frames_store=self.frames_store, progress=False)
        daskcubes.sample(frames_store=self.frames_store, out=self.out, progress=False, **SETTINGS)
        self.store = open_cubes(self.out)
        self.stored = as_arrays(self.store[:])
        self.kind = kind
        #: Arrays of a volume: its channels and its labels.
        self.arrays = channels + ("labels" in kind)

    def budget(self, name: str) -> int | None:
        """The budget ``name`` of :data:`BUDGETS`, for the arrays of a volume."""
        budget = BUDGETS[name]
        return None if budget is None else budget * (self.arrays if name == "lru" else 1)

    def settings(self, **more: Any) -> dict[str, Any]:
        return {"frames_store": self.frames_store, **SETTINGS, **more}

    def stream(self, budget: int | None = None, gather: Any = "device") -> Any:
        return daskcubes.open_stream(None, "cpu", gather, **self.settings(max_slab_bytes=budget))


KINDS = ["labels", "channels", "channels+labels"]


@pytest.fixture(scope="module", params=KINDS)
def dataset(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return Dataset(tmp_path_factory.mktemp(request.param.replace("+", "-")), request.param)


@pytest.fixture
def triton_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    pytest.importorskip("triton")
    with triton_interpreted(monkeypatch):
        yield


def as_arrays(read: Any) -> dict[str, np.ndarray]:
    """A read (one array or tensor, or a mapping of them) as host arrays by name."""
    found = read if isinstance(read, dict) else {"cubes": read}
    return {
        name: values.cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
        for name, values in found.items()
    }


def assert_same(read: Any, stored: dict[str, np.ndarray], ids: Any = slice(None)) -> None:
    """``read`` holds the stored arrays' cubes ``ids``, byte for byte, in their dtypes."""
    got = as_arrays(read)
    assert got.keys() == stored.keys()
    for name, values in got.items():
        assert values.dtype == stored[name].dtype, name
        assert values.shape == stored[name][ids].shape, name
        assert values.tobytes() == stored[name][ids].tobytes(), name


def test_the_dataset_has_what_the_tests_need(dataset: Dataset) -> None:
    """Three volumes, each drawn; int8 labels or two channels, as asked."""
    arrays = dataset.store.arrays
    assert ("labels" in arrays) == ("labels" in dataset.kind)
    if "labels" in arrays:
        assert arrays["labels"][1] == np.dtype(np.int8)
    channels = 2 if "channels" in dataset.kind else 1
    assert arrays["cubes"][0] == ((channels,) if channels > 1 else ()) + (3, 4, 5)
    volumes = dataset.store.volumes(slice(None))
    assert set(volumes.tolist()) == {0, 1, 2}
    batches = volumes[: len(volumes) // 8 * 8].reshape(-1, 8)
    assert any(len(set(batch.tolist())) > 1 for batch in batches)


def check_stream(stream: Any, stored: dict[str, np.ndarray]) -> None:
    """A device stream's cubes, read at once, in a shuffled order and in batches."""
    assert stream.arrays.keys() == stored.keys()
    assert_same(stream[:], stored)
    order = np.random.default_rng(0).permutation(len(stream))
    assert_same(stream[order], stored, order)
    assert_same(stream[7], stored, 7)
    for ids, cubes in Batches(stream, 8, shuffle=True, seed=3, prefetch=2):
        assert_same(cubes, stored, ids)


@pytest.mark.parametrize("budget", BUDGETS)
def test_the_device_stream_gives_the_stored_cubes_and_pairs(dataset: Dataset, budget: str) -> None:
    stream = dataset.stream(dataset.budget(budget))
    assert isinstance(stream, DeviceStream)
    assert all(job.source.whole for job in stream.jobs) == (budget != "blocks")
    check_stream(stream, dataset.stored)
    assert stream.source.peak <= stream.source.held


@pytest.mark.usefixtures("triton_on_the_cpu")
@pytest.mark.parametrize("budget", BUDGETS)
def test_the_triton_kernel_gives_the_stored_cubes_and_pairs(
    tmp_path_factory: pytest.TempPathFactory, budget: str
) -> None:
    """The CUDA gather, run by Triton's interpreter (slow: a few reads, of a dataset
    with channels and labels): each volume's cubes put in their slots, each channel in
    its slot of the cubes, the labels in their own dtype."""
    dataset = Dataset(tmp_path_factory.mktemp("triton"), "channels+labels")
    stream = dataset.stream(dataset.budget(budget))
    assert isinstance(stream, DeviceStream) and isinstance(stream.source.gather, TritonGather)
    order = np.random.default_rng(0).permutation(len(stream))[:16]
    assert len(set(dataset.store.volumes(order).tolist())) == 3
    assert_same(stream[order], dataset.stored, order)
    if budget != "blocks":
        for ids, cubes in Batches(stream, 16, shuffle=True, seed=3, prefetch=2):
            assert_same(cubes, dataset.stored, ids)


def test_volumes_beyond_the_budget_drop_the_least_recently_used(dataset: Dataset) -> None:
    """Each volume's arrays fit the budget, all volumes' do not: uploads are dropped and
    made again, the device never holds more than the budget, and the bytes stay."""
    stream = dataset.stream(dataset.budget("lru"))
    assert isinstance(stream, DeviceStream) and all(job.source.whole for job in stream.jobs)
    source = stream.source
    every = sum(
        int(np.prod(job.frames.shape)) * np.dtype(job.dtype).itemsize for job in stream.jobs
    )
    budget = dataset.budget("lru")
    assert budget is not None and source.held == budget < every
    for epoch in range(2):
        for ids, cubes in Batches(stream, 8, shuffle=True, seed=epoch, prefetch=0):
            assert_same(cubes, dataset.stored, ids)
    assert source.peak <= source.held
    assert source.loads > len(stream.jobs)  # uploads dropped, then made again
    whole = dataset.stream()
    assert isinstance(whole, DeviceStream)
    check_stream(whole, dataset.stored)
    assert whole.source.loads == len(whole.jobs)  # within a budget that holds them all


def test_the_uploads_of_the_volumes_in_use_are_kept(dataset: Dataset) -> None:
    """Reading one volume's cubes again and again uploads its arrays once."""
    stream = dataset.stream(dataset.budget("lru"))
    assert isinstance(stream, DeviceStream)
    volumes = dataset.store.volumes(slice(None))
    mine = np.flatnonzero(volumes == 1)
    for _ in range(3):
        assert_same(stream[mine], dataset.stored, mine)
    assert stream.source.loads == len(stream.cut.volumes[1].jobs)  # type: ignore[union-attr]


@pytest.mark.parametrize("gather", ["host", "device"])
def test_batches_of_the_store_on_a_device_hand_out_the_pairs(dataset: Dataset, gather: str) -> None:
    on_device = Batches(dataset.store, 8, shuffle=True, device="cpu", prefetch=2)
    for ids, cubes in on_device:
        assert isinstance(cubes, dict if len(dataset.stored) > 1 else torch.Tensor)
        assert_same(cubes, dataset.stored, ids)
    copied = dataset.stream(gather=gather)
    assert isinstance(copied, OnDevice if gather == "host" else DeviceStream)
    assert_same(copied[:], dataset.stored)
    out = {
        name: torch.empty(values[:5].shape, dtype=torch.from_numpy(values).dtype)
        for name, values in dataset.stored.items()
    }
    read = copied.read(np.arange(5), out if len(out) > 1 else out["cubes"])
    assert_same(read, dataset.stored, slice(0, 5))
    assert_same(out, dataset.stored, slice(0, 5))


@pytest.mark.parametrize("source", ["store", "stream", "stream on a device"])
@pytest.mark.parametrize("collate", ["cubes", "default", "to the cpu"])
def test_the_torch_loader_hands_out_mappings_of_tensors(
    dataset: Dataset, source: str, collate: str
) -> None:
    if source == "store":
        spec: Any = dataset.out
    else:
        spec = settings_of(None, **dataset.settings())
    device = "cpu" if source == "stream on a device" else None
    cube_dataset = CubeDataset(spec, device=device)
    collate_fn = {
        "cubes": CubeDataset.collate,
        "default": None,
        "to the cpu": CubeDataset.collate_to("cpu"),
    }[collate]
    order = [int(i) for i in np.random.default_rng(1).permutation(len(cube_dataset))]
    loader = DataLoader(cube_dataset, batch_size=5, sampler=order, collate_fn=collate_fn)
    stored = dataset.stored
    for k, batch in enumerate(loader):
        ids = order[5 * k : 5 * (k + 1)]
        assert isinstance(batch, dict if len(stored) > 1 else torch.Tensor)
        assert_same(batch, stored, ids)
    item = cube_dataset[4]
    assert isinstance(item, dict if len(stored) > 1 else torch.Tensor)
    assert_same(item, stored, 4)


@pytest.mark.slow
def test_loader_workers_hand_out_mappings_in_shared_memory(dataset: Dataset) -> None:
    """Worker processes read each array of a batch into shared memory of its own
    (spawned workers are as tests/test_torch_loader.py checks for plain cubes)."""
    loader = DataLoader(
        CubeDataset(dataset.out),
        batch_size=5,
        num_workers=2,
        multiprocessing_context="fork",
        collate_fn=CubeDataset.collate,
        timeout=60,
    )
    for k, batch in enumerate(loader):
        tensors = batch if isinstance(batch, dict) else {"cubes": batch}
        assert all(t.is_shared() for t in tensors.values())
        assert_same(batch, dataset.stored, slice(5 * k, 5 * (k + 1)))


@pytest.fixture(scope="module")
def one_volume(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], np.ndarray]:
    """One volume of plain frames (ingested from an array): the article's case."""
    root = tmp_path_factory.mktemp("one")
    frames = np.random.default_rng(2).random((6, 12, 10))
    settings = {"frames_store": str(root / "frames.zarr"), **SETTINGS}
    daskcubes.ingest(frames=frames, frames_store=settings["frames_store"], progress=False)
    daskcubes.sample(**settings, out=str(root / "cubes.zarr"), progress=False)
    return settings, open_cubes(str(root / "cubes.zarr"))[:]


@pytest.mark.parametrize("gather", ["device", "host"])
def test_one_volume_of_plain_frames_hands_out_plain_tensors(
    one_volume: tuple[dict[str, Any], np.ndarray], gather: Any
) -> None:
    settings, stored = one_volume
    stream = daskcubes.open_stream(None, "cpu", gather, **settings)
    assert list(stream.arrays) == ["cubes"]
    cubes = stream[:]
    assert isinstance(cubes, torch.Tensor) and cubes.numpy().tobytes() == stored.tobytes()
    assert isinstance(stream[3], torch.Tensor) and tuple(stream[3].shape) == (3, 4, 5)
    for ids, batch in Batches(stream, 8, shuffle=True):
        assert isinstance(batch, torch.Tensor)
        assert batch.numpy().tobytes() == stored[ids].tobytes()
    if isinstance(stream, DeviceStream):
        assert stream.source.loads == 1 and len(stream.jobs) == 1
    loader = DataLoader(CubeDataset(settings_of(None, **settings), device="cpu"), batch_size=8)
    for k, batch in enumerate(loader):
        assert isinstance(batch, torch.Tensor)
        assert batch.numpy().tobytes() == stored[8 * k : 8 * (k + 1)].tobytes()
