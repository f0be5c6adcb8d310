"""The completion record of a store: which units of work have finished.

Chunk files prove nothing (a missing chunk reads back as the fill value, and a killed
run may leave a chunk half-way), so the driver — the one process that learns of each
finished task — records finished units in the store's group attribute
``daskcubes.progress``, as sorted ``[start, stop)`` ranges per kind of unit (cube shards,
recipe blocks, frames). It rewrites the attribute at most every ``interval`` seconds
and on exit; zarr writes metadata atomically, so a killed run leaves the last record
whole and at worst redoes the units of its last fraction of a second.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dask.typing import Key

from daskcubes.storage import Storage
from daskcubes.store import ATTRS, store_attrs

Ranges = list[list[int]]
#: For each task, the units of work it finishes: ``(kind, [unit, ...])``.
Finishes = dict[Key, tuple[str, list[int]]]


@dataclass(frozen=True)
class Work:
    """A stage's tasks still to run, and what each finishes when it ends."""

    graph: dict[Key, Any]
    finishes: Finishes


def to_ranges(units: Iterable[int]) -> Ranges:
    """Sorted, merged ``[start, stop)`` ranges covering ``units``."""
    ranges: Ranges = []
    for unit in sorted(set(units)):
        if ranges and ranges[-1][1] == unit:
            ranges[-1][1] = unit + 1
        else:
            ranges.append([unit, unit + 1])
    return ranges


def from_ranges(ranges: Ranges) -> set[int]:
    return {unit for start, stop in ranges for unit in range(start, stop)}


def recorded_progress(attrs: dict[str, Any]) -> dict[str, set[int]]:
    """Finished units by kind, as recorded in a store's ``daskcubes`` attributes."""
    return {kind: from_ranges(ranges) for kind, ranges in (attrs.get("progress") or {}).items()}


class Progress:
    """Finished units by kind, kept in memory only: for outputs that show their own
    progress (a frame file exists only once whole)."""

    def __init__(self, done: dict[str, set[int]]) -> None:
        self.done = done

    def finished(self, kind: str, units: Iterable[int]) -> None:
        """Record that ``units`` of ``kind`` are written."""
        self.done.setdefault(kind, set()).update(units)

    def save(self) -> None:
        """Nothing to save: the output itself shows what is done."""


class ProgressRecord(Progress):
    """Finished units of one store, kept by the driver and written to the store's attributes.

    Parameters
    ----------
    path : the store (a zarr group written by daskcubes).
    storage : how to reach it.
    interval : least seconds between two writes of the record.
    """

    def __init__(self, path: str, storage: Storage, interval: float = 0.2) -> None:
        self._group = storage.open_group(path, mode="r+")
        self._attrs = store_attrs(self._group)
        super().__init__(recorded_progress(self._attrs))
        self._interval = interval
        self._written = time.monotonic()

    def finished(self, kind: str, units: Iterable[int]) -> None:
        """Record that ``units`` of ``kind`` are written; save the record if it is time."""
        super().finished(kind, units)
        if time.monotonic() - self._written >= self._interval:
            self.save()

    def save(self) -> None:
        self._attrs["progress"] = {kind: to_ranges(units) for kind, units in self.done.items()}
        self._group.attrs[ATTRS] = self._attrs
        self._written = time.monotonic()
