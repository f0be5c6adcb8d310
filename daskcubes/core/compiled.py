"""The one-pass cut, compiled with numba (imported only by :mod:`daskcubes.core.kernels`,
and only when a cut first runs, so that numba loads where it is used).

The kernel loops over cube layers outside and, inside them, over the cubes cut together
and their rows in the order the slab's layout favours (see :mod:`daskcubes.core.kernels`):
with source rows contiguous, rows outside and cubes inside, so that a source row read
once serves every cube of the call from L1; with source columns' rows contiguous, cubes
outside and rows inside, so that the lines of a cube's columns, read for one row, serve
the next rows from L1 (tiles of rows copied column by column, or prefetched, measured
0.5-0.7x this). Either way each output row is written once, whole, and the cubes come
out C-ordered: one pass, where numpy takes a fancy index into a temporary and a
transposing copy. Cubes whose columns are runs (column windows) copy each row as one
run, which the compiler vectorises (1.3x the gather, measured on patches of windows in
every axis). A batch too large to stay in the caches is written with non-temporal stores
(:data:`STREAMING_BYTES`), which skip reading each output line before writing it:
measured 1.15-1.35x on article cubes and row windows, float64 and float32, one thread.
``nogil`` lets the threads of a worker cut at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.errors import NumbaError
from numba.extending import intrinsic

if numba.config.DISABLE_JIT:  # type: ignore[attr-defined]  # Python loops: far slower than numpy
    raise ImportError("NUMBA_DISABLE_JIT is set")

#: Errors that mean a kernel did not compile for the arrays it was called with.
COMPILE_ERRORS = (NumbaError,)


def _jit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit(**options)``, caching the compiled code where a cache directory is
    writable (beside this module, or the user's cache) and compiling afresh elsewhere."""

    def compile_(function: Callable[..., Any]) -> Any:
        try:
            return numba.njit(cache=True, **options)(function)
        except RuntimeError:  # no writable cache directory
            return numba.njit(**options)(function)

    return compile_


#: Batches of at least this many bytes are written with non-temporal stores: they do not
#: stay in the caches anyway, and such stores skip reading every line of the output
#: before writing it (a third of the cut's memory traffic). Smaller ones, tiny cubes
#: that their writer reads at once among them, stay in the caches.
STREAMING_BYTES = 4 * 2**20


def _streaming_store(typingctx: Any, array: Any, index: Any, value: Any) -> Any:
    """``array[index] = value`` as a non-temporal store (the value's bits stored as an
    integer of its width, which x86 stores with ``movnti``)."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        array_type = signature.args[0]
        data = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(
            context, builder, array_type, data, [args[1]], wraparound=False
        )
        bits = ir.IntType(array_type.dtype.bitwidth)
        stored = context.cast(builder, args[2], signature.args[2], array_type.dtype)
        store = builder.store(
            builder.bitcast(stored, bits), builder.bitcast(pointer, bits.as_pointer())
        )
        store.set_metadata("nontemporal", builder.module.add_metadata([ir.IntType(32)(1)]))
        return context.get_dummy_value()

    return types.void(array, index, value), codegen


def _full_fence(typingctx: Any) -> Any:
    """A full memory fence: non-temporal stores are weakly ordered, so the kernel ends
    with one before another thread may read its cubes."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


# Typed Any: numba's intrinsics take the typing context only when numba calls them.
_store_streaming: Any = intrinsic(_streaming_store)
_fence: Any = intrinsic(_full_fence)


@_jit(nogil=True, inline="always")
def _copy_row(src: np.ndarray, cols: np.ndarray, dst: np.ndarray, streaming: bool) -> None:
    if streaming:
        for c in range(cols.size):
            _store_streaming(dst, c, src[cols[c]])
    else:
        for c in range(cols.size):
            dst[c] = src[cols[c]]


@_jit(nogil=True, inline="always")
def _copy_run(src: np.ndarray, start: int, dst: np.ndarray) -> None:
    for c in range(dst.size):
        dst[c] = src[start + c]


