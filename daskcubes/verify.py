"""Check a cube store: complete, well-formed, every shard present and whole, recipes
valid, and (given its frames store) sampled cubes equal to cubes cut anew.

Shard files are checked through their index, which zarr stores at the end of each
shard with a CRC32C checksum: a missing, truncated or overwritten shard fails it
without reading the cubes themselves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import zarr

from daskcubes.plan import CubePlan, recipes
from daskcubes.progress import recorded_progress
from daskcubes.sample import (
    DEFAULT_BUDGET_SHARE,
    SampleJob,
    available_memory,
    make_cube_batch,
    source_layout,
)
from daskcubes.schema import CubeSchema
from daskcubes.shards import MISSING, decode_index, index_nbytes
from daskcubes.storage import Storage
from daskcubes.store import frames_store_info, open_group, store_attrs


@dataclass
class Report:
    """What :func:`verify_cube_store` found: facts, and problems (none if the store is good)."""

    facts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: The cubes read (and recomputed, given the frames store), in order.
    sampled: list[int] = field(default_factory=list)


def _shard_problem(storage: Storage, url: str, chunks: int, valid: int) -> str | None:
    """Why the shard file at ``url`` is not whole, or None; ``valid`` chunks must be present."""
    fs, path = storage.filesystem(url)
    try:
        size = int(fs.size(path))
    except FileNotFoundError:
        return "missing"
    tail = index_nbytes(chunks)
    if size < tail:
        return f"truncated ({size} bytes)"
    try:
        index = decode_index(bytes(fs.cat_file(path, start=size - tail, end=size)))[:valid]
    except ValueError as exc:
        return str(exc)
    if (index[:, 0] == MISSING).any():
        return f"{int((index[:, 0] == MISSING).sum())} cubes missing from the shard"
    if int((index[:, 0] + index[:, 1]).max()) > size - tail:
        return "chunk past the end of the file"
    return None


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
    bad_shards = 0
    for shard in range(plan.n_shards):
        start, stop = plan.shard_bounds(shard)
        key = schema.shard_key(shard)
        url = f"{path.rstrip('/')}/{key}"
        problem = _shard_problem(storage, url, plan.shard_size, stop - start)
        if problem:
            bad_shards += 1
            if bad_shards <= 10:
                report.problems.append(f"shard {key} (cubes {start}-{stop - 1}): {problem}")
    if bad_shards > 10:
        report.problems.append(f"... {bad_shards} bad shards in all")
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
            budget = int(available_memory() * DEFAULT_BUDGET_SHARE)  # on this one thread
            layout = source_layout(plan, frames.path, dtype, budget, 1)
            job = SampleJob(frames, path, plan, dtype, storage, layout)
    for index in chosen.tolist():
        try:
            stored = np.asarray(cubes[index])
            columns = np.asarray(group["columns"][index])
        except Exception as exc:  # any decoding failure is a finding, not a crash
            report.problems.append(f"cube {index}: unreadable ({exc})")
            continue
        if not np.array_equal(columns, recipes(plan, index, index + 1).columns[0]):
            report.problems.append(
                f"cube {index}: recipe differs from the plan's (seed {plan.seed})"
            )
        if job is not None and not np.array_equal(
            stored, make_cube_batch(job, index, index + 1)[0]
        ):
            report.problems.append(f"cube {index}: differs from the cube cut anew from '{against}'")
    checked = "recomputed and compared" if job is not None else "read"
    report.sampled = chosen.tolist()
    report.facts.append(f"{len(chosen)} sampled cubes {checked} (--seed {seed})")
    report.facts.append(f"checked in {time.perf_counter() - started:.1f} s")
    return report
