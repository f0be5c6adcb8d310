"""Whole-shard writes of the cube store, straight from a batch buffer when zarr would only copy.

A task owns whole shards (see :mod:`daskcubes.sample`). When the store is a local
directory and the cubes are uncompressed, a shard is, by the zarr v3 sharding spec, the
chunks' raw little-endian bytes one after another, then the index (an ``(offset, nbytes)``
pair of little-endian uint64 per chunk, all ones for a chunk outside the array) and its
crc32c. Writing that directly from the batch buffer is one copy into the file; zarr-python's
codec pipeline copies every chunk into a buffer, compares it with the fill value, and copies
all of them again into the shard (measured about 4x slower per thread; see BENCHMARKS.md).
Any other layout goes through zarr. Both paths write the same bytes (tests/test_shards.py).
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.storage import LocalStore

#: Index entry of a chunk that is not stored.
MISSING = np.uint64(2**64 - 1)
LITTLE = BytesCodec(endian="little")


def is_raw_layout(array: zarr.Array) -> bool:
    """Whether ``array``'s shards are plain chunk bytes plus the default index."""
    metadata = array.metadata
    if metadata.zarr_format != 3 or not isinstance(array.store_path.store, LocalStore):
        return False
    if len(metadata.codecs) != 1 or not isinstance(metadata.codecs[0], ShardingCodec):
        return False
    sharding = metadata.codecs[0]
    item = array.shape[1:]
    native_little = sys.byteorder == "little" or array.dtype.itemsize == 1
    return (
        native_little
        and array.chunks == (1, *item)
        and array.shards is not None
        and array.shards[1:] == item
        and sharding.codecs in ((LITTLE,), (BytesCodec(endian=None),))
        and sharding.index_codecs == (LITTLE, Crc32cCodec())
        and sharding.index_location == ShardingCodecIndexLocation.end
    )


def _is_fill(chunk: np.ndarray, fill: Any) -> bool:
    """Whether zarr would skip ``chunk`` as equal to the fill value (O(1) for most chunks)."""
    if chunk.size and not np.array_equal(chunk.flat[0], fill, equal_nan=True):
        return False
    return bool(np.array_equal(chunk, np.broadcast_to(fill, chunk.shape), equal_nan=True))


def _index(n_chunks: int, stored: list[int], chunk_nbytes: int) -> bytes:
    """The shard index and its checksum, for chunks ``stored`` written in that order."""
    index = np.full((n_chunks, 2), MISSING, dtype="<u8")
    index[stored, 0] = np.arange(len(stored), dtype="<u8") * chunk_nbytes
    index[stored, 1] = chunk_nbytes
    raw = index.tobytes()
    return raw + np.uint32(google_crc32c.value(raw)).astype("<u4").tobytes()


def write_shard(array: zarr.Array, shard: int, values: np.ndarray) -> None:
    """Write shard number ``shard`` of ``array`` (sharded along its first axis) whole.

    Parameters
    ----------
    array : sharded along its first axis only, one item per chunk.
    shard : index along the first axis of the shard grid.
    values : ``(n, *array.shape[1:])`` items ``shard * shard_size ..``; ``n`` is the shard
        size, or what is left of the array for the last shard.

    Like zarr, unless the array's ``write_empty_chunks`` is on, a chunk equal to the fill
    value is left out of the shard, and a shard of such chunks only is not written.
    """
    assert array.shards is not None
    size = array.shards[0]
    start = shard * size
    if not is_raw_layout(array):
        array[start : start + len(values)] = values
        return
    data = np.ascontiguousarray(values, dtype=array.dtype)
    store = array.store_path.store
    assert isinstance(store, LocalStore)
    key = array.metadata.encode_chunk_key((shard, *(0,) * (array.ndim - 1)))
    path = Path(store.root) / array.store_path.path / key
    stored = [
        i
        for i in range(len(data))
        if array.config.write_empty_chunks or not _is_fill(data[i], array.fill_value)
    ]
    if not stored:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written to a temporary name then renamed, like zarr's own local writes: a killed
    # task never leaves a torn shard under the real name.
    partial = path.with_suffix(f".{uuid.uuid4().hex}.partial")
    try:
        with partial.open("wb") as file:
            if len(stored) == len(data):
                file.write(data.data.cast("B"))
            else:
                for i in stored:
                    file.write(data[i].data.cast("B"))
            file.write(_index(size, stored, data[0].nbytes))
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
