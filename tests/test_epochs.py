"""Resumable epochs and ring buffers of ``Batches``: state_dict round trips, ownership."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from daskcubes.errors import UserError
from daskcubes.train.batches import Batches, Position

N_CUBES = 37


class ArraySource:
    """A cube source over an in-memory array: cube ``i`` is ``(2, 3, 3)`` filled with ``i``."""

    def __init__(self, n: int = N_CUBES) -> None:
        values = np.arange(n, dtype=np.float64)[:, None, None, None]
        self.cubes = np.broadcast_to(values, (n, 2, 3, 3))

    def __len__(self) -> int:
        return len(self.cubes)

    @property
    def cube_shape(self) -> tuple[int, int, int]:
        return (2, 3, 3)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float64)

    def read(self, positions: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            out = np.empty((len(positions), *self.cube_shape))
        out[:] = self.cubes[positions]
        return out


def make(**settings: object) -> Batches:
    values: dict = {"batch_size": 4, "shuffle": True, "seed": 3, "prefetch": 2, **settings}
    return Batches(ArraySource(), **values)


def ids(batches: list) -> list[list[int]]:
    return [batch.indices.tolist() for batch in batches]


def check_cubes(batches: list) -> None:
    for batch in batches:
        assert np.array_equal(batch.cubes[:, 0, 0, 0], batch.indices)


def epochs(loader: Batches, n: int) -> list[list[list[int]]]:
    """The batch indices of the next ``n`` epochs (the rest of the current one first)."""
    return [ids(list(loader)) for _ in range(n)]


# -- resuming ------------------------------------------------------------------------


@pytest.mark.parametrize("prefetch", [0, 2])
@pytest.mark.parametrize("drop_last", [False, True])
def test_resuming_after_k_batches_gives_the_rest_of_the_epoch(
    prefetch: int, drop_last: bool
) -> None:
    whole = epochs(make(prefetch=prefetch, drop_last=drop_last), 2)
    for k in range(len(whole[0])):
        first = make(prefetch=prefetch, drop_last=drop_last)
        # Read ahead by the prefetch thread, but only k handed out.
        taken = [batch.indices.tolist() for _, batch in zip(range(k), first, strict=False)]
        state = first.state_dict()
        resumed = make(prefetch=prefetch, drop_last=drop_last)
        resumed.load_state_dict(state)
        rest = [list(resumed) for _ in range(2)]
        check_cubes(rest[0])
        assert taken + ids(rest[0]) == whole[0]
        assert ids(rest[1]) == whole[1]


def test_a_loop_left_early_is_continued_by_the_next() -> None:
    whole = epochs(make(), 1)[0]
    loader = make()
    taken = []
    for batch in loader:
        taken.append(batch.indices.tolist())
        if len(taken) == 3:
            break
    assert loader.position == Position(0, 12)
    assert taken + ids(list(loader)) == whole
    assert loader.position == Position(1, 0)


def test_epoch_resumes_the_restored_epoch_and_starts_others() -> None:
    loader = make()
    next(iter(loader))
    state = loader.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    assert ids(list(resumed.epoch(0))) == epochs(make(), 1)[0][1:]
    assert ids(list(resumed.epoch(0))) == epochs(make(), 1)[0]  # a finished epoch starts again


@pytest.mark.parametrize("world_size", [2, 3])
def test_every_rank_resumes_its_own_batches(world_size: int) -> None:
    for rank in range(world_size):
        whole = epochs(make(rank=rank, world_size=world_size), 2)
        first = make(rank=rank, world_size=world_size)
        taken = [batch.indices.tolist() for _, batch in zip(range(2), first, strict=False)]
        resumed = make(rank=rank, world_size=world_size)
        resumed.load_state_dict(first.state_dict())
        assert [taken + ids(list(resumed)), ids(list(resumed))] == whole


def consumed_by_ranks(world_size: int, steps: int) -> tuple[list[int], dict]:
    """Cubes the ranks of ``world_size`` take in ``steps`` steps of epoch 0, and the
    state rank 0 saves then."""
    seen: list[int] = []
    state: dict = {}
    for rank in range(world_size):
        loader = make(rank=rank, world_size=world_size, prefetch=0)
        for _, batch in zip(range(steps), loader, strict=False):
            seen += batch.indices.tolist()
        state = state or loader.state_dict()
    return seen, state


@pytest.mark.parametrize(("old", "new"), [(2, 3), (3, 2), (2, 1), (1, 4)])
@pytest.mark.parametrize("steps", [0, 1, 3])
def test_a_new_world_size_mid_epoch_splits_the_rest_among_the_new_ranks(
    old: int, new: int, steps: int
) -> None:
    seen, state = consumed_by_ranks(old, steps)
    later: list[int] = []
    for rank in range(new):
        loader = make(rank=rank, world_size=new)
        loader.load_state_dict(state)
        later += [i for batch in ids(list(loader)) for i in batch]
        assert loader.position == Position(1, 0)
    assert sorted(seen + later) == list(range(N_CUBES))  # none lost, none twice


def test_a_new_world_size_between_epochs_keeps_every_cube_once() -> None:
    seen, state = consumed_by_ranks(2, steps=len(make(rank=0, world_size=2)))
    assert sorted(seen) == list(range(N_CUBES))
    epoch_one: list[int] = []
    for rank in range(3):
        loader = make(rank=rank, world_size=3)
        loader.load_state_dict(state)
        assert loader.position == Position(1, 0)
        epoch_one += [i for batch in ids(list(loader)) for i in batch]
    assert sorted(epoch_one) == list(range(N_CUBES))


@pytest.mark.parametrize(
    ("name", "settings"), [("seed", {"seed": 4}), ("shuffle", {"shuffle": False})]
)
def test_a_state_of_another_epoch_order_is_refused(name: str, settings: dict) -> None:
    state = make().state_dict()
    with pytest.raises(UserError, match=f"loader state: {name}"):
        make(**settings).load_state_dict(state)
    with pytest.raises(UserError, match="n_cubes"):
        Batches(ArraySource(N_CUBES + 1), 4, shuffle=True, seed=3).load_state_dict(state)


# -- ring buffers --------------------------------------------------------------------


def ring_buffers(loader: Batches) -> list[np.ndarray]:
    return loader.rings["cubes"]._buffers


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_batches_dropped_after_use_reuse_a_few_buffers(prefetch: int) -> None:
    loader = make(prefetch=prefetch, batch_size=2)
    for _ in range(3):
        for batch in loader:
            assert any(batch.cubes.base is buffer for buffer in ring_buffers(loader))
            check_cubes([batch])
    assert 1 < len(ring_buffers(loader)) <= prefetch + loader.threads + 2


@pytest.mark.parametrize("prefetch", [0, 2])
def test_a_batch_kept_by_the_caller_is_never_overwritten(prefetch: int) -> None:
    loader = make(prefetch=prefetch, batch_size=2)
    kept = []
    for _ in range(2):
        for k, batch in enumerate(loader):
            if k % 2:
                kept.append(batch)  # the whole batch
            elif k % 3 == 0:
                kept.append(batch._replace(cubes=batch.cubes[:1], indices=batch.indices[:1]))
    check_cubes(kept)
    assert len(ring_buffers(loader)) <= prefetch + loader.threads + 2


def test_copy_hands_out_memory_of_its_own() -> None:
    loader = make(copy=True)
    held = list(loader)
    check_cubes(held)
    assert not ring_buffers(loader)
    for a in range(len(held)):
        for b in range(a):
            assert not np.shares_memory(held[a].cubes, held[b].cubes)


def test_cut_threads_stop_with_the_loop() -> None:
    for _ in make(threads=2):
        break
    assert not [t for t in threading.enumerate() if t.name.startswith("daskcubes-")]
