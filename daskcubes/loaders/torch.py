"""PyTorch adapter: a cube store or a stream as a ``torch.utils.data.Dataset``.

Install with ``pip install 'daskcubes[torch]'``. Works with ``DataLoader`` and any number
of workers, forked or spawned: the dataset pickles as its description only (a path or a
config), and each process opens the store, or loads the stream's slab, on first use.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

try:
    import torch
    from torch.utils.data import Dataset
except ImportError as error:
    raise ImportError(
        "daskcubes.loaders.torch needs PyTorch: pip install 'daskcubes[torch]'"
    ) from error

from daskcubes.batches import CubeSource
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