@_jit(nogil=True)
def _all_runs(columns: np.ndarray) -> bool:
    """Whether every cube's columns are one run of consecutive source columns."""
    for i in range(columns.shape[0]):
        for c in range(1, columns.shape[1]):
            if columns[i, c] != columns[i, 0] + c:
                return False
    return True


@_jit(nogil=True)
def one_pass(
    slab: np.ndarray, frames: np.ndarray, rows: np.ndarray, columns: np.ndarray, out: np.ndarray
) -> None:
    """``out[i, f, r, c] = slab[frames[i, f], rows[i] + r, columns[i, c]]`` for every
    layer whose frame the slab holds (indices checked by the caller)."""
    n, depth, height, _ = out.shape
    n_frames = slab.shape[0]
    streaming = out.size * out.itemsize >= STREAMING_BYTES
    if slab.strides[2] == slab.itemsize and _all_runs(columns):  # runs: copied, layer by layer
        for f in range(depth):
            for i in range(n):
                frame = frames[i, f]
                if 0 <= frame < n_frames:
                    for r in range(height):
                        row = slab[frame, rows[i] + r]
                        _copy_run(row, columns[i, 0], out[i, f, r])
    elif slab.strides[2] == slab.itemsize:  # source rows contiguous: rows outside
        for f in range(depth):
            for r in range(height):
                for i in range(n):
                    frame = frames[i, f]
                    if 0 <= frame < n_frames:
                        _copy_row(slab[frame, rows[i] + r], columns[i], out[i, f, r], streaming)
    else:  # each source column's rows contiguous: cubes outside
        for f in range(depth):
            for i in range(n):
                frame = frames[i, f]
                if 0 <= frame < n_frames:
                    for r in range(height):
                        _copy_row(slab[frame, rows[i] + r], columns[i], out[i, f, r], streaming)
    if streaming:
        _fence()


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_LOW32 = np.uint64(0xFFFFFFFF)


@_jit(nogil=True, inline="always")
def _mix64(z: np.uint64) -> np.uint64:
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


@_jit(nogil=True)
def first_distinct(keys: np.ndarray, n: int, out: np.ndarray, seen: np.ndarray) -> None:
    """The draws of :func:`daskcubes.core.draws.first_distinct`, one key at a time:
    ``out[k]`` gets the first ``out.shape[1]`` distinct valid draws below ``n`` of
    ``keys[k]``, in the order drawn. ``seen`` is ``n`` booleans, all false, and left so.

    The numpy version draws a block of hashes per key and sorts them to find repeats:
    about 0.2 ms for a task of 16 tiny cubes, a third of its time; here each draw is
    made once and checked against ``seen``.
    """
    count = out.shape[1]
    size = np.uint64(n)
    threshold = np.uint64((1 << 32) % n)
    for row in range(keys.size):
        got = 0
        step = np.uint64(0)
        while got < count:
            step += np.uint64(1)
            hashed = _mix64(keys[row] + step * _GOLDEN)
            for half in range(2):
                if got == count:
                    break
                draw = (hashed >> np.uint64(32)) if half == 0 else (hashed & _LOW32)
                product = draw * size
                if (product & _LOW32) < threshold:
                    continue  # rejected, so that every value is exactly equally likely
                value = np.int64(product >> np.uint64(32))
                if not seen[value]:
                    seen[value] = True
                    out[row, got] = value
                    got += 1
        for c in range(count):
            seen[out[row, c]] = False


@_jit(nogil=True)
def recipes_outside(
    shape: tuple[int, int, int],
    frames: np.ndarray,
    rows: np.ndarray,
    columns: np.ndarray,
    height: int,
) -> int:
    """0 if every layer a slab of ``shape`` holds lies inside it; 1 for a column outside
    it, 2 for a cube's rows outside it (one pass, where numpy's checks took ~60 us a task
    of tiny cubes)."""
    n_frames, n_rows, n_cols = shape
    for c in range(columns.size):
        if not 0 <= columns.flat[c] < n_cols:
            return 1
    for i in range(rows.size):
        for f in range(frames.shape[1]):
            if 0 <= frames[i, f] < n_frames:
                if rows[i] < 0 or rows[i] + height > n_rows:
                    return 2
                break
    return 0
