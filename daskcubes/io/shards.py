"""The cube store's shard files: written and read whole, straight from and into numpy
buffers, when zarr would only copy; and their indexes and chunks, checked by ``verify``.

A task owns whole shards (see :mod:`daskcubes.runtime.tasks`). When the store is a local
directory and the cubes are uncompressed, a shard is, by the zarr v3 sharding spec, the
chunks' raw little-endian bytes one after another, each followed by its crc32c where the
array's inner codecs end in zarr's ``crc32c`` codec (stores written before daskcubes
checksummed chunks have none), then the index (an ``(offset, nbytes)`` pair of
little-endian uint64 per chunk, all ones for a chunk not stored) and its crc32c. The
layout is read from each array's metadata, never assumed.
Writing that directly from the batch buffer is one copy into the file; zarr-python's
codec pipeline copies every chunk into a buffer, compares it with the fill value, and
copies all of them again into the shard (measured about 4x slower per thread; see
BENCHMARKS.md). Reading a cube is likewise one ``readinto`` into its slot of a batch,
where zarr-python makes several copies and is far slower for fancy selections (see
``workflows/bench_reading.py``). Any other layout goes through zarr. Both paths write the
same bytes (tests/test_shards.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import suppress
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ShardingCodecIndexLocation
from zarr.storage import LocalStore

from daskcubes.io.storage import write_atomically

#: Index entry of a chunk that is not stored (it reads as the fill value).
MISSING = np.uint64(2**64 - 1)
INDEX_ENTRY = 16  # bytes per chunk in a shard index: offset and length, both uint64
CHECKSUM = 4  # bytes of the crc32c that ends a shard index
LITTLE = BytesCodec(endian="little")
CRC32C = Crc32cCodec()
#: Inner codecs of a raw layout: the chunk's bytes, then (in newer stores) their crc32c.
RAW_CODECS = tuple(
    (serializer, *checksum)
    for serializer in (LITTLE, BytesCodec(endian=None))
    for checksum in ((), (CRC32C,))
)


class ChecksumMismatch(ValueError):
    """A stored chunk whose bytes fail its crc32c: ``item`` is its index along axis 0."""

    def __init__(self, item: int, where: str) -> None:
        super().__init__(f"{where}: chunk of item {item} fails its crc32c checksum")
        self.item = item


def has_chunk_checksums(array: zarr.Array) -> bool:
    """Whether each (inner) chunk of ``array`` ends in a crc32c, as its metadata says."""
    codecs = array.metadata.codecs if array.metadata.zarr_format == 3 else ()
    if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
        codecs = codecs[0].codecs
    return bool(codecs) and isinstance(codecs[-1], Crc32cCodec)


def is_raw_layout(array: zarr.Array) -> bool:
    """Whether ``array``'s shards are plain chunk bytes (and their crc32c) plus the default
    index."""
    metadata = array.metadata
    if metadata.zarr_format != 3 or not isinstance(array.store, LocalStore):
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
        and sharding.codecs in RAW_CODECS
        and sharding.index_codecs == (LITTLE, Crc32cCodec())
        and sharding.index_location == ShardingCodecIndexLocation.end
    )


def shard_key(array: zarr.Array, shard: int) -> str:
    """The store key of shard ``shard`` of an array sharded along its first axis only, in
    the array's own chunk key encoding (stores made before ``.`` keep ``/``)."""
    return f"{array.path}/{array.metadata.encode_chunk_key((shard, *(0,) * (array.ndim - 1)))}"


def shard_file(array: zarr.Array, shard: int) -> Path:
    """The local file of shard ``shard`` of an array sharded along its first axis only."""
    assert isinstance(array.store, LocalStore)
    return Path(array.store.root) / shard_key(array, shard)


def _is_fill(chunk: np.ndarray, fill: Any) -> bool:
    """Whether zarr would skip ``chunk`` as equal to the fill value (O(1) for most chunks)."""
    if chunk.size and not np.array_equal(chunk.flat[0], fill, equal_nan=True):
        return False
    return bool(np.array_equal(chunk, np.broadcast_to(fill, chunk.shape), equal_nan=True))


