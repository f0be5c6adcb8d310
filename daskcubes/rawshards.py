"""Whole-chunk reads straight from the shard files of an uncompressed local zarr array.

A cube store keeps one cube per zarr chunk and ``shard_size`` chunks per shard file.
Without a compressor each chunk is its raw little-endian bytes at an offset recorded
in the shard's index (zarr v3 ``sharding_indexed``, index at the end), so a cube can be
read with one ``readinto`` into its place in the caller's batch. zarr-python reads the
same chunk with several extra copies and, for fancy or multi-chunk selections, far more
slowly (measured in ``workflows/bench_reading.py``). Any other layout is left to zarr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import BinaryIO

import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.storage import LocalStore

#: Offset and length of a chunk missing from its shard (it reads as the fill value).
MISSING = 2**64 - 1
INDEX_ENTRY = 16  # bytes per chunk in a shard index: offset and length, both uint64
CHECKSUM = 4  # bytes of the crc32c that ends a shard index


class RawShards:
    """Reads whole chunks of one array whose chunks each hold one item along axis 0.

    Build with :meth:`of`, which returns ``None`` for layouts it does not handle.
    """

    def __init__(self, array: zarr.Array, root: Path, shard_size: int) -> None:
        self.array = array
        self.root = root
        self.shard_size = shard_size
        self.item_shape: tuple[int, ...] = tuple(array.shape[1:])
        self.dtype = np.dtype(array.dtype)
        self.item_nbytes = int(np.prod(self.item_shape)) * self.dtype.itemsize
        self._indexes: dict[int, np.ndarray] = {}

    @classmethod
    def of(cls, array: zarr.Array) -> RawShards | None:
        """A reader for ``array``, or ``None`` unless it is local, sharded and uncompressed."""
        codecs = array.metadata.codecs if array.metadata.zarr_format == 3 else ()
        if not (isinstance(array.store, LocalStore) and len(codecs) == 1):
            return None
        (sharding,) = codecs
        dtype = np.dtype(array.dtype)
        if not (
            isinstance(sharding, ShardingCodec)
            and sharding.index_location == ShardingCodecIndexLocation.end
            and tuple(sharding.chunk_shape) == (1, *array.shape[1:])
            and len(sharding.codecs) == 1
            and isinstance(sharding.codecs[0], BytesCodec)
            and [type(c) for c in sharding.index_codecs] == [BytesCodec, Crc32cCodec]
            and dtype.isnative
            and sys.byteorder == "little"
            and array.shards is not None
            and tuple(array.shards[1:]) == tuple(array.shape[1:])
        ):
            return None
        return cls(array, Path(array.store.root) / array.path, array.shards[0])

    def _shard_path(self, shard: int) -> Path:
        key = self.array.metadata.chunk_key_encoding.encode_chunk_key(  # type: ignore[union-attr]
            (shard,) + (0,) * len(self.item_shape)
        )
        return self.root / key

    def _index(self, shard: int, file: BinaryIO) -> np.ndarray:
        """(shard_size, 2) offsets and lengths of the chunks of ``shard``, read once."""
        if shard not in self._indexes:
            size = self.shard_size * INDEX_ENTRY + CHECKSUM
            file.seek(-size, 2)
            raw = file.read(size - CHECKSUM)
            self._indexes[shard] = np.frombuffer(raw, dtype="<u8").reshape(-1, 2)
        return self._indexes[shard]

    def read_into(self, positions: np.ndarray, out: np.ndarray) -> None:
        """``out[k] = array[positions[k]]`` for every k, visiting shard files in order.

        Sorted reads open each shard file once and move forward through it; each chunk
        lands straight in its slot of ``out``, so nothing is un-permuted afterwards.
        """
        order = np.argsort(positions, kind="stable")
        shards = positions[order] // self.shard_size
        fill = self.array.fill_value
        for shard in np.unique(shards):
            slots = order[shards == shard]
            path = self._shard_path(int(shard))
            if not path.exists():
                out[slots] = fill
                continue
            with open(path, "rb", buffering=0) as file:
                index = self._index(int(shard), file)
                for slot in slots:
                    offset, nbytes = index[positions[slot] % self.shard_size]
                    if offset == MISSING:
                        out[slot] = fill
                        continue
                    if nbytes != self.item_nbytes:
                        raise ValueError(
                            f"{path}: chunk of {nbytes} bytes, expected {self.item_nbytes}"
                        )
                    file.seek(int(offset))
                    view = memoryview(out[slot]).cast("B")
                    if file.readinto(view) != nbytes:
                        raise ValueError(f"{path}: shard file ends inside a chunk")
