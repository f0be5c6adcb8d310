"""Check a cube store: complete, well-formed, every shard present and whole, recipes
valid, and (given its frames store) sampled cubes equal to cubes cut anew.

Shard files are checked through their index, which zarr stores at the end of each
shard with a CRC32C checksum: a missing, truncated or overwritten shard fails it
without reading the cubes themselves.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import zarr

from daskcubes.core.plan import CubePlan, recipes
from daskcubes.cut.cutter import cut_range
from daskcubes.cut.job import store_cut_job
from daskcubes.errors import UserError
from daskcubes.io.layout import frames_store_info, open_group, store_attrs
from daskcubes.io.maps import window_table
from daskcubes.io.progress import recorded_progress
from daskcubes.io.schema import CubeSchema
from daskcubes.io.shards import MISSING, decode_index, index_nbytes, shard_key
from daskcubes.io.storage import Storage, local_path

#: Each shard file's size and last bytes, in shard order; None for a missing file.
ShardTails = Iterator[tuple[int, bytes] | None]


@dataclass
class Report:
    """What :func:`verify_cube_store` found: facts, and problems (none if the store is good)."""

    facts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: The cubes read (and recomputed, given the frames store), in order.
    sampled: list[int] = field(default_factory=list)


#: Shards whose indexes are checked together: bounds the memory of a check.
SHARD_BLOCK = 4096


def _shard_tails(storage: Storage, path: str, keys: Iterable[str], tail: int) -> ShardTails:
    """Each shard file's size and last ``tail`` bytes, or None for a missing file.

    A local store is read with plain system calls: at tens of thousands of shards,
    fsspec's per-call overhead (about 200 µs) was most of what ``verify`` took.
    """
    root = local_path(path)
    if root is None:
        fs, inner = storage.filesystem(path)
        for key in keys:
            url = f"{inner.rstrip('/')}/{key}"
            try:
                size = int(fs.size(url))
            except FileNotFoundError:
                yield None
                continue
            yield size, bytes(fs.cat_file(url, start=max(size - tail, 0), end=size))
        return
    for key in keys:
        try:
            fd = os.open(os.path.join(root, key), os.O_RDONLY)
        except FileNotFoundError:
            yield None
            continue
        try:
            size = os.fstat(fd).st_size
            yield size, os.pread(fd, tail, max(size - tail, 0))
        finally:
            os.close(fd)


def _shard_problems(plan: CubePlan, first: int, tails: ShardTails) -> dict[int, str]:
    """Why each of the shards ``first, first + 1, ...`` (one per item of ``tails``) is not
    whole, by shard; a good shard is not listed."""
    chunks = plan.shard_size
    tail = index_nbytes(chunks)
    problems: dict[int, str] = {}
    shards, sizes, indexes = [], [], []
    for shard, found in enumerate(tails, first):
        if found is None:
            problems[shard] = "missing"
            continue
        size, raw = found
        if size < tail:
            problems[shard] = f"truncated ({size} bytes)"
            continue
        try:
            indexes.append(decode_index(raw))
        except ValueError as exc:
            problems[shard] = str(exc)
            continue
        shards.append(shard)
        sizes.append(size)
    if not shards:
        return problems
    # Checked for all read shards at once: (shards, chunks) offsets and lengths.
    index = np.stack(indexes)
    offsets, lengths = index[..., 0], index[..., 1]
    present = np.array(shards)[:, None] * chunks + np.arange(chunks) < plan.n_cubes
    absent = present & (offsets == MISSING)
    ends = np.where(present & ~absent, offsets + lengths, 0).max(axis=1)
    past_end = ends > np.array(sizes, dtype=np.uint64) - np.uint64(tail)
    for row in np.flatnonzero(absent.any(axis=1) | past_end).tolist():
        problems[shards[row]] = (
            f"{int(absent[row].sum())} cubes missing from the shard"
            if absent[row].any()
            else "chunk past the end of the file"
        )
    return problems


def _check_shards(
    report: Report, storage: Storage, path: str, cubes: zarr.Array, plan: CubePlan
) -> None:
    """Check every shard's index: present, whole (its checksum), and pointing inside the file."""
    bad = 0
    listed: list[tuple[int, str]] = []  # the first ten bad shards; the rest are only counted
    tail = index_nbytes(plan.shard_size)
    for first in range(0, plan.n_shards, SHARD_BLOCK):
        block = range(first, min(first + SHARD_BLOCK, plan.n_shards))
        keys = (shard_key(cubes, shard) for shard in block)
        found = _shard_problems(plan, first, _shard_tails(storage, path, keys, tail))
        bad += len(found)
        listed += sorted(found.items())[: 10 - len(listed)]
    for shard, problem in listed:
        start, stop = plan.shard_bounds(shard)
        report.problems.append(
            f"shard {shard_key(cubes, shard)} (cubes {start}-{stop - 1}): {problem}"
        )
    if bad > 10:
        report.problems.append(f"... {bad} bad shards in all")


