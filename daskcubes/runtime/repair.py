"""Mend a cube store: find its damaged or missing shards and recipe chunks, and cut their
cubes again from the frames store.

Cube ``i`` is a pure function of (frames, settings, seed, i), so a damaged cube is not
only reported but made again, byte for byte: the store ends identical to one from a clean
run. The repair holds the store's lease, like a run, and writes only what is bad. Where
chunks carry checksums, :func:`~daskcubes.runtime.verify.verify_cube_store` finds the
damage by reading; a store written before they did is recomputed whole, the only way to
find a changed cube there.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy as np
import zarr

from daskcubes.cut.cutter import cut_range
from daskcubes.cut.job import DatasetCut, cut_recipes, store_cut_job
from daskcubes.errors import UserError
from daskcubes.io.layout import DatasetInfo, frames_store_info, open_group, store_attrs
from daskcubes.io.lease import LeaseTerms, hold_lease
from daskcubes.io.schema import CUBES, CubeSchema
from daskcubes.io.shards import has_chunk_checksums, shard_key, write_shard
from daskcubes.io.storage import Storage
from daskcubes.runtime.tasks import SampleJob, write_recipe_block
from daskcubes.runtime.verify import Report, Sample, recipe_arrays, verify_cube_store

WHAT = "cube store"


@dataclass
class Repair:
    """What :func:`repair_cube_store` mended: lines a person reads, and the shards and
    recipe blocks written again."""

    path: str
    lines: list[str] = field(default_factory=list)
    shards: list[int] = field(default_factory=list)
    recipe_blocks: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(f"{self.path}: {line}" for line in self.lines)


def _frames_store(path: str, recorded: str, against: str | None, storage: Storage) -> DatasetInfo:
    """The frames store the cubes are cut again from: ``against``, or the recorded one."""
    try:
        return frames_store_info(against or recorded, storage)
    except UserError as exc:
        if against is not None:
            raise
        raise UserError(
            f"{WHAT} '{path}': its frames store '{recorded}' cannot be used ({exc}); name a "
            "copy of it with --against FRAMES_STORE"
        ) from None


def repair_cube_store(
    path: str, storage: Storage, against: str | None = None, lease: LeaseTerms | None = None
) -> Repair:
    """Find the damaged or missing shards and recipe chunks of the complete cube store at
    ``path`` and write them again, cut from its frames store (``against``, another copy of
    it, or by default the one the store records), whose fingerprint must match. Holds the
    store's lease (of ``lease`` terms) throughout."""
    group = open_group(path, WHAT, storage)
    attrs = store_attrs(group)
    if attrs.get("kind") != "cubes":
        raise UserError(f"{WHAT} '{path}': holds {attrs.get('kind')}, not cubes")
    if not attrs.get("complete"):
        raise UserError(
            f"{WHAT} '{path}': incomplete (its run did not finish); --resume finishes it"
        )
    schema = CubeSchema.from_attrs(attrs["plan"])
    plan = schema.plan
    frames = _frames_store(path, attrs["frames_store"]["path"], against, storage)
    if frames.fingerprint != schema.frames_fingerprint:
        raise UserError(
            f"{WHAT} '{path}': frames store '{frames.path}' is not the one its cubes were cut "
            f"from (fingerprint {frames.fingerprint}, recorded {schema.frames_fingerprint})"
        )
    with hold_lease(path, WHAT, storage, lease or LeaseTerms()) as held:
        cubes = storage.open_array(path, CUBES, mode="r+")
        # Without checksums only a recomputed cube shows a change: every one is recomputed.
        sample: Sample = 0 if has_chunk_checksums(cubes) else "all"
        report = verify_cube_store(path, storage, frames.path, sample=sample)
        _refuse_damaged_frames(path, report)
        # Recipes are cheap: every block is compared with the plan, not only the sampled.
        job = store_cut_job(schema, frames, storage)
        blocks = sorted(
            report.bad_recipe_blocks | _differing_recipe_blocks(group, job, schema.several)
        )
        out = SampleJob(job, path, uuid.uuid4().hex)
        mended = Repair(path)
        for block in blocks:
            held.check()
            write_recipe_block(out, block)
            start, stop = plan.recipe_block_bounds(block)
            mended.lines.append(f"recipes of cubes {start}-{stop - 1} written again")
        writers = {  # empty chunks written too, as the run wrote them
            name: storage.open_array(path, name, mode="r+").with_config(
                {"write_empty_chunks": True}
            )
            for name in schema.cube_arrays
        }
        for shard in sorted(report.bad_shards):
            held.check()
            start, stop = plan.shard_bounds(shard)
            for name, values in cut_range(job, start, stop).items():
                write_shard(writers[name], shard, values)
            mended.lines.append(
                f"shard {shard_key(cubes, shard)} (cubes {start}-{stop - 1}) cut again from "
                f"'{frames.path}'"
            )
        held.confirm()
    mended.shards, mended.recipe_blocks = sorted(report.bad_shards), blocks
    mended.lines.append(
        f"repaired {len(mended.shards)} shards and {len(blocks)} recipe blocks"
        if mended.shards or blocks
        else "nothing to repair"
    )
    return mended


def _refuse_damaged_frames(path: str, report: Report) -> None:
    """Refuse to cut cubes from a frames store whose chunks verify found damaged."""
    damaged = [line for line in report.problems if line.startswith("frames store")]
    if damaged:
        raise UserError(f"{WHAT} '{path}': cannot cut cubes again from {damaged[0]}")


def _differing_recipe_blocks(group: zarr.Group, job: DatasetCut, several: bool) -> set[int]:
    """The blocks of recipes that cannot be read or differ from the plan's."""
    plan, bad = job.plan, set()
    for block in range(plan.n_recipe_blocks):
        start, stop = plan.recipe_block_bounds(block)
        volumes, wanted = cut_recipes(job, np.arange(start, stop))
        expected = (wanted.frames, wanted.rows, wanted.columns, volumes)
        try:
            same = all(
                np.array_equal(np.asarray(group[name][start:stop]), values)  # type: ignore[index]
                for name, values in zip(recipe_arrays(several), expected, strict=False)
            )
        except Exception:  # a damaged chunk: verify has named it
            same = False
        if not same:
            bad.add(block)
    return bad
