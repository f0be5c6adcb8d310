"""PyTorch adapter: a cube store or a stream as a ``torch.utils.data.Dataset``, and a
batch sampler whose place in the epoch can be saved and restored.

Install with ``pip install 'daskcubes[torch]'``. Works with ``DataLoader`` and any number
of workers, forked or spawned: the dataset pickles as its description only (a path or a
config), and each process opens the store, or loads the stream's slab, on first use.
Every batch is read into memory of its own, which the caller owns.

A store or stream with paired arrays (``labels``, masks) hands out each cube with its
paired cubes, as a mapping of tensors by array name, ``{"cubes": ..., "labels": ...}``
(each in its own dtype), the dictionaries MONAI and TorchIO pipelines take; cubes of
several channels are ``(channel, depth, height, width)``, batched ``(N, C, D, H, W)``
as PyTorch's 3-D convolutions take them. Without paired arrays a cube is a tensor.

With :meth:`CubeDataset.collate` as the loader's ``collate_fn``, each batch is read once,
straight into the tensor the training loop gets: in a worker process, into shared memory
that is handed to the main process as it is. ``default_collate`` works too, at the price
of a second copy of every batch (into a fresh shared-memory segment, in a worker).

:class:`CubeBatchSampler` speaks the ``state_dict`` / ``load_state_dict`` protocol of
torchdata's ``StatefulDataLoader``, which saves it with the loader's state (workers
included) and resumes an epoch mid-way.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from daskcubes.errors import UserError

try:
    import torch
    from torch.utils.data import Dataset, Sampler, default_collate, get_worker_info
except ImportError as error:
    raise ImportError(
        "daskcubes.loaders.torch needs PyTorch: pip install 'daskcubes[torch]'"
    ) from error

from daskcubes.config import Config
from daskcubes.jobs import open_stream
from daskcubes.train.batches import BatchPlan, EpochCursor, Position
from daskcubes.train.buffers import CubeSource, DeviceCubeSource, source_arrays
from daskcubes.train.device import OnDevice, Pending, Staging, fill_from, usable_device
from daskcubes.train.reader import first_of, open_cubes

# Shared-memory buffers each worker keeps: its batches waiting in the loader's queue
# (``prefetch_factor``, 2 by default), the one the training loop holds, and the one
# before it, which the loop drops as the next arrives.
SHARED_BUFFERS = 4


class CubeDataset(Dataset):
    """Cube ``i`` as a ``(depth, dim, dim)`` tensor (``(channel, depth, dim, dim)`` for
    cubes of several channels), or, where the cubes have paired arrays, a mapping of
    such tensors by array name: ``{"cubes": ..., "labels": ...}``.

    Parameters
    ----------
    source : path of a cube store, or a :class:`~daskcubes.config.Config` whose cubes
        are streamed from its frames store (nothing stored).
    allow_incomplete : read a cube store whose run did not finish.
    device : a torch device to hand cubes out on: a config's cubes are then cut on it
        (``open_stream(config, device=...)``), a store's read on the host and copied
        there through pinned staging buffers. On a GPU the loader's own process does
        that work, so a ``DataLoader`` over it has ``num_workers=0`` (CUDA does not
        survive a fork); for workers, leave ``device`` out and use ``pin_memory``.

    ``DataLoader`` fetches whole batches through ``__getitems__``, read in store order,
    into one tensor per array (in shared memory inside a worker process) that
    :meth:`collate` hands on without copying.
    """

    def __init__(
        self, source: str | Config, allow_incomplete: bool = False, device: Any = None
    ) -> None:
        self.spec = source
        self.allow_incomplete = allow_incomplete
        self.device = None if device is None else str(usable_device(device))
        self._opened: CubeSource | DeviceCubeSource | None = None
        self._buffers = SharedBuffers(keep=0)
        self._pid = -1
        self._length = len(self.source)

    @property
    def source(self) -> Any:
        """The store or stream, opened once per process (a forked worker reopens it)."""
        if self._opened is None or self._pid != os.getpid():
            on_gpu = self.device is not None and torch.device(self.device).type != "cpu"
            if on_gpu and get_worker_info() is not None:
                raise UserError(
                    f"CubeDataset(device={self.device!r}) cuts or copies its cubes in the "
                    "loader's own process: use num_workers=0, or leave device out and pass "
                    "collate_fn=CubeDataset.collate (or pin_memory=True) to the DataLoader"
                )
            if isinstance(self.spec, Config):
                self._opened = open_stream(self.spec, self.device)
            else:
                store = open_cubes(self.spec, allow_incomplete=self.allow_incomplete)
                self._opened = store if self.device is None else OnDevice(store, self.device)
            arrays = len(source_arrays(self._opened))
            self._buffers = SharedBuffers(keep=SHARED_BUFFERS * arrays)
            self._pid = os.getpid()
        return self._opened

    @property
    def buffers(self) -> SharedBuffers:
        """This process's shared-memory batch buffers (a worker's)."""
        self.source  # noqa: B018  (opens them with the source, once per process)
        return self._buffers

    def __getstate__(self) -> dict[str, Any]:
        # Spawned workers get the description only and open the source themselves.
        return {**self.__dict__, "_opened": None, "_buffers": None, "_pid": -1}

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> Any:
        if not -self._length <= index < self._length:
            raise IndexError(f"cube {index} out of range for {self._length} cubes")
        return as_tensors(first_of(self.source.read(np.array([index % self._length]))))

    def __getitems__(self, indices: list[int]) -> CubeRows:
        source = self.source
        positions = np.asarray(indices, dtype=np.int64) % self._length
        if isinstance(source, DeviceCubeSource):
            return CubeRows(source.read(positions))
        if get_worker_info() is None:
            return CubeRows(as_tensors(source.read(positions)))
        outs, batch = {}, {}
        for name, (shape, dtype) in source_arrays(source).items():
            outs[name], batch[name] = self.buffers.take((len(positions), *shape), dtype)
        source.read(positions, out=outs["cubes"] if len(outs) == 1 else outs)
        return CubeRows(batch["cubes"] if len(batch) == 1 else batch)

    @staticmethod
    def collate(rows: Any) -> Any:
        """The loader's ``collate_fn``: the batch :meth:`__getitems__` read, as it is.

        Anything else (a dataset wrapped in another, say) goes to ``default_collate``.
        """
        if isinstance(rows, CubeRows):
            return rows.batch
        return default_collate(rows)

    @staticmethod
    def collate_to(device: Any) -> DeviceCollate:
        """A ``collate_fn`` like :meth:`collate` that hands batches out on ``device``.

        On ``"cpu"`` the batch read is handed on as it is (shared memory from a worker
        included). On a GPU it runs where the batches arrive, the loader's own process
        (``num_workers=0``): each batch crosses through a pinned staging buffer with a
        ``non_blocking`` copy.
        """
        return DeviceCollate(str(usable_device(device)))


class DeviceCollate:
    """:meth:`CubeDataset.collate`, then onto ``device`` (see :meth:`CubeDataset.collate_to`).

    Pickles as the device's name: each process makes its own staging buffers."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._staging: Staging | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"device": self.device, "_staging": None}

    def __call__(self, rows: Any) -> Any:
        batch = CubeDataset.collate(rows)
        tensors = batch if isinstance(batch, dict) else {"cubes": batch}
        if not all(isinstance(t, torch.Tensor) for t in tensors.values()) or all(
            t.device == torch.device(self.device) for t in tensors.values()
        ):
            return batch
        if get_worker_info() is not None:
            raise UserError(
                f"collate_fn=CubeDataset.collate_to({self.device!r}) runs in worker "
                "processes, where CUDA is not available: use num_workers=0, or "
                "CubeDataset.collate with pin_memory=True and .to(device, non_blocking=True)"
            )
        host = {name: tensor.numpy() for name, tensor in tensors.items()}
        arrays = {name: (values.shape[1:], values.dtype) for name, values in host.items()}
        staging = self._staging
        if staging is None or staging.arrays != arrays:
            staging = self._staging = Staging(torch.device(self.device), 0, arrays)
        n = len(host["cubes"])
        pending: Pending = staging.upload(n, fill_from(host), fresh=True)
        return pending.ready()