def _check_recipes(report: Report, group: zarr.Group, plan: CubePlan) -> None:
    for block in range(plan.n_recipe_blocks):
        start, stop = plan.recipe_block_bounds(block)
        try:
            columns = np.asarray(group["columns"][start:stop])  # type: ignore[index]
            rows = np.asarray(group["rows"][start:stop])  # type: ignore[index]
            frames = np.asarray(group["frames"][start:stop])  # type: ignore[index]
        except Exception as exc:  # any decoding failure is a finding, not a crash
            report.problems.append(f"recipes of cubes {start}-{stop - 1}: unreadable ({exc})")
            continue
        bad_columns = (columns < 0) | (columns >= plan.n_cols)
        bad_rows = (rows < 0) | (rows + plan.height > plan.n_rows)
        bad_frames = (frames < 0) | (frames >= plan.n_frames)
        ordered = np.sort(columns, axis=1)
        repeated = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
        for what, bad in (
            ("column out of bounds", bad_columns.any(axis=1)),
            ("first row out of bounds", bad_rows),
            ("frame out of bounds", bad_frames.any(axis=1)),
            ("repeated column", repeated),
        ):
            if bad.any():
                first = start + int(np.argmax(bad))
                report.problems.append(
                    f"recipes: {int(bad.sum())} cubes with a {what} (first: cube {first})"
                )


def verify_cube_store(
    path: str, storage: Storage, against: str | None = None, sample: int = 16, seed: int = 0
) -> Report:
    """Check the cube store at ``path``; with ``against`` (its frames store), recompute
    ``sample`` cubes, chosen at random by ``seed``, and compare them byte for byte."""
    started = time.perf_counter()
    report = Report()
    group = open_group(path, "cube store", storage)
    attrs = store_attrs(group)
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

    cubes = group["cubes"]
    assert isinstance(cubes, zarr.Array)  # the schema's problems would have said otherwise
    _check_shards(report, storage, path, cubes, plan)
    _check_recipes(report, group, plan)

    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(plan.n_cubes, size=min(sample, plan.n_cubes), replace=False))
    job = None
    if against is not None:
        frames = frames_store_info(against, storage)
        if frames.fingerprint != schema.frames_fingerprint:
            report.problems.append(
                f"frames store '{against}' is not the one these cubes were cut from"
            )
        else:
            job = store_cut_job(schema, frames, storage)  # on this one thread
    table = None
    if plan.map_spec is not None:
        try:  # the map the windows were drawn from: still there, with the same values
            frames_shape = (plan.n_frames, plan.n_rows, plan.n_cols)
            modes, cube_shape = plan.definition.modes, plan.cube_shape
            table = window_table(plan.map_spec, storage, modes, cube_shape, frames_shape, True)
        except UserError as exc:
            report.problems.append(f"windows cannot be drawn again: {exc}")
            return report
    for index in chosen.tolist():
        try:
            stored = np.asarray(cubes[index])
            recorded = [np.asarray(group[name][index]) for name in ("frames", "rows", "columns")]
        except Exception as exc:  # any decoding failure is a finding, not a crash
            report.problems.append(f"cube {index}: unreadable ({exc})")
            continue
        planned = recipes(plan, index, index + 1, table)
        expected = (planned.frames[0], planned.rows[0], planned.columns[0])
        if not all(map(np.array_equal, recorded, expected)):
            report.problems.append(
                f"cube {index}: recipe differs from the plan's (seed {plan.seed})"
            )
        if job is not None and not np.array_equal(stored, cut_range(job, index, index + 1)[0]):
            report.problems.append(f"cube {index}: differs from the cube cut anew from '{against}'")
    checked = "recomputed and compared" if job is not None else "read"
    report.sampled = chosen.tolist()
    report.facts.append(f"{len(chosen)} sampled cubes {checked} (--seed {seed})")
    report.facts.append(f"checked in {time.perf_counter() - started:.1f} s")
    return report