try:  # the crc32c package uses the CPU's crc32c instruction: 16 GB/s against 3.5 GB/s
    # for google_crc32c as installed here (8 MB cubes, BENCHMARKS.md); the same values.
    from crc32c import crc32c as _crc32c
except ImportError:  # zarr's own dependency
    from google_crc32c import value as _crc32c


def _checksum(raw: bytes | memoryview | np.ndarray) -> bytes:
    """The crc32c of ``raw`` (bytes, a read-only view, or a contiguous array's bytes), as
    zarr's codec stores it."""
    # A read-only view: google_crc32c takes no other (and neither copies).
    view = raw.data.toreadonly() if isinstance(raw, np.ndarray) else raw
    return int(_crc32c(view)).to_bytes(CHECKSUM, "little")


@lru_cache(maxsize=64)
def _index(n_chunks: int, stored: tuple[int, ...], chunk_nbytes: int) -> bytes:
    """The shard index and its checksum, for chunks ``stored`` written in that order:
    made once for the shards of a run, which are alike."""
    index = np.full((n_chunks, 2), MISSING, dtype="<u8")
    index[stored, 0] = np.arange(len(stored), dtype="<u8") * chunk_nbytes
    index[stored, 1] = chunk_nbytes
    raw = index.tobytes()
    return raw + _checksum(raw)


def index_nbytes(n_chunks: int) -> int:
    """Bytes of the index (with its checksum) that ends a shard of ``n_chunks`` chunks."""
    return n_chunks * INDEX_ENTRY + CHECKSUM


def decode_index(raw: bytes) -> np.ndarray:
    """The ``(n_chunks, 2)`` offsets and lengths from a shard's index bytes.

    Raises ``ValueError`` when the checksum does not match (a torn or overwritten file).
    """
    if _checksum(raw[:-CHECKSUM]) != raw[-CHECKSUM:]:
        raise ValueError("shard index checksum mismatch (truncated or overwritten)")
    return np.frombuffer(raw[:-CHECKSUM], dtype="<u8").reshape(-1, 2)


def write_shard(array: zarr.Array, shard: int, values: np.ndarray) -> None:
    """Write shard number ``shard`` of ``array`` (sharded along its first axis) whole;
    :class:`ShardWriter` says how. A task writing many shards of one array keeps a
    ``ShardWriter``, which reads the array's layout once."""
    ShardWriter(array).write(shard, values)


class ShardWriter:
    """Writes whole shards of ``array``, sharded along its first axis only, one item per
    chunk; its layout is read from its metadata once, not for every shard (a tiny cube's
    task spent a third of its shard's write on that)."""

    def __init__(self, array: zarr.Array) -> None:
        assert array.shards is not None
        self.array = array
        self.size: int = array.shards[0]
        self.raw = is_raw_layout(array)
        self.checksums = has_chunk_checksums(array)
        self.dtype = array.dtype
        self.write_empty = array.config.write_empty_chunks
        self.fill = array.fill_value
        # The shard files' folder as a string: a Path for each shard cost as much as its
        # crc32cs.
        self._root = str(array.store.root) if isinstance(array.store, LocalStore) else ""

    def write(self, shard: int, values: np.ndarray) -> None:
        """Write shard number ``shard``: ``values`` are its ``(n, *array.shape[1:])``
        items ``shard * shard_size ..``; ``n`` is the shard size, or what is left of
        the array for the last shard.

        Like zarr, unless the array's ``write_empty_chunks`` is on, a chunk equal to the
        fill value is left out of the shard, and a shard of such chunks only is not
        written. Each chunk's crc32c, where the layout has them, is computed just before
        the chunk is written, while the cube just cut is in cache, not in a pass of its
        own over the shard.
        """
        if not self.raw:
            start = shard * self.size
            self.array[start : start + len(values)] = values
            return
        data = np.ascontiguousarray(values, dtype=self.dtype)
        path = os.path.join(self._root, shard_key(self.array, shard))
        stored = tuple(
            i for i in range(len(data)) if self.write_empty or not _is_fill(data[i], self.fill)
        )
        if not stored:
            with suppress(FileNotFoundError):
                os.unlink(path)
            return
        chunk_nbytes = data[0].nbytes + (CHECKSUM if self.checksums else 0)

        def parts() -> Iterable[Any]:
            chunks: Iterable[Any]
            if self.checksums:
                chunks = _with_checksums(data, stored)
            elif len(stored) == len(data):
                chunks = [data.data.cast("B")]
            else:
                chunks = [data[i].data.cast("B") for i in stored]
            return chain(chunks, [_index(self.size, stored, chunk_nbytes)])

        try:
            write_atomically(path, parts())
        except FileNotFoundError:  # the shard's folder, made once (a store of "/" keys: several)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_atomically(path, parts())


