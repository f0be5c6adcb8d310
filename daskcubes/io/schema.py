"""The cube store's schema: the settings that define its bytes, its arrays, and where each
shard file lives.

Everything that creates, resumes, checks or reads a cube store asks this module, so the
layout is written down once:

- ``cubes``   (n_cubes, depth, height, width), one zarr chunk per cube, ``shard_size``
  cubes per shard file, dims cube/frame/row/col;
- ``columns`` (n_cubes, width), ``rows`` (n_cubes,), ``frames`` (n_cubes, depth): the
  recipes, int32, in blocks of :attr:`CubePlan.recipe_block` cubes;
- the group attribute ``daskcubes.plan``: :meth:`CubeSchema.attrs`, which records the
  cube's definition (its shape and modes) beside the recipe function.

Every chunk (each inner chunk of a shard) ends in its crc32c, zarr's ``crc32c`` codec, so
that every zarr reader refuses damaged bytes. Stores written before did without: whether
a store's chunks have them is read from its arrays' metadata
(:func:`daskcubes.io.shards.has_chunk_checksums`), never from the schema, so that such a
store resumes, verifies and is repaired in its own layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import zarr
import zarr.abc.codec
import zarr.codecs

from daskcubes.core.definition import DEFINED_SEMANTICS, SEMANTICS, Definition
from daskcubes.core.plan import CubePlan, stored_recipe
from daskcubes.errors import UserError

#: Chunk keys ``c.i.j...``: fixed here rather than left to zarr's default, so that the
#: shard files' names are the schema's, and all in their array's folder: one filesystem
#: entry a shard. zarr's default separator ``/`` gives a shard three folders of its own
#: (``c/i/0/0/0``): a million tiny cubes left 62,500 files in 187,500 folders, and each
#: write paid their ``mkdir`` calls. Stores made with ``/`` keep it: readers and writers
#: take the encoding from the array's metadata (:func:`daskcubes.io.shards.shard_key`).
CHUNK_KEY_ENCODING = {"name": "default", "separator": "."}
CUBES = "cubes"
RECIPE_DTYPE = "int32"


@dataclass(frozen=True)
class ArraySpec:
    """One array of the cube store, as created."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    dimension_names: tuple[str, ...]
    fill_value: int
    shards: tuple[int, ...] | None = None
    #: ``none``, ``lz4``, ``zstd``, or ``default``: zstd level 0, zarr's default (the recipes').
    compressor: str = "default"
    #: Each chunk ends in its crc32c (zarr's ``crc32c`` codec, the last of its codecs).
    checksum: bool = True

    def create(self, group: zarr.Group) -> zarr.Array:
        return group.create_array(
            self.name,
            shape=self.shape,
            dtype=self.dtype,
            chunks=self.chunks,
            shards=self.shards,
            compressors=chunk_codecs(self.compressor, self.checksum),
            fill_value=self.fill_value,
            dimension_names=self.dimension_names,
            chunk_key_encoding=CHUNK_KEY_ENCODING,  # type: ignore[arg-type]
        )

    def problem(self, array: zarr.Array | None) -> str | None:
        """How ``array`` differs from this spec in shape or dtype, or None."""
        if array is None:
            return f"array '{self.name}' missing"
        if array.shape != self.shape or str(array.dtype) != self.dtype:
            return (
                f"array '{self.name}' is {array.shape} {array.dtype}; "
                f"expected {self.shape} {self.dtype}"
            )
        return None


