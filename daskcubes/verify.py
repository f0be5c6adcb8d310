"""Check a cube store: complete, well-formed, every shard present and whole, recipes
valid, and (given its frames store) sampled cubes equal to cubes cut anew.

Shard files are checked through their index, which zarr stores at the end of each
shard with a CRC32C checksum: a missing, truncated or overwritten shard fails it
without reading the cubes themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from daskcubes.plan import CubePlan, recipes, stored_recipe
from daskcubes.progress import recorded_progress
from daskcubes.sample import SampleJob, make_cube_batch
from daskcubes.shards import MISSING, decode_index, index_nbytes
from daskcubes.storage import Storage
from daskcubes.store import frames_store_info, open_group, store_attrs


@dataclass
class Report:
    """What :func:`verify_cube_store` found: facts, and problems (none if the store is good)."""

    facts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _plan(attrs: dict[str, Any]) -> CubePlan:
    plan = attrs["plan"]
    return CubePlan(
        n_cubes=plan["n_cubes"],
        dim=plan["dim"],
        depth=plan["depth"],
        n_rows=plan["n_rows"],
        n_cols=plan["n_cols"],
        seed=plan["seed"],
        batch_size=plan["shard_size"],
        shard_size=plan["shard_size"],
        recipe=stored_recipe(plan),
    )


def _shard_problem(store: Any, key: str, chunks: int, valid: int) -> str | None:
    """Why the shard file ``key`` is not whole, or None; ``valid`` chunks must be present."""
    size = sync(store.getsize(key)) if sync(store.exists(key)) else None
    tail = index_nbytes(chunks)
    if size is None:
        return "missing"
    if size < tail:
        return f"truncated ({size} bytes)"
    buffer = sync(
        store.get(key, prototype=default_buffer_prototype(), byte_range=SuffixByteRequest(tail))
    )
    try:
        index = decode_index(buffer.to_bytes())[:valid]
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
        bad_rows = (rows < 0) | (rows + plan.dim > plan.n_rows)
        bad_frames = (frames < 0) | (frames >= plan.depth)
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
    path: str, storage: Storage, against: str | None = None, sample: int = 16
) -> Report:
    """Check the cube store at ``path``; with ``against`` (its frames store), recompute
    ``sample`` randomly chosen cubes and compare them byte for byte."""
    report = Report()
    group = open_group(path, "cube store", storage)
    attrs = store_attrs(group)
    if attrs.get("kind") != "cubes":
        report.problems.append(f"holds {attrs.get('kind')}, not cubes")
        return report
    plan = _plan(attrs)
    dtype = attrs["plan"]["dtype"]
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
    expected = {
        "cubes": ((plan.n_cubes, *plan.cube_shape), dtype),
        "columns": ((plan.n_cubes, plan.dim), "int32"),
        "rows": ((plan.n_cubes,), "int32"),
        "frames": ((plan.n_cubes, plan.depth), "int32"),
    }
    arrays = dict(group.arrays())
    for name, (shape, kind) in expected.items():
        array = arrays.get(name)
        if array is None:
            report.problems.append(f"array '{name}' missing")
        elif array.shape != shape or str(array.dtype) != kind:
            report.problems.append(
                f"array '{name}' is {array.shape} {array.dtype}; expected {shape} {kind}"
            )
    if report.problems and any("array" in p for p in report.problems):
        return report

    cubes = arrays["cubes"]
    encode = cubes.metadata.chunk_key_encoding.encode_chunk_key  # type: ignore[union-attr]
    bad_shards = 0
    for shard in range(plan.n_shards):
        start, stop = plan.shard_bounds(shard)
        key = f"{cubes.path}/{encode((shard, 0, 0, 0))}"
        problem = _shard_problem(group.store, key, plan.shard_size, stop - start)
        if problem:
            bad_shards += 1
            if bad_shards <= 10:
                report.problems.append(f"shard {key} (cubes {start}-{stop - 1}): {problem}")
    if bad_shards > 10:
        report.problems.append(f"... {bad_shards} bad shards in all")
    _check_recipes(report, group, plan)

    rng = np.random.default_rng()
    chosen = np.sort(rng.choice(plan.n_cubes, size=min(sample, plan.n_cubes), replace=False))
    job = None
    if against is not None:
        frames = frames_store_info(against, storage)
        if frames.fingerprint != attrs["plan"]["frames_fingerprint"]:
            report.problems.append(
                f"frames store '{against}' is not the one these cubes were cut from"
            )
        else:
            job = SampleJob(frames=frames, out=path, plan=plan, dtype=dtype, storage=storage)
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
    report.facts.append(f"{len(chosen)} sampled cubes {checked}")
    return report
