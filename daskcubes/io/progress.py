"""The completion record of a store: which units of work have finished.

Chunk files prove nothing (a missing chunk reads back as the fill value, and a killed
run may leave a chunk half-way), so the driver — the one process that learns of each
finished task — records finished units in the store's group attribute
``daskcubes.progress``, as sorted ``[start, stop)`` ranges per kind of unit (cube shards,
recipe blocks, frames). It rewrites the attribute (the group's ``zarr.json``, a few KB:
units finish almost in order, so the ranges stay few) at most every ``interval`` seconds
and on exit; zarr writes metadata atomically, so a killed run leaves the last record
whole and at worst redoes the units that were running and those of the last interval.

A save costs what writing the ranges costs, not what the run has done: the ranges are
kept merged as units finish, rather than rebuilt from every finished unit (which took
13 ms at 31,250 of 62,500 shards, and grows with the run). Should the ranges ever be
many (units finishing far out of order), the interval grows to ten times the last
save's cost, so that the record never takes more than a tenth of the driver's time.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dask.typing import Key

from daskcubes.io.layout import ATTRS, store_attrs
from daskcubes.io.storage import Storage

Ranges = list[list[int]]
#: For each task, the units of work it finishes: ``(kind, [unit, ...])``.
Finishes = dict[Key, tuple[str, list[int]]]


@dataclass(frozen=True)
class Work:
    """A stage's tasks still to run, and what each finishes when it ends."""

    graph: dict[Key, Any]
    finishes: Finishes


def to_ranges(units: Iterable[int], ranges: Iterable[Sequence[int]] = ()) -> Ranges:
    """Sorted, merged ``[start, stop)`` ranges covering ``units`` and the given ``ranges``.

    Costs ``O(k log k)`` for ``k`` ranges and units given, whatever the ranges cover.
    """
    merged: Ranges = []
    for start, stop in sorted([*map(tuple, ranges), *((unit, unit + 1) for unit in units)]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    return merged


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
        self._ranges: dict[str, Ranges] = dict(self._attrs.get("progress") or {})
        super().__init__(recorded_progress(self._attrs))
        self._unsaved: dict[str, list[int]] = {}
        self._interval = interval
        #: Seconds to wait between saves: ``interval``, or ten times the last save's cost.
        self.wait = interval
        self._written = time.monotonic()

    def finished(self, kind: str, units: Iterable[int]) -> None:
        """Record that ``units`` of ``kind`` are written; save the record if it is time."""
        units = list(units)
        super().finished(kind, units)
        self._unsaved.setdefault(kind, []).extend(units)
        if time.monotonic() - self._written >= self.wait:
            self.save()

    def save(self) -> None:
        started = time.monotonic()
        for kind, units in self._unsaved.items():
            self._ranges[kind] = to_ranges(units, self._ranges.get(kind, []))
        self._unsaved = {}
        self._attrs["progress"] = self._ranges
        self._group.attrs[ATTRS] = self._attrs
        self._written = time.monotonic()
        self.wait = max(self._interval, 10 * (self._written - started))
