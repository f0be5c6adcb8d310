"""The targets, each a bound on one row or on the ratio of two rows, found by key.

A target whose row is missing from the run is an error (:class:`MissingRow`), unless
the rows need a module that is not installed: then it reads "not measured".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bench.rows import Key, Row, importable


class MissingRow(LookupError):
    """A target names a row the run did not measure."""


@dataclass(frozen=True)
class Target:
    """``row`` (divided by ``reference`` when given) must be at least ``bound``, or at
    most when ``at_most``; ``needs`` names a module without which the rows are skipped."""

    text: str
    row: Key
    reference: Key | None
    bound: float
    at_most: bool = False
    needs: str | None = None

    @property
    def keys(self) -> set[Key]:
        return {self.row, *([self.reference] if self.reference else [])}

    def measured(self, rates: dict[Key, float]) -> float:
        """The row's rate, or its ratio to the reference; raises :class:`MissingRow`."""
        missing = sorted(self.keys - set(rates))
        if missing:
            raise MissingRow(f"target {self.text!r}: no row {', '.join(map(repr, missing))}")
        value = rates[self.row]
        return value / rates[self.reference] if self.reference else value

    def met(self, value: float) -> bool:
        return value <= self.bound if self.at_most else value >= self.bound


TARGETS: list[Target] = [
    Target("generation >= 5x article step 3", Key.GENERATION, Key.STEP3, 5),
    Target("generation >= 0.6x the cut ceiling", Key.GENERATION, Key.CUT_CEILING, 0.6),
    Target("stream mode >= 1.0x the stacked-numpy peer", Key.STREAM_LOOP, Key.STEP3_STACKED, 1.0),
    Target(
        "stream mode, float32 >= 1.0x the stacked-numpy peer, float32",
        Key.STREAM_LOOP_FLOAT32,
        Key.STEP3_STACKED_FLOAT32,
        1.0,
    ),
    Target("moonshot: generation >= 0.8x the cut ceiling", Key.GENERATION, Key.CUT_CEILING, 0.8),
    Target("generation >= 0.95x the kernel alone", Key.GENERATION, Key.CUT_KERNEL, 0.95),
    Target("stream mode >= 0.95x generation", Key.STREAM_LOOP, Key.GENERATION, 0.95),
    Target(
        "stream mode: 1,000,000 article cubes in <= 12 min (1,389 cubes/s)",
        Key.STREAM_LOOP,
        None,
        10**6 / (12 * 60),
    ),
    Target("end to end >= 0.8x I/O ceiling", Key.END_TO_END, Key.IO_CEILING, 0.8),
    Target(
        "end to end >= 0.9x 1/(1/generation + 1/write path)",
        Key.END_TO_END,
        Key.END_TO_END_BOUND,
        0.9,
    ),
    Target("end to end >= 50x plain dask.array", Key.END_TO_END, Key.PLAIN_DASK, 50),
    Target("ingest >= 1.5x pandas.read_parquet loop", Key.INGEST, Key.READ_PARQUET, 1.5),
    Target("LocalCluster >= 0.9x threaded scheduler", Key.CLUSTER_RATIO, None, 0.9),
    Target(
        "end to end with chunk checksums >= 0.9x without (alternating pairs)",
        Key.CHECKSUMS_RATIO,
        None,
        0.9,
    ),
    Target("verify >= 0.8x reading the store's files", Key.VERIFY, Key.READ_STORE_FILES, 0.8),
    Target("cube store reads >= 0.8x numpy.fromfile", Key.STORE_BATCHES, Key.FROMFILE, 0.8),
    Target("stream mode >= 0.9x daskcubes generation", Key.STREAM_BATCHES, Key.GENERATION, 0.9),
    Target("stream mode >= 2x article step 3", Key.STREAM_BATCHES, Key.STEP3, 2),
    Target(
        'stream mode on device="cpu" >= 0.95x stream mode (alternating pairs)',
        Key.DEVICE_CPU_RATIO,
        None,
        0.95,
        needs="torch",
    ),
    Target(
        "torch DataLoader >= 0.8x Batches, cube store",
        Key.TORCH_STORE,
        Key.STORE_BATCHES,
        0.8,
        needs="torch",
    ),
    Target(
        "torch DataLoader >= 0.8x Batches, stream mode",
        Key.TORCH_STREAM,
        Key.STREAM_BATCHES,
        0.8,
        needs="torch",
    ),
    Target(
        "random row windows >= 0.9x the article's cubes, streamed",
        Key.STREAM_LOOP_ROW_WINDOWS,
        Key.STREAM_LOOP,
        0.9,
    ),
    Target("windows in every axis >= 5x xbatcher", Key.WINDOWS, Key.XBATCHER, 5, needs="xbatcher"),
    Target(
        "out of core: peak memory <= 1.2x (budget + one batch)",
        Key.OUT_OF_CORE_PEAK,
        None,
        1.2,
        at_most=True,
    ),
    Target("planning <= 10 s", Key.PLAN_TIME, None, 10, at_most=True),
    Target(
        "uniform windows >= 1.5x TorchIO UniformSampler",
        Key.PATCH_UNIFORM,
        Key.TORCHIO_UNIFORM,
        1.5,
        needs="torchio",
    ),
    Target(
        "grid windows >= 2x TorchIO GridSampler",
        Key.PATCH_GRID,
        Key.TORCHIO_GRID,
        2,
        needs="torchio",
    ),
    Target("grid windows >= 20x xbatcher", Key.PATCH_GRID, Key.XBATCHER, 20, needs="xbatcher"),
    *(
        Target(f"{what} windows >= {bound}x {theirs}", ours, reference, bound, needs=module)
        for what, ours, rows in (
            ("weighted", Key.PATCH_WEIGHTED, (Key.TORCHIO_WEIGHTED, Key.MONAI_WEIGHTED)),
            ("label-balanced", Key.PATCH_LABELS, (Key.TORCHIO_LABELS, Key.MONAI_LABELS)),
        )
        for reference, theirs, bound, module in (
            (rows[0], rows[0].value.removeprefix("patches: "), 2, "torchio"),
            (rows[1], rows[1].value.removeprefix("patches: "), 2, "monai"),
            (Key.TORCHIO_QUEUE, "TorchIO Queue", 10, "torchio"),
        )
    ),
    Target("weighted windows >= 0.8x uniform windows", Key.PATCH_WEIGHTED, Key.PATCH_UNIFORM, 0.8),
    Target(
        "label-balanced windows >= 0.8x uniform windows", Key.PATCH_LABELS, Key.PATCH_UNIFORM, 0.8
    ),
    Target(
        "planning a million weighted windows <= 10 s",
        Key.PLAN_WEIGHTED,
        None,
        10,
        at_most=True,
    ),
    Target("planning peak memory <= 1 GiB", Key.PLAN_MEMORY, None, 1024, at_most=True),
    Target(
        "a million small cubes in 62,500 tasks on threads <= 30 s",
        Key.MILLION_THREADS_SECONDS,
        None,
        30,
        at_most=True,
    ),
    Target(
        "a million small cubes: LocalCluster <= 1.3x threads",
        Key.MILLION_CLUSTER_VS_THREADS,
        None,
        1.3,
        at_most=True,
    ),
    Target(
        "a million small cubes: <= 1.1 filesystem entries a shard",
        Key.MILLION_ENTRIES_PER_SHARD,
        None,
        1.1,
        at_most=True,
    ),
    *(
        Target(f"a million small cubes: {name} <= 1 GiB", key, None, 1024, at_most=True)
        for name, key in (
            ("threads' driver peak RSS", Key.MILLION_THREADS_DRIVER_PEAK),
            ("LocalCluster's driver (and scheduler) peak RSS", Key.MILLION_CLUSTER_DRIVER_PEAK),
        )
    ),
    Target(
        "resume after SIGKILL at ~50%: <= 2% of batches redone",
        Key.MILLION_REDONE_SHARE,
        None,
        2,
        at_most=True,
    ),
    Target("resume after SIGKILL: byte-identical", Key.MILLION_IDENTICAL, None, 1),
    Target("verify of the million-cube store <= 30 s", Key.MILLION_VERIFY, None, 30, at_most=True),
    *(
        # The faster peer's rows are there where TorchIO or MONAI is: no single module.
        Target(text, Key.VOLUMES_STREAM, Key.VOLUMES_FASTER_PEER, bound)
        for text, bound in (
            ("many volumes: stream mode with labels >= 5x the faster peer", 5),
            ("moonshot: many volumes: stream mode with labels >= 20x the faster peer", 20),
        )
    ),
    Target(
        "many volumes: stream mode's peak memory <= the faster peer's (with workers)",
        Key.VOLUMES_STREAM_PEAK,
        Key.VOLUMES_PEER_PEAK,
        1.0,
        at_most=True,
    ),
    Target(
        "many volumes: stream mode under a quarter-dataset budget >= 0.5x in memory",
        Key.VOLUMES_QUARTER_RATIO,
        None,
        0.5,
    ),
    Target(
        "peak memory, larger run <= 1.2x smaller run",
        Key.MEMORY_LARGE,
        Key.MEMORY_SMALL,
        1.2,
        at_most=True,
    ),
]


def verdict(target: Target, rates: dict[Key, float]) -> str:
    """``value -> met`` or ``value -> MISSED``, or ``not measured (MODULE missing)``."""
    if target.needs and not importable(target.needs):
        return f"not measured ({target.needs} missing)"
    value = target.measured(rates)
    return f"{value:,.2f} -> {'met' if target.met(value) else 'MISSED'}"


def target_lines(targets: Iterable[Target], rows: Sequence[Row]) -> list[str]:
    """One Markdown list line per target; raises :class:`MissingRow` for a missing row."""
    rates = {row.key: row.rate for row in rows}
    return [f"- {target.text}: {verdict(target, rates)}" for target in targets]
