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

from dataclasses import dataclass, replace
from typing import Any

import zarr
import zarr.abc.codec
import zarr.codecs

from daskcubes.core.definition import DEFINED_SEMANTICS, SEMANTICS, Definition
from daskcubes.core.plan import CubePlan, stored_recipe
from daskcubes.core.volumes import DatasetPlan, dataset_plan
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
class VolumeRecord:
    """What a cube store records of each volume of a layered frames store it was cut from."""

    name: str
    shape: tuple[int, int, int]
    fingerprint: str
    map_fingerprint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "fingerprint": self.fingerprint,
            "map_fingerprint": self.map_fingerprint,
        }


VOLUMES = "volumes"


@dataclass(frozen=True)
class CubeSchema:
    """Everything that defines a cube store's bytes; a resumed run must match it all.

    The plan's ``task_size`` (how cubes are grouped into tasks) is not part of it. A
    store cut from a frames store of volumes (``volumes`` not empty) records each
    volume, the shares asked for, the cubes' channels and the paired arrays.
    """

    plan: DatasetPlan
    dtype: str
    compressor: str
    frames_fingerprint: str
    #: Whether new arrays get chunk checksums (a store's own say so in its metadata).
    checksums: bool = True
    volumes: tuple[VolumeRecord, ...] = ()
    volume_shares: str | dict[str, float] = "windows"
    channels: tuple[str, ...] = ()
    pairs: tuple[tuple[str, str], ...] = ()

    @property
    def definition(self) -> Definition:
        return self.plan.definition

    @property
    def several(self) -> bool:
        """Whether the store records each cube's volume (``volumes``)."""
        return len(self.plan.plans) > 1

    def attrs(self) -> dict[str, Any]:
        """The ``daskcubes.plan`` attribute of the store."""
        plan, definition, first = self.plan, self.plan.definition, self.plan.first
        volume = (
            {  # in the order stores have always recorded them
                "map_fingerprint": first.map_fingerprint,
                "n_frames": first.n_frames,
                "n_rows": first.n_rows,
                "n_cols": first.n_cols,
            }
            if not self.volumes
            else {
                "volumes": [record.to_dict() for record in self.volumes],
                "volume_shares": self.volume_shares,
                "shares": list(plan.shares),
                "channels": list(self.channels),
                "pairs": dict(self.pairs),
            }
        )
        return {
            "semantics": SEMANTICS if definition.is_article else DEFINED_SEMANTICS,
            "recipe": first.recipe,
            "n_cubes": plan.n_cubes,
            "depth": first.depth,
            "height": first.height,
            "width": first.width,
            **definition.to_dict(),
            **volume,
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
        ``dim`` from all ``depth`` frames. The plans of a store's volumes hold no map:
        its cuts are made again from the frames store (:func:`daskcubes.cut.job.plan_cut`).
        """
        if attrs.get("semantics") not in (SEMANTICS, DEFINED_SEMANTICS):
            raise UserError(
                f"cube store made with cube semantics {attrs.get('semantics')!r}; this "
                f"version of daskcubes knows {SEMANTICS!r} and {DEFINED_SEMANTICS!r}"
            )
        definition = Definition.from_dict(attrs)
        shard_size = attrs["shard_size"]
        height = attrs["height"] if "height" in attrs else attrs["dim"]
        width = attrs["width"] if "width" in attrs else attrs["dim"]

        def make(shape: tuple[int, int, int], n: int, fingerprint: str | None) -> CubePlan:
            return CubePlan(
                n_cubes=n,
                depth=attrs["depth"],
                height=height,
                width=width,
                n_frames=shape[0],
                n_rows=shape[1],
                n_cols=shape[2],
                seed=attrs["seed"],
                task_size=shard_size,
                shard_size=shard_size,
                recipe=stored_recipe(attrs),
                definition=definition,
                map_fingerprint=fingerprint,
            )

        tasks = task_size or shard_size
        if "volumes" not in attrs:
            shape = (attrs.get("n_frames", attrs["depth"]), attrs["n_rows"], attrs["n_cols"])
            only = make(shape, attrs["n_cubes"], attrs.get("map_fingerprint"))
            plan = DatasetPlan.of(replace(only, task_size=tasks))
            return cls(plan, attrs["dtype"], attrs["compressor"], attrs["frames_fingerprint"])
        records = tuple(
            VolumeRecord(r["name"], tuple(r["shape"]), r["fingerprint"], r["map_fingerprint"])
            for r in attrs["volumes"]
        )
        plan, _ = dataset_plan(
            [r.name for r in records],
            [r.shape for r in records],
            lambda k, n: make(records[k].shape, n, None),
            attrs["n_cubes"],
            (attrs["depth"], height, width),
            definition,
            attrs["volume_shares"],
            tasks,
        )
        return cls(
            plan,
            attrs["dtype"],
            attrs["compressor"],
            attrs["frames_fingerprint"],
            volumes=records,
            volume_shares=attrs["volume_shares"],
            channels=tuple(attrs["channels"]),
            pairs=tuple(attrs["pairs"].items()),
        )

    def arrays(self) -> list[ArraySpec]:
        """The store's arrays: ``cubes`` first, then the recipe arrays."""
        plan = self.plan
        n, block, cube = plan.n_cubes, plan.recipe_block, plan.cube_shape
        depth, _, width = cube
        channels = (len(self.channels),) if len(self.channels) > 1 else ()
        cube_dims = ("frame", "row", "col")
        return [
            ArraySpec(
                CUBES,
                shape=(n, *channels, *cube),
                dtype=self.dtype,
                chunks=(1, *channels, *cube),
                shards=(plan.shard_size, *channels, *cube),
                compressor=self.compressor,
                dimension_names=("cube", *("channel",) * len(channels), *cube_dims),
                fill_value=0,
                checksum=self.checksums,
            ),
            *(
                ArraySpec(
                    name,
                    shape=(n, *cube),
                    dtype=dtype,
                    chunks=(1, *cube),
                    shards=(plan.shard_size, *cube),
                    compressor=self.compressor,
                    dimension_names=("cube", *cube_dims),
                    fill_value=0,
                    checksum=self.checksums,
                )
                for name, dtype in self.pairs
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
                    *(((VOLUMES, (n,), ("cube",)),) if self.several else ()),
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

    @property
    def cube_arrays(self) -> tuple[str, ...]:
        """The arrays of one chunk a cube, sharded alike: ``cubes`` and the paired arrays."""
        return (CUBES, *(name for name, _ in self.pairs))

    def shard_key(self, shard: int, array: str = CUBES) -> str:
        """The store key (a path inside the store) of the shard file ``shard`` of ``array``
        (``cubes`` or a paired array) in a store this schema creates."""
        separator = CHUNK_KEY_ENCODING["separator"]
        axes = len(self.plan.cube_shape) + (len(self.channels) > 1 and array == CUBES)
        return f"{array}/" + separator.join(["c", str(shard), *"0" * axes])
