"""What batches are read from and into: the sources' protocols, and a ring of reused
output buffers. Below both :mod:`daskcubes.train.batches` and :mod:`daskcubes.train.device`,
which each build on them."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

#: Each array a source hands out per cube, by name: ``cubes`` first, then the paired
#: arrays (``labels``, ...), each with the shape of one item and its dtype.
Arrays = dict[str, tuple[tuple[int, ...], np.dtype]]


def empty_outputs(arrays: Arrays, n: int) -> Any:
    """Fresh outputs for ``n`` cubes of ``arrays``: one array, or a mapping of several."""
    made = {name: np.empty((n, *shape), dtype) for name, (shape, dtype) in arrays.items()}
    return made["cubes"] if len(made) == 1 else made


class CubeSource(Protocol):
    """Anything batches can be read from: :class:`~daskcubes.train.reader.CubeStore` or
    :class:`~daskcubes.train.stream.CubeStream`.

    ``read`` must be safe to call from several threads at once for disjoint ``out``.
    """

    def __len__(self) -> int: ...

    @property
    def cube_shape(self) -> tuple[int, int, int]: ...

    @property
    def dtype(self) -> np.dtype: ...

    def read(self, positions: np.ndarray, out: Any = None) -> Any: ...


def source_arrays(source: Any) -> Arrays:
    """Each array ``source`` hands out per cube (its ``arrays``, where it has paired
    arrays or channels), else its cubes."""
    arrays: Arrays | None = getattr(source, "arrays", None)
    return arrays or {"cubes": (tuple(source.cube_shape), np.dtype(source.dtype))}


class PendingCubes(Protocol):
    """A batch a device source has started; ``ready()`` gives it to the training loop."""

    def ready(self) -> Any: ...


@runtime_checkable
class DeviceCubeSource(Protocol):
    """A source that hands batches out on a torch device (:mod:`daskcubes.train.device`):
    ``start`` begins a batch in the thread that reads ahead, and the loop's thread gets
    it from the pending batch's ``ready``. ``fresh`` asks for memory of its own."""

    def __len__(self) -> int: ...

    @property
    def cube_shape(self) -> tuple[int, int, int]: ...

    @property
    def dtype(self) -> np.dtype: ...

    @property
    def arrays(self) -> Arrays: ...

    def start(self, positions: np.ndarray, fresh: bool = False) -> PendingCubes: ...

    def starts(
        self, batches: Sequence[np.ndarray], fresh: bool = False
    ) -> Iterator[PendingCubes]: ...

    def read(self, positions: np.ndarray, out: Any = None) -> Any: ...


class BufferRing:
    """Output buffers of ``(batch_size, *cube_shape)`` reused batch after batch.

    A buffer is reused only when nothing else refers to it: every numpy view of it (and
    every ``torch.from_numpy`` tensor) holds a reference to it, so a batch the caller
    still holds, or one waiting in the prefetch queue, is never overwritten; the ring
    takes a fresh buffer instead. Reuse saves the page faults of fresh memory (a
    batch of article cubes is 128 MB).
    """

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, keep: int) -> None:
        self.shape = shape
        self.dtype = dtype
        self.keep = keep
        self._buffers: list[np.ndarray] = []
        self._free_count = 0  # the reference count of a buffer only the ring holds
        self._lock = threading.Lock()

    def _references(self, slot: int) -> int:
        return sys.getrefcount(self._buffers[slot])

    def take(self, n: int) -> np.ndarray:
        """A ``(n, *cube_shape)`` array in a buffer that nothing else refers to."""
        with self._lock:
            for slot in range(len(self._buffers)):
                if self._references(slot) <= self._free_count:
                    return self._buffers[slot][:n]
            if len(self._buffers) < self.keep:
                self._buffers.append(np.empty(self.shape, self.dtype))
                # Counted the same way as above, while only the ring holds the buffer.
                self._free_count = self._references(len(self._buffers) - 1)
                return self._buffers[-1][:n]
        return np.empty((n, *self.shape[1:]), self.dtype)


def default_threads() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
