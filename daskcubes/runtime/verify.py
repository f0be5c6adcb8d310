"""Check a cube store: complete, well-formed, every chunk as written, recipes valid, and
(given its frames store) sampled cubes equal to cubes cut anew.

Every chunk ends in its crc32c (zarr's ``crc32c`` codec), so by default ``verify`` reads
every shard file whole and checks each chunk's checksum, and reads every chunk of the
recipe arrays: the bytes are read, nothing is recomputed, at the speed of reading the
store. Stores written before chunks had checksums are checked by their shard indexes
(zarr stores one at the end of each shard, with its own crc32c): a missing, truncated or
overwritten shard fails it; a changed cube is found only by recomputing it. What is found
bad is what :mod:`daskcubes.runtime.repair` writes again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import zarr

from daskcubes.core.plan import Recipes, Tiling
from daskcubes.core.volumes import dataset_recipes
from daskcubes.cut.cutter import cut_range
from daskcubes.cut.job import DatasetCut, cut_recipes, store_cut_job
from daskcubes.errors import UserError
from daskcubes.io.layout import frames_store_info, open_group, store_attrs, volume_array
from daskcubes.io.maps import window_table
from daskcubes.io.progress import recorded_progress
from daskcubes.io.schema import CUBES, VOLUMES, CubeSchema
from daskcubes.io.shards import (
    MISSING,
    damaged_chunks,
    decode_index,
    has_chunk_checksums,
    index_nbytes,
    shard_key,
)
from daskcubes.io.storage import Storage, local_path

#: How many cubes to recompute: a number, or ``"all"``.
Sample = int | Literal["all"]
#: Each shard file's size, its last bytes (its index), and the chunks that fail their
#: crc32c (None where not checked), in shard order; None for a missing file.
ShardReads = Iterator[tuple[int, bytes, list[int] | None] | None]
#: Problems of one kind listed one a line; the rest are only counted.
LISTED = 10


@dataclass
class Report:
    """What :func:`verify_cube_store` found: facts, and problems (none if the store is good)."""

    facts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: The cubes read (and recomputed, given the frames store), in order.
    sampled: list[int] = field(default_factory=list)
    #: Shards of ``cubes`` and blocks of the recipe arrays found bad: missing, damaged or
    #: differing from the plan or from a recomputed cube; what ``repair`` writes again.
    bad_shards: set[int] = field(default_factory=set)
    bad_recipe_blocks: set[int] = field(default_factory=set)


#: Shards whose indexes are checked together: bounds the memory of a check.
SHARD_BLOCK = 4096


def _read_shards(
    storage: Storage, path: str, reads: Iterable[tuple[str, bool]], tail: int
) -> ShardReads:
    """For each ``(key, whole)``, that shard file's size, its last ``tail`` bytes and, if
    ``whole``, the chunks that fail their checksum; None for a missing file.

    Shards are read and checked on threads (reading and crc32c let go of the GIL), one
    at a time each, and only their indexes are kept: a block of shards is never held in
    memory. A local store is read with plain system calls: at tens of thousands of
    shards, fsspec's per-call overhead (about 200 µs) was most of what ``verify`` took.
    """
    root = local_path(path)
    fs, inner = (None, "") if root is not None else storage.filesystem(path)

    def read(key: str, whole: bool) -> tuple[int, bytes] | None:
        if fs is not None:
            url = f"{inner.rstrip('/')}/{key}"
            try:
                size = int(fs.size(url))
            except FileNotFoundError:
                return None
            start = 0 if whole else max(size - tail, 0)
            return size, bytes(fs.cat_file(url, start=start, end=size))
        assert root is not None
        try:
            fd = os.open(os.path.join(root, key), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            want = size if whole else tail
            return size, os.pread(fd, want, max(size - want, 0))
        finally:
            os.close(fd)

    def read_and_check(key: str, whole: bool) -> tuple[int, bytes, list[int] | None] | None:
        found = read(key, whole)
        if found is None:
            return None
        size, raw = found
        damaged = None
        if whole and size >= tail:
            with suppress(ValueError):  # a bad index is the caller's finding
                damaged = damaged_chunks(raw, decode_index(raw[-tail:]))
        return size, raw[-tail:], damaged

    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2
    with ThreadPoolExecutor(threads, thread_name_prefix="daskcubes-verify") as pool:
        yield from pool.map(lambda item: read_and_check(*item), reads)


def _shard_problems(plan: Tiling, shards: Iterable[int], found: ShardReads) -> dict[int, str]:
    """Why each of ``shards`` (one per item of ``found``) is not whole or not as written,
    by shard; a good shard is not listed."""
    chunks = plan.shard_size
    tail = index_nbytes(chunks)
    problems: dict[int, str] = {}
    read, sizes, indexes, damages = [], [], [], []
    for shard, item in zip(shards, found, strict=True):
        if item is None:
            problems[shard] = "missing"
            continue
        size, raw, damaged = item
        if size < tail:
            problems[shard] = f"truncated ({size} bytes)"
            continue
        try:
            indexes.append(decode_index(raw[-tail:]))
        except ValueError as exc:
            problems[shard] = str(exc)
            continue
        read.append(shard)
        sizes.append(size)
        damages.append(damaged)
    if not read:
        return problems
    # Checked for all read shards at once: (shards, chunks) offsets and lengths.
    index = np.stack(indexes)
    offsets, lengths = index[..., 0], index[..., 1]
    present = np.array(read)[:, None] * chunks + np.arange(chunks) < plan.n_cubes
    absent = present & (offsets == MISSING)
    ends = np.where(present & ~absent, offsets + lengths, 0).max(axis=1)
    past_end = ends > np.array(sizes, dtype=np.uint64) - np.uint64(tail)
    for row in np.flatnonzero(absent.any(axis=1) | past_end).tolist():
        problems[read[row]] = (
            f"{int(absent[row].sum())} cubes missing from the shard"
            if absent[row].any()
            else "chunk past the end of the file"
        )
    for row, damaged in enumerate(damages):
        if read[row] in problems:
            continue
        if damaged:
            first = read[row] * chunks + damaged[0]
            problems[read[row]] = (
                f"damaged: {len(damaged)} cubes fail their crc32c checksum (first: cube {first})"
            )
    return problems


def _check_shards(
    report: Report,
    storage: Storage,
    path: str,
    schema: CubeSchema,
    cubes: zarr.Array,
    shards: np.ndarray,
) -> None:
    """Check the ``shards`` of ``cubes`` (the array of cubes, or a paired array): present,
    their index whole (its checksum) and pointing inside the file, and, where chunks have
    checksums, every chunk's."""
    plan, checksums = schema.plan, has_chunk_checksums(cubes)
    bad = 0
    listed: list[tuple[int, str]] = []  # the first bad shards; the rest are only counted
    tail = index_nbytes(plan.shard_size)
    for first in range(0, len(shards), SHARD_BLOCK):
        block = shards[first : first + SHARD_BLOCK].tolist()
        reads = ((shard_key(cubes, shard), checksums) for shard in block)
        found = _shard_problems(plan, block, _read_shards(storage, path, reads, tail))
        bad += len(found)
        report.bad_shards |= set(found)
        listed += sorted(found.items())[: LISTED - len(listed)]
    for shard, problem in listed:
        start, stop = plan.shard_bounds(shard)
        report.problems.append(
            f"array '{cubes.basename}', shard {shard_key(cubes, shard)} (cubes "
            f"{start}-{stop - 1}): "
            f"{problem}"
        )
    if bad > LISTED:
        report.problems.append(f"... {bad} bad shards in all")


