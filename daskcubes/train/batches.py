"""Batches of cubes for training: shuffled per epoch, split across ranks, prefetched.

Which cubes form which batch is a pure function of ``(n_cubes, batch_size, seed, epoch,
rank, world_size)`` and of where the epoch stands (:class:`Position`), so a training run
can save its place mid-epoch and resume it (:class:`EpochCursor`). Reading is done by
the source (a cube store or a stream): a pool of threads reads several batches at once,
each whole, into a ring of reused buffers (:class:`BufferRing`), handed on in order by a
background thread that stays ``prefetch`` batches ahead of the training loop.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import numpy as np

from daskcubes.errors import UserError
from daskcubes.train.buffers import (
    BufferRing,
    CubeSource,
    DeviceCubeSource,
    default_threads,
    empty_outputs,
    source_arrays,
)

T = TypeVar("T")


class Batch(NamedTuple):
    """``cubes[k]`` is cube ``indices[k]``: ``(n,)`` indices, ``(n, depth, dim, dim)`` cubes
    (a numpy array, or a torch tensor for a source on a device; ``(n, channel, depth,
    dim, dim)`` for cubes of several channels). A source with paired arrays gives a
    mapping of array names to such arrays: ``{"cubes": ..., "labels": ...}``."""

    indices: np.ndarray
    cubes: Any


def epoch_order(
    n_cubes: int,
    seed: int,
    epoch: int,
    shuffle: bool,
    groups: np.ndarray | None = None,
    per_block: int = 0,
) -> np.ndarray:
    """Every cube index once, in the order of ``epoch``: a permutation seeded by
    ``(seed, epoch)`` when ``shuffle``, else ``0 .. n_cubes - 1``.

    With ``groups`` (each cube's volume) and ``per_block``, the permutation shuffles in
    blocks, as Mosaic's shuffle-block algorithms do: the volumes in a random order, cut
    into blocks of ``per_block`` volumes, and the cubes of each block in a random order,
    block after block; a batch then draws from the volumes of one block (or two, where
    it straddles them), which a stream holds at once."""
    if not shuffle:
        return np.arange(n_cubes)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(epoch,)))
    if groups is None or per_block < 1:
        return rng.permutation(n_cubes)
    volumes = rng.permutation(int(groups.max()) + 1)
    blocks = [volumes[first : first + per_block] for first in range(0, len(volumes), per_block)]
    return np.concatenate([rng.permutation(np.flatnonzero(np.isin(groups, b))) for b in blocks])


class Position(NamedTuple):
    """Where training stands: in ``epoch``, the first ``taken`` cubes of the epoch's order
    are taken, by all ranks together."""

    epoch: int
    taken: int


@dataclass(frozen=True)
class BatchPlan:
    """Which cube indices each batch of one rank holds, epoch by epoch.

    Rank ``r`` of ``world_size`` takes every ``world_size``-th cube of the epoch's order
    starting at ``r``, so the ranks together see every cube exactly once per epoch (with
    ``drop_last=False``); their cube counts differ by at most one. After ``k`` batches
    on every rank the ranks together have taken the first ``k * batch_size * world_size``
    cubes of the order, whatever the rank: that count (a :class:`Position`) is all a
    resume needs, and the rest of the epoch can be split among any number of ranks.
    """

    n_cubes: int
    batch_size: int
    shuffle: bool = False
    seed: int = 0
    drop_last: bool = False
    rank: int = 0
    world_size: int = 1
    #: Shuffle in blocks of this many volumes (0: over every cube), ``groups`` giving
    #: each cube's volume (see :func:`epoch_order`).
    shuffle_block: int = 0
    groups: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"batch_size: {self.batch_size}; expected at least 1")
        if self.world_size < 1:
            raise UserError(f"world_size: {self.world_size}; expected at least 1")
        if not 0 <= self.rank < self.world_size:
            raise UserError(f"rank: {self.rank}; expected 0 to {self.world_size - 1}")

    def _count(self, cubes: int) -> int:
        """Batches of this rank over ``cubes`` cubes shared by all ranks."""
        mine = len(range(self.rank, cubes, self.world_size))
        return mine // self.batch_size if self.drop_last else -(-mine // self.batch_size)

    @property
    def rank_cubes(self) -> int:
        """Cubes this rank sees per epoch (before ``drop_last``)."""
        return len(range(self.rank, self.n_cubes, self.world_size))

    def __len__(self) -> int:
        return self._count(self.n_cubes)

    def batches(self, epoch: int, taken: int = 0) -> list[np.ndarray]:
        """The cube indices of each batch of ``epoch`` after its first ``taken`` cubes,
        in training order."""
        order = epoch_order(
            self.n_cubes, self.seed, epoch, self.shuffle, self.groups, self.shuffle_block
        )
        left = order[taken:]
        mine = left[self.rank :: self.world_size]
        size = self.batch_size
        return [mine[k * size : (k + 1) * size] for k in range(self._count(len(left)))]

    def after(self, position: Position, batches: int) -> Position:
        """The position once every rank has taken ``batches`` more batches from ``position``."""
        taken = position.taken + batches * self.batch_size * self.world_size
        return Position(position.epoch, min(taken, self.n_cubes))


class EpochCursor:
    """One rank's place in its epochs: what ``state_dict`` saves and ``load_state_dict``
    restores, for :class:`Batches` and the PyTorch batch sampler alike.

    The state is the :class:`Position` and the settings that fix the epoch's order
    (cube count, seed, shuffle). It does not depend on the rank, the world size or
    the batch size: loaded into a loader with another ``world_size`` (or batch size),
    the cubes the epoch has left are split afresh among the new ranks, so that no cube
    is lost or seen twice, provided every old rank saved at the same step (as
    synchronous data-parallel training does).
    """

    def __init__(self, plan: BatchPlan) -> None:
        self.plan = plan
        self.position = Position(0, 0)

    def go_to(self, epoch: int) -> None:
        """Start ``epoch``, unless the cursor is already inside it (a resumed epoch)."""
        if epoch != self.position.epoch:
            self.position = Position(epoch, 0)

    def rest(self) -> list[tuple[np.ndarray, Position]]:
        """The batches the current epoch has left for this rank, each with the position
        once it is handed out. The last one moves the position to the next epoch; an
        epoch with nothing left for this rank is over at once."""
        start = self.position
        batches = self.plan.batches(*start)
        following = Position(start.epoch + 1, 0)
        if not batches:
            self.position = following
            return []
        after = [self.plan.after(start, k) for k in range(1, len(batches))] + [following]
        return list(zip(batches, after, strict=True))

    def state_dict(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "epoch": self.position.epoch,
            "taken": self.position.taken,
            "n_cubes": plan.n_cubes,
            "seed": plan.seed,
            "shuffle": plan.shuffle,
            "shuffle_block": plan.shuffle_block,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("n_cubes", "seed", "shuffle", "shuffle_block"):
            if state.get(name, 0 if name == "shuffle_block" else None) != getattr(self.plan, name):
                raise UserError(
                    f"loader state: {name} {state.get(name)!r}, but this loader has "
                    f"{getattr(self.plan, name)!r}; a saved position only fits the same "
                    "epoch order"
                )
        epoch, taken = int(state["epoch"]), int(state["taken"])
        if epoch < 0 or not 0 <= taken <= self.plan.n_cubes:
            raise UserError(f"loader state: epoch {epoch}, taken {taken}; out of range")
        self.position = Position(epoch, taken)


class _Failure(NamedTuple):
    error: BaseException


_END = object()


def prefetched(items: Iterator[T], depth: int) -> Generator[T, None, None]:
    """The items of ``items``, produced in a background thread up to ``depth`` ahead.

    An exception in the producer is raised in the consumer. When the consumer stops
    early (``break``, an exception, or closing this generator) the producer is told to
    stop and joined after at most the item it is working on; a generator ``items`` is
    then closed in the producer thread.
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
        finally:
            if isinstance(items, Generator):
                items.close()

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


def shuffle_blocks(source: Any) -> tuple[int, np.ndarray | None]:
    """Volumes a shuffled epoch of ``source`` takes a block at a time, and each cube's
    volume: for a stream of volumes that do not all fit its budget at once, as many as
    do; else (0, None), a shuffle over every cube."""
    resident = getattr(source, "resident_volumes", None)
    if resident is None or resident >= source.n_volumes:
        return 0, None
    return resident, source.volumes(np.arange(len(source)))


class Batches:
    """Batches of cubes from ``source`` for a training loop.

    Parameters
    ----------
    source : a :class:`~daskcubes.train.reader.CubeStore` (``open_cubes``) or a
        :class:`~daskcubes.train.stream.CubeStream`.
    batch_size : cubes per batch.
    shuffle : a new order every epoch, seeded by ``(seed, epoch)``; over a stream of
        more volumes than its budget holds at once, in blocks of the volumes it holds
        (see :func:`epoch_order`).
    seed : shuffling seed; the same seed gives the same order on every rank and run.
    drop_last : leave out a last, smaller batch.
    rank, world_size : this process's share when several processes train together.
    prefetch : batches read ahead in a background thread (0 reads in the loop).
    threads : batches read at once, each whole on one thread (default: every core).
    copy : hand out every batch in fresh memory of its own instead of a ring buffer.
    device : a torch device (``"cuda"``, ``"cpu"``, a ``torch.device``) to hand batches
        out on, as tensors: a host source's batches are read on the host as above and
        copied there through pinned staging buffers (:class:`~daskcubes.train.device.OnDevice`);
        on the CPU the batch read is the tensor. A stream opened on a device
        (``open_stream(config, device=...)``) needs none: it cuts every batch there.

    Iterating yields :class:`Batch` ``(indices, cubes)``: a ``for`` loop gives the rest
    of the current epoch, so consecutive loops give epochs 0, 1, ... and a loop left
    early is continued by the next one. :meth:`epoch` gives a given epoch. Where the
    loop stands is saved by :meth:`state_dict` and restored by :meth:`load_state_dict`
    (see :class:`EpochCursor`).

    Ownership: without ``copy``, ``cubes`` lives in a ring of buffers that later
    batches reuse, but only once nothing refers to it any more (see
    :class:`BufferRing`): holding on to a batch, or a view or tensor of it, is safe and
    costs a fresh buffer. With ``copy=True`` every batch comes in memory nothing else
    will touch, for code that keeps raw pointers rather than references.
    """

    def __init__(
        self,
        source: CubeSource | DeviceCubeSource,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 2,
        threads: int | None = None,
        copy: bool = False,
        device: Any = None,
    ) -> None:
        self.threads = threads or default_threads()
        if device is not None and not isinstance(source, DeviceCubeSource):
            from daskcubes.train.device import OnDevice  # torch only when a device is asked for

            source = OnDevice(source, device)
        elif device is not None:
            raise UserError(
                f"device: {device!r}, but {source!r} is on a device already; "
                "leave device out (the source hands its batches out where it is)"
            )
        self.source = source
        # A host source handed to a device (OnDevice): read here, then handed over.
        self.host: CubeSource | None = getattr(source, "host", None)
        per_block, groups = shuffle_blocks(self.host or source) if shuffle else (0, None)
        self.plan = BatchPlan(
            len(source), batch_size, shuffle, seed, drop_last, rank, world_size, per_block, groups
        )
        self.cursor = EpochCursor(self.plan)
        self.prefetch = prefetch
        self.copy = copy
        # In use at once: ``threads`` batches being read, ``prefetch`` queued, the one the
        # loop holds and, for a moment, the one before it.
        keep = prefetch + self.threads + 2
        self.rings = {
            name: BufferRing((batch_size, *shape), dtype, keep)
            for name, (shape, dtype) in source_arrays(source).items()
        }

    def __len__(self) -> int:
        return len(self.plan)

    @property
    def position(self) -> Position:
        """The epoch the next batch belongs to, and the cubes of it already taken."""
        return self.cursor.position

    def __iter__(self) -> Iterator[Batch]:
        return self._rest_of_epoch()

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The batches of ``epoch``: from where it stands if the loader is inside it
        (after :meth:`load_state_dict`), else from its start."""
        self.cursor.go_to(epoch)
        return self._rest_of_epoch()

    def state_dict(self) -> dict[str, Any]:
        """Where the loop stands: the batches handed out so far, not those read ahead."""
        return self.cursor.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: the next loop gives the batches an uninterrupted
        epoch would have given from there on."""
        self.cursor.load_state_dict(state)

    def _read(self, indices: list[np.ndarray]) -> Iterator[Batch]:
        """The batches, in order, ``threads`` of them read at once, each whole by one
        thread: split across threads, each part of a stream's batch would read every
        source row the whole batch shares (measured 5-20% slower). A source on a device
        starts each batch there instead; one that only hands a host source's batches
        over gets them once read."""
        if isinstance(self.source, DeviceCubeSource) and self.host is None:
            starts = self.source.starts(indices, self.copy)  # cut on the device
            yield from map(Batch, indices, starts)
            return
        batches = self._read_on_host(self.host or self.source, indices)
        if self.host is None:
            yield from batches
            return
        for ids, cubes in batches:
            yield Batch(ids, self.source.hand(cubes))  # type: ignore[union-attr]

    def _read_on_host(self, source: CubeSource, indices: list[np.ndarray]) -> Iterator[Batch]:
        name = "daskcubes-read"
        reading: deque[tuple[np.ndarray, Future[np.ndarray]]] = deque()
        with ThreadPoolExecutor(self.threads, thread_name_prefix=name) as pool:
            for ids in indices:
                out = self._outputs(source, len(ids))
                reading.append((ids, pool.submit(source.read, ids, out)))
                if len(reading) == self.threads:
                    done, read = reading.popleft()
                    yield Batch(done, read.result())
            while reading:
                done, read = reading.popleft()
                yield Batch(done, read.result())

    def _outputs(self, source: CubeSource, n: int) -> Any:
        """Where a batch of ``n`` cubes is read to: fresh memory (``copy``) or the rings'."""
        if self.copy:
            return empty_outputs(source_arrays(source), n)
        outs = {name: ring.take(n) for name, ring in self.rings.items()}
        return outs["cubes"] if len(outs) == 1 else outs

    def _rest_of_epoch(self) -> Iterator[Batch]:
        rest = self.cursor.rest()
        reads = prefetched(self._read([ids for ids, _ in rest]), self.prefetch)
        with closing(reads):
            on_device = isinstance(self.source, DeviceCubeSource)
            for batch, (_, after) in zip(reads, rest, strict=True):
                self.cursor.position = after  # handed out: counted before the caller sees it
                yield Batch(batch.indices, batch.cubes.ready()) if on_device else batch