class CubeRows(list[Any]):
    """The cubes of one batch as a list of tensors (what ``default_collate`` stacks), or of
    mappings of tensors by array name where the cubes have paired arrays, and the ``(n,
    depth, dim, dim)`` tensor they are rows of (the mapping of such tensors), ``batch``."""

    def __init__(self, batch: Any) -> None:
        if isinstance(batch, dict):
            n = len(batch["cubes"])
            super().__init__({name: t[k] for name, t in batch.items()} for k in range(n))
        else:
            super().__init__(batch)
        self.batch = batch


def as_tensors(read: Any) -> Any:
    """A read as tensors (over the same memory): one, or a mapping of them by name."""
    if isinstance(read, dict):
        return {name: as_tensors(values) for name, values in read.items()}
    return read if isinstance(read, torch.Tensor) else torch.from_numpy(np.asarray(read))


class SharedBuffers:
    """Batch buffers in shared memory, of one ``DataLoader`` worker process, reused once
    no process can still read a batch handed out of them.

    Fresh shared memory costs more than reading the batch into it: allocation, a page
    fault per 4 kB page (shared memory gets no transparent huge pages) and freeing.
    Each batch handed out is a new mapping of its buffer through a file description of
    its own, under a shared ``flock``. torch sends a shared tensor to another process as
    a duplicate of that descriptor and keeps it open as long as the memory is mapped,
    so the lock lasts while any process (the main one, or one it passes the batch on to)
    may still read the batch; the worker writes a buffer again only once it can take an
    exclusive lock on it. Otherwise, and beyond ``keep`` buffers, a batch gets fresh
    shared memory, as ``default_collate`` allocates it.
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
        # Per buffer: a descriptor of its own, and the worker's lasting mapping of it.
        self._buffers: list[tuple[int, torch.UntypedStorage]] = []
        # Lock-based reuse needs /proc/self/fd and descriptors as the sharing strategy.
        self.reuse = (
            sys.platform == "linux"
            and torch.multiprocessing.get_sharing_strategy() == "file_descriptor"
        )

    def __del__(self) -> None:
        for fd, _ in self._buffers:
            os.close(fd)

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[np.ndarray, torch.Tensor]:
        """An array of ``shape`` to read into, and the tensor to hand out with its values."""
        nbytes = int(np.prod(shape)) * dtype.itemsize
        for fd, mapped in self._buffers:
            if mapped.nbytes() >= nbytes and unlocked(fd):
                write = as_tensor(mapped, shape, dtype)
                return write.numpy(), as_tensor(locked_mapping(fd, mapped.nbytes()), shape, dtype)
        fresh = torch.UntypedStorage._new_shared(nbytes)
        if not self.reuse or len(self._buffers) == self.keep:
            batch = as_tensor(fresh, shape, dtype)
            return batch.numpy(), batch
        own = os.open(f"/proc/self/fd/{fresh._share_fd_cpu_()[0]}", os.O_RDWR)
        self._buffers.append((own, map_shared(own, nbytes)))
        return self.take(shape, dtype)


def unlocked(fd: int) -> bool:
    """Whether no other open of the file ``fd`` refers to holds a lock on it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