def _failure(exc: Exception) -> str:
    """What a failed read of a chunk says: damaged bytes, or anything else."""
    if "checksum" in str(exc):
        return "damaged: fails its crc32c checksum"
    return f"unreadable ({exc})"


RECIPE_ARRAYS = ("frames", "rows", "columns")


def _read_recipes(
    report: Report, group: zarr.Group, start: int, stop: int, several: bool
) -> list[np.ndarray] | None:
    """The recorded ``frames``, ``rows``, ``columns`` and ``volumes`` (zeros for a store
    of one volume) of cubes ``start .. stop``, or None (with the problem reported) where
    a chunk cannot be read."""
    found = []
    for name in recipe_arrays(several):
        try:
            found.append(np.asarray(group[name][start:stop]))  # type: ignore[index]
        except Exception as exc:  # any decoding failure is a finding, not a crash
            report.problems.append(f"array '{name}', cubes {start}-{stop - 1}: {_failure(exc)}")
            return None
    return found if several else [*found, np.zeros(stop - start, dtype=np.int32)]


def recipe_arrays(several: bool) -> tuple[str, ...]:
    """The arrays of a store's recipes: ``volumes`` too for a store of several volumes."""
    return (*RECIPE_ARRAYS, *((VOLUMES,) if several else ()))


