"""PyTorch adapter: a cube store or a stream as a ``torch.utils.data.Dataset``, and a
batch sampler whose place in the epoch can be saved and restored.

Install with ``pip install 'daskcubes[torch]'``. Works with ``DataLoader`` and any number
of workers, forked or spawned: the dataset pickles as its description only (a path or a
config), and each process opens the store, or loads the stream's slab, on first use.
Every batch is read into memory of its own, which the caller owns.

:class:`CubeBatchSampler` speaks the ``state_dict`` / ``load_state_dict`` protocol of
torchdata's ``StatefulDataLoader``, which saves it with the loader's state (workers
included) and resumes an epoch mid-way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

try:
    import torch
    from torch.utils.data import Dataset, Sampler
except ImportError as error:
    raise ImportError(
        "daskcubes.loaders.torch needs PyTorch: pip install 'daskcubes[torch]'"
    ) from error

from daskcubes.batches import BatchPlan, CubeSource, EpochCursor, Position
from daskcubes.config import Config
from daskcubes.reader import open_cubes
from daskcubes.stream import CubeStream


class CubeDataset(Dataset):
    """Cube ``i`` as a ``(depth, dim, dim)`` tensor.

    Parameters
    ----------
    source : path of a cube store, or a :class:`~daskcubes.config.Config` whose cubes
        are streamed from its frames store (nothing stored).
    allow_incomplete : read a cube store whose run did not finish.

    ``DataLoader`` fetches whole batches through ``__getitems__``, read in store order.
    """

    def __init__(self, source: str | Config, allow_incomplete: bool = False) -> None:
        self.spec = source
        self.allow_incomplete = allow_incomplete
        self._opened: CubeSource | None = None
        self._pid = -1
        self._length = len(self.source)

    @property
    def source(self) -> CubeSource:
        """The store or stream, opened once per process (a forked worker reopens it)."""
        if self._opened is None or self._pid != os.getpid():
            if isinstance(self.spec, Config):
                self._opened = CubeStream(self.spec)
            else:
                self._opened = open_cubes(self.spec, allow_incomplete=self.allow_incomplete)
            self._pid = os.getpid()
        return self._opened

    def __getstate__(self) -> dict[str, Any]:
        # Spawned workers get the description only and open the source themselves.
        return {**self.__dict__, "_opened": None, "_pid": -1}

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> torch.Tensor:
        if not -self._length <= index < self._length:
            raise IndexError(f"cube {index} out of range for {self._length} cubes")
        return torch.from_numpy(self.source.read(np.array([index % self._length]))[0])

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        batch = self.source.read(np.asarray(indices, dtype=np.int64) % self._length)
        return list(torch.from_numpy(batch))


class CubeBatchSampler(Sampler[list[int]]):
    """The batches of :class:`~daskcubes.batches.Batches`, as a ``batch_sampler``.

    Parameters are those of :class:`~daskcubes.batches.Batches` (``n_cubes`` is
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
