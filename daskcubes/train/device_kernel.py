"""The device cut as a Triton kernel: each cube row written once, from an index of
``depth + 1 + width`` values a cube.

Imported only where a CUDA device cuts (and by the tests, which run it on the CPU under
``TRITON_INTERPRET=1``): Triton comes with every CUDA build of torch.

The cubes of a batch are ``out[i, f, r, c] = block[frames[i, f], rows[i] + r,
columns[i, c]]`` for every layer whose frame the block holds (a frame outside
``0 .. len(block) - 1`` leaves that layer as it is: the out-of-core cut passes ``-1``
for the layers another block holds), as in the host's kernel
(:func:`daskcubes.core.kernels.gather_cubes`). The index is one int64 tensor ``(n,
depth + 1 + width)``: each cube's frames, its first row and its columns. A program cuts a
tile of ``BLOCK_H`` rows by ``BLOCK_W`` columns of one cube layer: it reads the tile's
column indices once, then its values, and writes them where they go, row by row,
contiguously. No index of the output's size is made, nor any temporary.

The output may be one channel of a batch of several (``out[:, c]`` of ``(n, channels,
depth, height, width)``): each cube's values contiguous, cubes ``out.stride(0)`` apart.
``slots`` (int64, one per cube of the index) puts index cube ``k`` into output cube
``slots[k]``: the cubes of one volume of a batch drawn from several, cut where they go
with an index of that volume's cubes only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

#: Values a program cuts at most (a tile of rows by columns): enough to keep a memory
#: pipeline busy, few enough for its registers.
TILE = 4096
#: Columns of a tile at most: a cube row of up to this many columns is one tile wide.
MAX_BLOCK_W = 128


@triton.jit
def _cut(
    block,
    index,
    slots,
    out,
    n_frames,
    block_rows,
    n_cols,
    depth,
    height,
    width,
    cube_stride,
    HAS_SLOTS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    layer = tl.program_id(0).to(tl.int64)  # index cube i's layer f: i * depth + f
    cube = layer // depth
    f = layer % depth
    recipe = index + cube * (depth + 1 + width)
    frame = tl.load(recipe + f)
    first = tl.load(recipe + depth)
    held = (frame >= 0) & (frame < n_frames)
    r = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    c = tl.program_id(2) * BLOCK_W + tl.arange(0, BLOCK_W)
    in_row = (c < width) & held
    columns = tl.load(recipe + depth + 1 + c, mask=in_row, other=0)
    mask = (r < height)[:, None] & in_row[None, :]
    source = block + ((frame * block_rows + first + r) * n_cols)[:, None] + columns[None, :]
    slot = tl.load(slots + cube) if HAS_SLOTS else cube  # constexpr: one branch compiled
    target = out + slot * cube_stride + ((f * height + r) * width)[:, None] + c[None, :]
    tl.store(target, tl.load(source, mask=mask), mask=mask)


def gather(
    block: torch.Tensor,
    index: torch.Tensor,
    out: torch.Tensor,
    slots: torch.Tensor | None = None,
) -> torch.Tensor:
    """The cubes of ``index`` (int64, ``(m, depth + 1 + width)``) from the row-major
    ``block`` (frames, rows, n_cols) into ``out`` (n, depth, height, width; each cube
    contiguous), cube ``k`` into ``out[slots[k]]`` (``slots`` int64 ``(m,)``; None:
    ``out[k]``, ``m == n``), all on one device; indices checked by the caller."""
    _, depth, height, width = out.shape
    n = len(index)
    n_frames, block_rows, n_cols = block.shape
    assert block.is_contiguous() and index.is_contiguous()
    assert out.stride()[1:] == (height * width, width, 1)
    assert index.shape == (n, depth + 1 + width) and index.dtype == torch.int64
    if slots is None:
        assert n == len(out)
    else:
        assert slots.shape == (n,) and slots.dtype == torch.int64 and slots.is_contiguous()
    block_w = min(triton.next_power_of_2(width), MAX_BLOCK_W)
    block_h = min(triton.next_power_of_2(height), max(TILE // block_w, 1))
    grid = (n * depth, triton.cdiv(height, block_h), triton.cdiv(width, block_w))
    if n * depth:
        _cut[grid](
            block,
            index,
            index if slots is None else slots,
            out,
            n_frames,
            block_rows,
            n_cols,
            depth,
            height,
            width,
            out.stride(0),
            HAS_SLOTS=slots is not None,
            BLOCK_H=block_h,
            BLOCK_W=block_w,
        )
    return out