def _check_recipes(report: Report, group: zarr.Group, schema: CubeSchema) -> None:
    """Read every chunk of the recipe arrays (checking their checksums), and check the
    recipes' bounds (each in its volume's frames) and distinct columns."""
    plan = schema.plan
    shapes = np.array(
        [record.shape for record in schema.volumes]
        if schema.volumes
        else [(plan.first.n_frames, plan.first.n_rows, plan.first.n_cols)]
    )
    for block in range(plan.n_recipe_blocks):
        start, stop = plan.recipe_block_bounds(block)
        found = _read_recipes(report, group, start, stop, schema.several)
        if found is None:
            report.bad_recipe_blocks.add(block)
            continue
        frames, rows, columns, volumes = found
        bad_volumes = (volumes < 0) | (volumes >= len(shapes))
        n_frames, n_rows, n_cols = shapes[np.where(bad_volumes, 0, volumes)].T
        bad_columns = (columns < 0) | (columns >= n_cols[:, None])
        bad_rows = (rows < 0) | (rows + plan.cube_shape[1] > n_rows)
        bad_frames = (frames < 0) | (frames >= n_frames[:, None])
        ordered = np.sort(columns, axis=1)
        repeated = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
        for what, bad in (
            ("volume out of range", bad_volumes),
            ("column out of bounds", bad_columns.any(axis=1)),
            ("first row out of bounds", bad_rows),
            ("frame out of bounds", bad_frames.any(axis=1)),
            ("repeated column", repeated),
        ):
            if bad.any():
                first = start + int(np.argmax(bad))
                report.bad_recipe_blocks.add(block)
                report.problems.append(
                    f"recipes: {int(bad.sum())} cubes with a {what} (first: cube {first})"
                )


def check_frames_store(report: Report, path: str, storage: Storage) -> None:
    """Read every chunk of every array of the frames store at ``path``, checking its
    checksum if it has them; a damaged chunk is reported naming its array, frame and rows."""
    attrs = store_attrs(open_group(path, "frames store", storage))
    names = [
        volume_array(k, name)
        for k, volume in enumerate(attrs.get("volumes", []))
        for name in volume["arrays"]
    ] or ["frames"]
    bad = 0
    for name in names:
        array = storage.open_array(path, name, mode="r")
        if not has_chunk_checksums(array):
            report.facts.append(f"frames store '{path}': its chunks carry no checksums")
            return
        rows = array.chunks[1]
        for frame in range(array.shape[0]):
            for first in range(0, array.shape[1], rows):
                last = min(first + rows, array.shape[1])
                try:
                    array[frame, first:last]
                except Exception as exc:  # any decoding failure is a finding, not a crash
                    bad += 1
                    if bad <= LISTED:
                        report.problems.append(
                            f"frames store '{path}': array '{name}', frame {frame}, rows "
                            f"{first}-{last - 1}: {_failure(exc)}; ingest it again"
                        )
    report.facts.append(f"frames store '{path}': every chunk read and checked")


def _planner(
    schema: CubeSchema, storage: Storage, job: DatasetCut | None, attrs: dict[str, Any]
) -> Callable[[np.ndarray], tuple[np.ndarray, Recipes]]:
    """What gives the planned volume and recipe of cubes: the cut made anew, or the
    store's plan with its map read again (a map of a dataset's volumes is in the frames
    store the store records)."""
    if job is not None:
        return lambda cubes: cut_recipes(job, cubes)
    plan = schema.plan
    if schema.volumes and plan.definition.label_ratios and plan.definition.labels is None:
        frames = frames_store_info(attrs["frames_store"]["path"], storage)
        cut = store_cut_job(schema, frames, storage)
        return lambda cubes: cut_recipes(cut, cubes)
    tables = [
        None
        if p is None or p.map_spec is None
        else window_table(
            p.map_spec,
            storage,
            p.definition.modes,
            p.cube_shape,
            (p.n_frames, p.n_rows, p.n_cols),
            True,
        )
        for p in plan.plans
    ]
    return lambda cubes: dataset_recipes(plan, cubes, tables)


def _runs(cubes: np.ndarray, shard_size: int) -> list[tuple[int, int]]:
    """The sorted ``cubes`` as runs ``(start, stop)`` of consecutive cubes in one shard."""
    if not len(cubes):
        return []
    breaks = np.flatnonzero(
        (np.diff(cubes) != 1) | (cubes[1:] // shard_size != cubes[:-1] // shard_size)
    )
    starts = cubes[np.concatenate([[0], breaks + 1])]
    stops = cubes[np.concatenate([breaks, [len(cubes) - 1]])] + 1
    return list(zip(starts.tolist(), stops.tolist(), strict=True))


def _chosen(rng: np.random.Generator, n: int, count: Sample) -> np.ndarray:
    """``count`` of ``range(n)`` (all of them for ``"all"``) chosen by ``rng``, sorted."""
    if count == "all" or count >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=count, replace=False))


