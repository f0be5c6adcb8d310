"""Batches of cubes for training: shuffled per epoch, split across ranks, prefetched.

Which cubes form which batch is a pure function of ``(n_cubes, batch_size, seed, epoch,
rank, world_size)``; reading them is done by the source (a cube store or a stream), in
a background thread that stays ``prefetch`` batches ahead of the training loop.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol, TypeVar

import numpy as np

from daskcubes.errors import UserError

T = TypeVar("T")


class CubeSource(Protocol):
    """Anything batches can be read from: :class:`~daskcubes.reader.CubeStore` or
    :class:`~daskcubes.stream.CubeStream`."""

    def __len__(self) -> int: ...

    def read(self, positions: np.ndarray, out: np.ndarray | None = None) -> np.ndarray: ...


class Batch(NamedTuple):
    """``cubes[k]`` is cube ``indices[k]``: ``(n,)`` indices, ``(n, depth, dim, dim)`` cubes."""

    indices: np.ndarray
    cubes: np.ndarray


def epoch_order(n_cubes: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Every cube index once, in the order of ``epoch``: a permutation seeded by
    ``(seed, epoch)`` when ``shuffle``, else ``0 .. n_cubes - 1``."""
    if not shuffle:
        return np.arange(n_cubes)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(epoch,)))
    return rng.permutation(n_cubes)


@dataclass(frozen=True)
class BatchPlan:
    """Which cube indices each batch of one rank holds, epoch by epoch.

    Rank ``r`` of ``world_size`` takes every ``world_size``-th cube of the epoch's order
    starting at ``r``, so the ranks together see every cube exactly once per epoch (with
    ``drop_last=False``); their cube counts differ by at most one.
    """

    n_cubes: int
    batch_size: int
    shuffle: bool = False
    seed: int = 0
    drop_last: bool = False
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"batch_size: {self.batch_size}; expected at least 1")
        if self.world_size < 1:
            raise UserError(f"world_size: {self.world_size}; expected at least 1")
        if not 0 <= self.rank < self.world_size:
            raise UserError(f"rank: {self.rank}; expected 0 to {self.world_size - 1}")

    @property
    def rank_cubes(self) -> int:
        """Cubes this rank sees per epoch (before ``drop_last``)."""
        return len(range(self.rank, self.n_cubes, self.world_size))

    def __len__(self) -> int:
        if self.drop_last:
            return self.rank_cubes // self.batch_size
        return -(-self.rank_cubes // self.batch_size)

    def batches(self, epoch: int) -> list[np.ndarray]:
        """The cube indices of each batch of ``epoch``, in training order."""
        mine = epoch_order(self.n_cubes, self.seed, epoch, self.shuffle)[
            self.rank :: self.world_size
        ]
        return [mine[k * self.batch_size : (k + 1) * self.batch_size] for k in range(len(self))]


class _Failure(NamedTuple):
    error: BaseException


_END = object()


def prefetched(items: Iterator[T], depth: int) -> Generator[T, None, None]:
    """The items of ``items``, produced in a background thread up to ``depth`` ahead.

    An exception in the producer is raised in the consumer. When the consumer stops
    early (``break``, an exception, or closing this generator) the producer is told to
    stop and joined after at most the item it is working on.
    """
    if depth < 1:
        yield from items
        return
    ready: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        # A timed put, so that a producer blocked on a full queue notices ``stop``.
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as error:
            put(_Failure(error))

    thread = threading.Thread(target=produce, name="daskcubes-prefetch", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not _END:
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()


class Batches:
    """Batches of cubes from ``source`` for a training loop.

    Parameters
    ----------
    source : a :class:`~daskcubes.reader.CubeStore` (``open_cubes``) or a
        :class:`~daskcubes.stream.CubeStream`.
    batch_size : cubes per batch.
    shuffle : a new order every epoch, seeded by ``(seed, epoch)``.
    seed : shuffling seed; the same seed gives the same order on every rank and run.
    drop_last : leave out a last, smaller batch.
    rank, world_size : this process's share when several processes train together.
    prefetch : batches read ahead in a background thread (0 reads in the loop).

    Iterating yields :class:`Batch` ``(indices, cubes)``. Each ``for`` loop over the
    object is the next epoch (0, 1, ...); :meth:`epoch` gives any epoch explicitly,
    e.g. when resuming training.
    """

    def __init__(
        self,
        source: CubeSource,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 2,
    ) -> None:
        self.source = source
        self.plan = BatchPlan(len(source), batch_size, shuffle, seed, drop_last, rank, world_size)
        self.prefetch = prefetch
        self.next_epoch = 0

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self) -> Iterator[Batch]:
        epoch, self.next_epoch = self.next_epoch, self.next_epoch + 1
        return self.epoch(epoch)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The batches of ``epoch``, read ``prefetch`` batches ahead."""
        reads = (Batch(ids, self.source.read(ids)) for ids in self.plan.batches(epoch))
        return prefetched(reads, self.prefetch)