#: Chunks up to this size are checksummed and written in runs of about this many bytes
#: (one write call each); a larger one, an article cube (8 MB), is checksummed alone, then
#: written straight from the batch while it is still in cache.
CHECKSUM_RUN_BYTES = 1 << 18


def _with_checksums(data: np.ndarray, stored: Sequence[int]) -> Iterator[Any]:
    """Each stored chunk's bytes followed by its crc32c, computed as they are written."""
    nbytes = data[0].nbytes
    per_run = CHECKSUM_RUN_BYTES // max(nbytes, 1)
    if per_run < 2:
        for i in stored:
            checksum = _checksum(data[i])
            yield data[i].data.cast("B")
            yield checksum
        return
    # Small chunks: slices of one read-only view of the (C-contiguous) batch, rather than
    # an array and two views made for each chunk.
    raw = data.data.cast("B").toreadonly()
    for first in range(0, len(stored), per_run):
        chunks = [raw[i * nbytes : (i + 1) * nbytes] for i in stored[first : first + per_run]]
        yield b"".join(part for chunk in chunks for part in (chunk, _checksum(chunk)))


class RawShards:
    """Reads whole chunks of one array whose chunks each hold one item along axis 0.

    Build with :meth:`of`, which returns ``None`` for layouts it does not handle.
    """

    def __init__(self, array: zarr.Array, shard_size: int) -> None:
        self.array = array
        self.shard_size = shard_size
        self.item_shape: tuple[int, ...] = tuple(array.shape[1:])
        self.dtype = np.dtype(array.dtype)
        self.item_nbytes = int(np.prod(self.item_shape)) * self.dtype.itemsize
        self.checksums = has_chunk_checksums(array)
        self._indexes: dict[int, np.ndarray] = {}

    @classmethod
    def of(cls, array: zarr.Array) -> RawShards | None:
        """A reader for ``array``, or ``None`` unless it is local, sharded and uncompressed."""
        if not is_raw_layout(array):
            return None
        assert array.shards is not None
        return cls(array, array.shards[0])

    def _index(self, shard: int, file: BinaryIO) -> np.ndarray:
        """(shard_size, 2) offsets and lengths of the chunks of ``shard``, read once."""
        if shard not in self._indexes:
            size = index_nbytes(self.shard_size)
            file.seek(-size, 2)
            self._indexes[shard] = decode_index(file.read(size))
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
            path = shard_file(self.array, int(shard))
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
                    if nbytes != self.item_nbytes + CHECKSUM * self.checksums:
                        raise ValueError(
                            f"{path}: chunk of {nbytes} bytes, expected {self.item_nbytes}"
                        )
                    file.seek(int(offset))
                    view = memoryview(out[slot]).cast("B")
                    if file.readinto(view) != self.item_nbytes:
                        raise ValueError(f"{path}: shard file ends inside a chunk")
                    # Checked as read, while the chunk is in cache; as zarr's codec does.
                    if self.checksums and file.read(CHECKSUM) != _checksum(out[slot]):
                        raise ChecksumMismatch(int(positions[slot]), str(path))


def damaged_chunks(shard: bytes, index: np.ndarray) -> list[int]:
    """The chunks (positions in the shard) of the whole shard file ``shard`` whose bytes
    fail their crc32c, given its decoded ``index``; whatever their codecs, the checksum
    ends each chunk. A chunk not stored, or not inside the file, is not listed."""
    data = np.frombuffer(shard, dtype=np.uint8)
    bad = []
    for position, (offset, nbytes) in enumerate(index.tolist()):
        end = offset + nbytes
        if offset == MISSING or nbytes < CHECKSUM or end > len(data):
            continue
        if _checksum(data[offset : end - CHECKSUM]) != shard[end - CHECKSUM : end]:
            bad.append(position)
    return bad