def verify_cube_store(
    path: str,
    storage: Storage,
    against: str | None = None,
    sample: Sample = 16,
    seed: int = 0,
    shards: int | None = None,
) -> Report:
    """Check the cube store at ``path``: read every shard file (or ``shards`` of them,
    chosen at random by ``seed``: a quick look) and every chunk of its recipes, checking
    their checksums; read ``sample`` cubes (a number, or ``"all"``), chosen by ``seed``,
    and with ``against`` (its frames store, whose chunks are checked too) compare them
    byte for byte with cubes cut anew."""
    started = time.perf_counter()
    report = Report()
    group = open_group(path, "cube store", storage)
    attrs = store_attrs(group)
    if attrs.get("kind") == "frames":
        check_frames_store(report, path, storage)
        report.facts.append(f"checked in {time.perf_counter() - started:.1f} s")
        return report
    if attrs.get("kind") != "cubes":
        report.problems.append(f"holds {attrs.get('kind')}, not cubes")
        return report
    schema = CubeSchema.from_attrs(attrs["plan"])
    plan, dtype = schema.plan, schema.dtype
    report.facts.append(
        f"{plan.n_cubes} cubes of {plan.cube_shape} {dtype} in {plan.n_shards} shards, "
        f"seed {plan.seed}"
    )
    if attrs.get("complete"):
        report.facts.append(f"complete: {attrs['complete']['finished']}")
    else:
        done = len(recorded_progress(attrs).get("shards", ()))
        report.problems.append(
            f"incomplete: {done} of {plan.n_shards} shards recorded as written "
            "(--resume finishes it)"
        )
    shape_problems = schema.problems(group)
    if shape_problems:
        report.problems += shape_problems
        return report

    cubes: zarr.Array = group[CUBES]  # type: ignore[assignment]
    checksums = has_chunk_checksums(cubes)
    rng = np.random.default_rng(seed)
    checked = _chosen(rng, plan.n_shards, "all" if shards is None else shards)
    for name in schema.cube_arrays:
        _check_shards(report, storage, path, schema, group[name], checked)  # type: ignore[arg-type]
    if not checksums:
        report.facts.append(
            "chunks carry no checksums (a store written before daskcubes added them): "
            "shard indexes checked; --against with --sample all recomputes every cube"
        )
    elif shards is not None:
        report.facts.append(f"{len(checked)} of {plan.n_shards} shards read and checked")
    else:
        report.facts.append(f"every chunk of {plan.n_shards} shards read and checked")
    _check_recipes(report, group, schema)

    chosen = _chosen(rng, plan.n_cubes, sample)
    job = None
    if against is not None:
        frames = frames_store_info(against, storage)
        if frames.fingerprint != schema.frames_fingerprint:
            report.problems.append(
                f"frames store '{against}' is not the one these cubes were cut from"
            )
        else:
            before = len(report.problems)
            check_frames_store(report, against, storage)
            if len(report.problems) == before:  # cut from damaged frames, nothing compares
                job = store_cut_job(schema, frames, storage)  # on this one thread
    try:  # the maps the windows were drawn from: still there, with the same values
        planned_of = _planner(schema, storage, job, attrs)
    except UserError as exc:
        report.problems.append(f"windows cannot be drawn again: {exc}")
        return report
    differing = 0
    for start, stop in _runs(chosen, plan.shard_size):
        shard = start // plan.shard_size
        try:
            stored = {name: np.asarray(group[name][start:stop]) for name in schema.cube_arrays}  # type: ignore[index]
        except Exception as exc:  # any decoding failure is a finding, not a crash
            if shard not in report.bad_shards:
                report.bad_shards.add(shard)
                report.problems.append(
                    f"array '{CUBES}', cubes {start}-{stop - 1}: {_failure(exc)}"
                )
            continue
        recorded = _read_recipes(report, group, start, stop, schema.several)
        volumes, planned = planned_of(np.arange(start, stop))
        if recorded is not None:
            expected = (planned.frames, planned.rows, planned.columns, volumes)
            same = np.ones(stop - start, dtype=bool)
            for found, wanted in zip(recorded, expected, strict=True):
                same &= (found == wanted).reshape(stop - start, -1).all(axis=1)
            for index in (start + np.flatnonzero(~same)).tolist():
                report.bad_recipe_blocks.add(index // plan.recipe_block)
                report.problems.append(
                    f"cube {index}: recipe differs from the plan's (seed {plan.seed})"
                )
        if job is None:
            continue
        anew = cut_range(job, start, stop)
        for offset in range(stop - start):
            if not all(np.array_equal(stored[n][offset], anew[n][offset]) for n in stored):
                report.bad_shards.add(shard)
                differing += 1
                if differing <= LISTED:
                    report.problems.append(
                        f"cube {start + offset}: differs from the cube cut anew from '{against}'"
                    )
    if differing > LISTED:
        report.problems.append(f"... {differing} cubes differ in all")
    how = "recomputed and compared" if job is not None else "read"
    report.sampled = chosen.tolist()
    report.facts.append(f"{len(chosen)} sampled cubes {how} (--seed {seed})")
    report.facts.append(f"checked in {time.perf_counter() - started:.1f} s")
    return report