def chunk_codecs(compressor: str, checksum: bool = True) -> Any:
    """The bytes-to-bytes codecs of a chunk: ``compressor``, then its crc32c if asked."""
    known: dict[str, list[zarr.abc.codec.BytesBytesCodec]] = {
        # zarr's "auto" for numbers, spelled out so that a crc32c can follow it.
        "default": [zarr.codecs.ZstdCodec(level=0, checksum=False)],
        "lz4": [zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
        "zstd": [zarr.codecs.ZstdCodec(level=3)],
    }
    compressors = known.get(compressor, [])
    return [*compressors, zarr.codecs.Crc32cCodec()] if checksum else compressors or None


@dataclass(frozen=True)
class CubeSchema:
    """Everything that defines a cube store's bytes; a resumed run must match it all.

    The plan's ``task_size`` (how cubes are grouped into tasks) is not part of it.
    """

    plan: CubePlan
    dtype: str
    compressor: str
    frames_fingerprint: str
    #: Whether new arrays get chunk checksums (a store's own say so in its metadata).
    checksums: bool = True

    def attrs(self) -> dict[str, Any]:
        """The ``daskcubes.plan`` attribute of the store."""
        plan, definition = self.plan, self.plan.definition
        return {
            "semantics": SEMANTICS if definition.is_article else DEFINED_SEMANTICS,
            "recipe": plan.recipe,
            "n_cubes": plan.n_cubes,
            "depth": plan.depth,
            "height": plan.height,
            "width": plan.width,
            **definition.to_dict(),
            "map_fingerprint": plan.map_fingerprint,
            "n_frames": plan.n_frames,
            "n_rows": plan.n_rows,
            "n_cols": plan.n_cols,
            "seed": plan.seed,
            "shard_size": plan.shard_size,
            "recipe_block": plan.recipe_block,
            "dtype": self.dtype,
            "compressor": self.compressor,
            "frames_fingerprint": self.frames_fingerprint,
        }

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any], task_size: int | None = None) -> CubeSchema:
        """The schema a store's ``daskcubes.plan`` attribute records.

        ``task_size`` groups the plan's cubes into tasks; by default one shard per task.
        Stores made before the definition was recorded hold the article's cubes of edge
        ``dim`` from all ``depth`` frames.
        """
        if attrs.get("semantics") not in (SEMANTICS, DEFINED_SEMANTICS):
            raise UserError(
                f"cube store made with cube semantics {attrs.get('semantics')!r}; this "
                f"version of daskcubes knows {SEMANTICS!r} and {DEFINED_SEMANTICS!r}"
            )
        plan = CubePlan(
            n_cubes=attrs["n_cubes"],
            depth=attrs["depth"],
            height=attrs["height"] if "height" in attrs else attrs["dim"],
            width=attrs["width"] if "width" in attrs else attrs["dim"],
            n_frames=attrs.get("n_frames", attrs["depth"]),
            n_rows=attrs["n_rows"],
            n_cols=attrs["n_cols"],
            seed=attrs["seed"],
            task_size=task_size or attrs["shard_size"],
            shard_size=attrs["shard_size"],
            recipe=stored_recipe(attrs),
            definition=Definition.from_dict(attrs),
            map_fingerprint=attrs.get("map_fingerprint"),
        )
        return cls(plan, attrs["dtype"], attrs["compressor"], attrs["frames_fingerprint"])

    def arrays(self) -> list[ArraySpec]:
        """The store's arrays: ``cubes`` first, then the recipe arrays."""
        plan = self.plan
        n, depth, width, block = plan.n_cubes, plan.depth, plan.width, plan.recipe_block
        cube = plan.cube_shape
        return [
            ArraySpec(
                CUBES,
                shape=(n, *cube),
                dtype=self.dtype,
                chunks=(1, *cube),
                shards=(plan.shard_size, *cube),
                compressor=self.compressor,
                dimension_names=("cube", "frame", "row", "col"),
                fill_value=0,
                checksum=self.checksums,
            ),
            *(
                ArraySpec(
                    name,
                    shape=shape,
                    dtype=RECIPE_DTYPE,
                    chunks=(block, *shape[1:]),
                    dimension_names=dims,
                    fill_value=-1,
                    checksum=self.checksums,
                )
                for name, shape, dims in (
                    ("columns", (n, width), ("cube", "col")),
                    ("rows", (n,), ("cube",)),
                    ("frames", (n, depth), ("cube", "frame")),
                )
            ),
        ]

    def create(self, group: zarr.Group) -> None:
        """Create the store's arrays in ``group``."""
        for spec in self.arrays():
            spec.create(group)

    def problems(self, group: zarr.Group) -> list[str]:
        """How the arrays of ``group`` differ from the schema (empty if they agree)."""
        found = dict(group.arrays())
        return [p for spec in self.arrays() if (p := spec.problem(found.get(spec.name)))]

    def shard_key(self, shard: int) -> str:
        """The store key (a path inside the store) of the shard file ``shard`` of ``cubes``
        in a store this schema creates."""
        separator = CHUNK_KEY_ENCODING["separator"]
        return f"{CUBES}/" + separator.join(["c", str(shard), *"0" * len(self.plan.cube_shape)])