def locked_mapping(fd: int, nbytes: int) -> torch.UntypedStorage:
    """A new mapping of the file ``fd`` refers to, through a new, share-locked open of it."""
    handed = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
    try:
        fcntl.flock(handed, fcntl.LOCK_SH)
        return map_shared(handed, nbytes)
    finally:
        os.close(handed)


def map_shared(fd: int, nbytes: int) -> torch.UntypedStorage:
    """A mapping of the shared-memory file ``fd`` refers to, keeping a duplicate of ``fd``
    open as long as it lives (how torch maps a shared tensor another process sent)."""
    return torch.UntypedStorage._new_shared_fd_cpu(fd, nbytes)  # type: ignore[attr-defined]


def as_tensor(
    storage: torch.UntypedStorage, shape: tuple[int, ...], dtype: np.dtype
) -> torch.Tensor:
    """The first values of ``storage`` as a tensor of ``shape`` and ``dtype``."""
    flat = torch.from_numpy(np.empty(0, dtype)).set_(storage)
    return flat[: int(np.prod(shape))].view(shape)


class CubeBatchSampler(Sampler[list[int]]):
    """The batches of :class:`~daskcubes.train.batches.Batches`, as a ``batch_sampler``.

    Parameters are those of :class:`~daskcubes.train.batches.Batches` (``n_cubes`` is
    ``len(dataset)``). Each ``iter`` gives the rest of the current epoch, so a
    ``DataLoader`` goes through epochs 0, 1, ...; :meth:`set_epoch` picks one.
    :meth:`state_dict` counts the batches handed to the loader. torchdata's
    ``StatefulDataLoader`` saves it at the step the training loop has reached (also
    with workers reading ahead) and restores it on ``load_state_dict``; a plain
    ``DataLoader`` with workers hands out batches ahead of the loop, so its sampler's
    state is ahead of the loop by up to ``prefetch_factor * num_workers`` batches.
    """

    def __init__(
        self,
        n_cubes: int,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        plan = BatchPlan(n_cubes, batch_size, shuffle, seed, drop_last, rank, world_size)
        self.cursor = EpochCursor(plan)

    def __len__(self) -> int:
        return len(self.cursor.plan)

    @property
    def position(self) -> Position:
        return self.cursor.position

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` next, unless the sampler is already inside it."""
        self.cursor.go_to(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        for ids, after in self.cursor.rest():
            self.cursor.position = after
            yield ids.tolist()

    def state_dict(self) -> dict[str, Any]:
        return self.cursor.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor.load_state_dict(state)
