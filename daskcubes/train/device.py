"""Cubes on a torch device: cut there from source rows uploaded once, or read on the host
and moved there through staging buffers.

:class:`DeviceStream` is stream mode on a device, over a dataset of any number of
volumes, each with its channels and paired arrays (``labels``, masks). The source rows
an array of a volume needs are uploaded as a row-major ``(frames, rows, n_cols)``
tensor in its dtype (cast on the host, once, exactly as the host's cut casts them, and
copied from pinned memory without blocking), and an array of a batch is cut by one call
of the device's :class:`Gather`: on CUDA a Triton kernel
(:mod:`daskcubes.train.device_kernel`) that takes one index of ``depth + 1 + width``
int64 a cube (its frames, first row and columns: 1.6 KB an article cube, 0.04% of its
float32 bytes) and writes each cube row once; on the CPU the host's compiled kernel, in
the tensors' memory. Neither makes an index or a temporary of the
output's size. The recipes stay the host's: computed vectorised, a batch at a time, in
the thread that reads ahead, by :func:`daskcubes.cut.job.cut_recipes`, and checked
against each volume's frames on the host, since an out-of-range index on a GPU leaves
its CUDA context unusable. A volume's arrays are cut with the same index (the channels
into the channel slots of the ``cubes`` tensor, each paired array into a tensor of its
own dtype); the cubes of a batch drawn from several volumes are cut volume by volume,
each straight to its place in the batch (an output slot a cube), never through a copy.
The uploads of the volumes in use are kept while they fit the budget, the least
recently used dropped first (:class:`DeviceSource`). When an array exceeds its share of
the budget (``max_slab_bytes``, by default half the device's free memory once a few
batches and their indices are set aside, shared by a volume's arrays) it is worked
through in the same bands and frame blocks as on the host
(:class:`daskcubes.cut.cutter.SourceLayout`), each block cutting in place the layers it
holds. Cube ``i`` is bit-identical to cube ``i`` of the host stream and of a stored
store: a gather copies values, and the values are cast alike.

:class:`OnDevice` hands the batches of a host source (a cube store, or the host stream)
to a device: read on the host's threads, put through staging buffers (pinned on CUDA, so
that the copy to the device is asynchronous) and copied with ``non_blocking``. On the CPU
the batch read is handed out as a tensor over the same memory. A batch of several arrays
is a mapping of them by name (``{"cubes": ..., "labels": ...}``), staged and copied
array by array; one of a single array is the tensor itself, as ever.

Both start a batch in the thread that reads ahead (:meth:`start`) and give it to the
training loop in its own thread (:meth:`Pending.ready`). On CUDA the work runs on a
stream of its own and the loop's stream waits for it on the device, never on the host,
so that the next batch is cut (or copied) while the loop trains on this one.

Imported only when a device is asked for: ``import daskcubes`` does not import torch.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from functools import partial
from typing import Any, Protocol

import numpy as np
import torch

from daskcubes.core.kernels import gather_cubes
from daskcubes.core.plan import CubePlan, Recipes
from daskcubes.core.volumes import DatasetPlan
from daskcubes.cut.cutter import output_shapes
from daskcubes.cut.job import CutJob, DatasetCut, available_memory, cut_recipes, for_workers
from daskcubes.errors import UserError
from daskcubes.io.schema import CUBES
from daskcubes.train.buffers import Arrays, BufferRing, CubeSource, source_arrays
from daskcubes.train.reader import CubeIndexing

#: Batches handed out at once from one source's reused buffers: one being cut, two
#: read ahead (``Batches``' default prefetch), the one the loop holds and the one before.
KEEP_BUFFERS = 5
#: Pinned host buffers a batch (or a frame of the source, or a batch's index) crosses to
#: a CUDA device through: one being filled while the copy of the other runs.
STAGING_BUFFERS = 2
#: Bytes of one index value: int64, the dtype torch's indexing takes on every device.
INDEX_ITEMSIZE = 8
#: Cubes a batch is assumed to hold when the device's default budget sets memory aside
#: for the batches (the device check's batch): ``KEEP_BUFFERS`` outputs and what each
#: needs beyond itself (:func:`batch_overhead`) are left out of the source's share.
RESERVED_BATCH = 64
#: Cubes whose recipes a device stream works out at once, ahead of the batches that cut
#: them (:meth:`DeviceStream.starts`).
RECIPES_AHEAD = 1024

DeviceLike = str | torch.device


def torch_dtype(dtype: np.dtype | str) -> torch.dtype:
    """The torch dtype of a numpy dtype."""
    return torch.from_numpy(np.empty(0, np.dtype(dtype))).dtype


def usable_device(device: DeviceLike) -> torch.device:
    """``device`` as a ``torch.device``, refused in one line if torch cannot use it."""
    found = torch.device(device)
    if found.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"device {str(device)!r}: torch {torch.__version__} sees no CUDA device; "
            "use device='cpu', or a machine with a GPU and a CUDA build of torch"
        )
    if found.type == "cuda" and found.index is None:
        found = torch.device("cuda", torch.cuda.current_device())
    return found


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` (the host's available memory for the CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return available_memory()


# -- recipes into index tensors, checked on the host -----------------------------------


def check_recipes(recipes: Recipes, plan: CubePlan, positions: np.ndarray, where: str) -> None:
    """Refuse, in one line, a recipe whose indices fall outside the frames of ``plan``.

    Done on the host before any index reaches a device: an out-of-range index on a GPU
    is a device-side assertion that leaves its CUDA context unusable.
    """
    n = len(positions)
    checks = [
        ("frames", recipes.frames, (n, plan.depth), plan.n_frames, "frames"),
        ("rows", recipes.rows, (n,), plan.n_rows - plan.height + 1, "first rows"),
        ("columns", recipes.columns, (n, plan.width), plan.n_cols, "columns"),
    ]
    for name, values, shape, limit, what in checks:
        values = np.asarray(values)
        if values.shape != shape or values.dtype.kind not in "iu":
            raise UserError(
                f"{where}: recipe {name} of shape {values.shape} ({values.dtype}); "
                f"expected {shape} integers"
            )
        outside = ((values < 0) | (values >= limit)).reshape(n, -1)
        if outside.any():
            cube, at = np.argwhere(outside)[0]
            raise UserError(
                f"{where}: cube {positions[cube]} has {name} {values.reshape(n, -1)[cube, at]}; "
                f"expected {what} 0 to {limit - 1} (frames of {plan.n_frames} x {plan.n_rows} "
                f"x {plan.n_cols}, cubes of {plan.cube_shape}); a corrupt recipe is refused "
                "before it reaches the device"
            )


class Uploads:
    """Host values onto ``device``: on CUDA through a few pinned host buffers, reused in
    turn (a buffer is filled again once its last copy is done), and copied with
    ``non_blocking`` on the current stream; on the CPU written where they go."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buffers: list[tuple[torch.Tensor, torch.cuda.Event | None]] = []
        self._turn = 0

    def _pinned(self, nbytes: int) -> tuple[int, torch.Tensor]:
        """A pinned buffer of at least ``nbytes`` whose last copy is done, taken in turn."""
        slot = self._turn % STAGING_BUFFERS
        self._turn += 1
        if len(self._buffers) <= slot or self._buffers[slot][0].numel() < nbytes:
            # The buffer let go may still be copying: torch's pinned allocator keeps
            # it until that copy is done.
            fresh = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
            self._buffers[slot:] = [(fresh, None)]
        pinned, copied = self._buffers[slot]
        if copied is not None:
            copied.synchronize()
        return slot, pinned

    def put(self, into: torch.Tensor, fill: Callable[[np.ndarray], object]) -> torch.Tensor:
        """``into`` (a contiguous tensor on the device) holding what ``fill`` writes into a
        host array of its shape and dtype."""
        if self.device.type == "cpu":
            fill(into.numpy())
            return into
        slot, pinned = self._pinned(into.numel() * into.element_size())
        host = pinned[: into.numel() * into.element_size()].view(into.dtype).view(into.shape)
        fill(host.numpy())
        into.copy_(host, non_blocking=True)
        done = torch.cuda.current_stream(self.device).record_event()
        self._buffers[slot] = (pinned, done)
        return into


class Gather(Protocol):
    """The cut on a device: ``out[s, f, r, c] = block[frames[i, f], rows[i] + r,
    columns[i, c]]`` for cube ``i`` of the recipes and its output cube ``s = slots[i]``
    (``slots`` None: ``s = i``), for every layer whose frame the row-major ``block``
    holds (a frame outside ``0 .. len(block) - 1`` leaves that layer of ``out`` as it
    is), recipes checked beforehand. ``out`` holds each cube's values contiguously; its
    cubes may lie apart (one channel of a batch of several)."""

    def __call__(
        self,
        block: torch.Tensor,
        frames: np.ndarray,
        rows: np.ndarray,
        columns: np.ndarray,
        out: torch.Tensor,
        slots: np.ndarray | None = None,
    ) -> object: ...


def host_gather(
    block: torch.Tensor,
    frames: np.ndarray,
    rows: np.ndarray,
    columns: np.ndarray,
    out: torch.Tensor,
    slots: np.ndarray | None = None,
) -> object:
    """The gather on the CPU: the host's one-pass kernel, in the tensors' own memory. With
    ``slots``, the cubes of the batch not among them get frame -1 (the kernel skips their
    layers): no temporary, no copy."""
    if slots is not None:
        n, depth = len(out), frames.shape[1]
        all_frames = np.full((n, depth), -1, dtype=np.int64)
        all_rows = np.zeros(n, dtype=np.int64)
        all_columns = np.zeros((n, columns.shape[1]), dtype=np.int64)
        all_frames[slots], all_rows[slots], all_columns[slots] = frames, rows, columns
        frames, rows, columns = all_frames, all_rows, all_columns
    return gather_cubes(block.numpy(), frames, rows, columns, out.numpy())


def upload_index(
    frames: np.ndarray, rows: np.ndarray, columns: np.ndarray, uploads: Uploads
) -> torch.Tensor:
    """One int64 index ``(n, depth + 1 + width)`` on the uploads' device: each cube's
    frames, its first row and its columns, filled on the host in place (into a pinned
    buffer, on CUDA) and uploaded in one non-blocking copy."""
    depth = frames.shape[1]
    shape = (len(frames), depth + 1 + columns.shape[1])
    index = torch.empty(shape, dtype=torch.int64, device=uploads.device)

    def fill(host: np.ndarray) -> None:
        host[:, :depth] = frames
        host[:, depth] = rows
        host[:, depth + 1 :] = columns

    return uploads.put(index, fill)


def upload_slots(slots: np.ndarray, uploads: Uploads) -> torch.Tensor:
    """The output cube of each cube of an index, int64 ``(n,)``, on the uploads' device."""
    on = torch.empty(len(slots), dtype=torch.int64, device=uploads.device)
    return uploads.put(on, lambda host: np.copyto(host, slots, casting="unsafe"))


class TritonGather:
    """The gather as a Triton kernel (:mod:`daskcubes.train.device_kernel`) over the index
    of :func:`upload_index`: a batch's index is O(cubes x (depth + width)), and the kernel
    writes each cube row once, with no index or temporary of the output's size.

    The arrays of a volume (its channels, its paired arrays) are cut with the same
    recipes: the index uploaded for the first is used again for the others."""

    def __init__(self, uploads: Uploads) -> None:
        from daskcubes.train import device_kernel

        self.uploads = uploads
        self.device_kernel = device_kernel
        #: The recipes last uploaded (held, so that none of them is another's id) and
        #: their index and slots on the device.
        self._last: tuple[tuple[Any, ...], torch.Tensor, torch.Tensor | None] | None = None

    def __call__(
        self,
        block: torch.Tensor,
        frames: np.ndarray,
        rows: np.ndarray,
        columns: np.ndarray,
        out: torch.Tensor,
        slots: np.ndarray | None = None,
    ) -> object:
        recipes = (frames, rows, columns, slots)
        last = self._last
        if last is not None and all(a is b for a, b in zip(last[0], recipes, strict=True)):
            index, on_device = last[1], last[2]
        else:
            self._last = None  # let go of the last index first
            index = upload_index(frames, rows, columns, self.uploads)
            on_device = None if slots is None else upload_slots(slots, self.uploads)
            self._last = (recipes, index, on_device)
        return self.device_kernel.gather(block, index, out, on_device)


def device_gather(device: torch.device, uploads: Uploads) -> Gather:
    """The gather for ``device``: the host's compiled kernel on the CPU, the Triton
    kernel elsewhere (refused in one line where Triton is missing)."""
    if device.type == "cpu":
        return host_gather
    try:
        return TritonGather(uploads)
    except ImportError as error:
        raise UserError(
            f"device {str(device)!r}: the device gather needs Triton ({error}); install the "
            "triton that matches torch, or use gather='host'"
        ) from None


def batch_overhead(plan: CubePlan | DatasetPlan, n: int) -> int:
    """Device bytes a batch of ``n`` cubes needs beyond its output and the source: its
    index, ``depth + 1 + width`` int64 a cube, and one more, its output slot, where a
    batch may draw from several volumes (the gather makes no temporary)."""
    depth, _, width = plan.cube_shape
    slots = int(isinstance(plan, DatasetPlan) and len(plan.plans) > 1)
    return INDEX_ITEMSIZE * n * (depth + 1 + width + slots)


# -- the source on the device ---------------------------------------------------------


def upload_rows(
    job: CutJob, frames: range, rows: range, device: torch.device, uploads: Uploads | None = None
) -> torch.Tensor:
    """``(len(frames), len(rows), n_cols)`` source values in the job's dtype on ``device``,
    row-major, read and cast on the host one frame at a time, straight into a pinned
    buffer on CUDA (so that the host holds one frame's rows at once, the copy does not
    block, and the values are those the host's cut holds)."""
    array = job.storage.open_array(job.frames.path, job.frames.array, mode="r")
    dtype = np.dtype(job.dtype)
    shape = (len(frames), len(rows), job.frames.shape[2])
    block = torch.empty(shape, dtype=torch_dtype(dtype), device=device)
    uploads = uploads or Uploads(device)
    for layer, frame in enumerate(frames):
        uploads.put(block[layer], partial(_read_rows, array, frame, rows))
    return block


def _read_rows(array: Any, frame: int, rows: range, host: np.ndarray) -> None:
    host[...] = array[frame, rows.start : rows.stop, :]  # cast once, as the host's cut does


class DeviceSource:
    """The source values of a cut on a device, within its budget, cut by the device's
    :class:`Gather`: for each array of each volume, its whole slab (uploaded on first use)
    or one block (frames by a band of rows) at a time.

    Every upload is kept while the uploads together fit the bytes the layout lets the
    device hold (``held``: the volumes in use stay on the device); one that does not
    fit drops the least recently used first. One volume of plain frames holds its one
    slab, or its one block at a time, as the host does.
    """

    def __init__(self, cut: DatasetCut, device: torch.device) -> None:
        self.dataset = cut
        self.device = device
        self.uploads = Uploads(device)
        self.gather = device_gather(device, self.uploads)
        self.held = max(job.source.held for job in cut.jobs())
        self._blocks: OrderedDict[tuple[Any, ...], torch.Tensor] = OrderedDict()
        #: Uploads made so far, and the most bytes held at once.
        self.loads = 0
        self.peak = 0

    @property
    def nbytes(self) -> int:
        """Bytes of source values held on the device."""
        return sum(block.numel() * block.element_size() for block in self._blocks.values())

    def block(self, job: CutJob, frames: range, rows: range) -> torch.Tensor:
        """The block of ``frames`` by ``rows`` of the job's array, uploaded unless held;
        the least recently used blocks are let go first, as many as it takes to fit."""
        key = (job.frames, job.dtype, frames, rows)
        found = self._blocks.get(key)
        if found is not None:
            self._blocks.move_to_end(key)
            return found
        nbytes = len(frames) * len(rows) * job.frames.shape[2] * np.dtype(job.dtype).itemsize
        while self._blocks and self.nbytes + nbytes > self.held:
            self._blocks.popitem(last=False)
        block = upload_rows(job, frames, rows, self.device, self.uploads)
        self._blocks[key] = block
        self.loads += 1
        self.peak = max(self.peak, self.nbytes)
        return block

    def cut_into(
        self, volumes: np.ndarray, recipes: Recipes, outs: dict[str, torch.Tensor]
    ) -> None:
        """The cubes of ``recipes`` (checked; cube ``i`` from volume ``volumes[i]``) and
        their paired cubes into ``outs`` (by array name), on the device: each volume's
        cubes with an index of their own, put where they go (their slots)."""
        cut = self.dataset
        found = np.unique(volumes) if len(cut.volumes) > 1 else np.zeros(1, np.int32)
        for volume in found.tolist():
            if len(found) == 1:
                part, slots = recipes, None
            else:
                slots = np.flatnonzero(volumes == volume)
                part = Recipes(recipes.frames[slots], recipes.rows[slots], recipes.columns[slots])
            volume_cut = cut.volumes[volume]
            assert volume_cut is not None  # a volume left out is never drawn
            cubes = outs[CUBES]
            for c, job in enumerate(volume_cut.channels):
                self.cut(job, part, cubes[:, c] if cubes.dim() == 5 else cubes, slots)
            for job, (name, _) in zip(volume_cut.pairs, cut.pairs, strict=True):
                self.cut(job, part, outs[name], slots)

    def cut(
        self, job: CutJob, recipes: Recipes, out: torch.Tensor, slots: np.ndarray | None = None
    ) -> torch.Tensor:
        """The job's cubes of ``recipes`` (checked) into ``out`` (into ``out[slots]``), on
        the device."""
        layout, plan = job.source, job.plan
        if layout.whole:
            block = self.block(job, range(plan.n_frames), range(layout.rows_needed))
            self.gather(block, recipes.frames, recipes.rows, recipes.columns, out, slots)
            return out
        # Out of core: the host's bands and frame blocks (see SourceLayout). Each block
        # cuts the layers it holds, in place; the others' frames are passed as -1 (a band
        # another holds) or fall outside the block (frames another block holds).
        step, size = layout.row_step, layout.frame_block
        frames, rows = recipes.frames, recipes.rows
        bands = rows // step
        for band in np.unique(bands):
            first = int(band) * step
            band_rows = range(first, min(first + step + plan.height - 1, layout.rows_needed))
            in_band = (bands == band)[:, None]
            for start in np.unique(frames[in_band[:, 0]] // size) * size:
                start = int(start)
                block = self.block(job, range(start, min(start + size, plan.n_frames)), band_rows)
                held = np.where(in_band, frames - start, -1)
                self.gather(block, held, rows - first, recipes.columns, out, slots)
        return out


# -- batches handed out on a device ---------------------------------------------------


def packed(outs: dict[str, Any]) -> Any:
    """What a batch of ``outs`` is handed out as: the one array itself, else the mapping."""
    return outs[CUBES] if len(outs) == 1 else outs


def unpacked(batch: Any) -> dict[str, Any]:
    """A batch as a mapping of its arrays by name (:func:`packed` undone)."""
    return batch if isinstance(batch, dict) else {CUBES: batch}


class Pending:
    """A batch started on a device: :meth:`ready` gives it to the caller's thread (a
    tensor, or a mapping of tensors by array name).

    On CUDA the batch was made on another stream: the caller's current stream waits
    for it on the device (the host does not wait), and each tensor is marked as used by
    that stream, so that its memory is reused only once the caller's work on it is done.
    """

    def __init__(self, cubes: Any, done: torch.cuda.Event | None = None) -> None:
        self.cubes = cubes
        self.done = done

    def ready(self) -> Any:
        if self.done is not None:
            tensors = list(unpacked(self.cubes).values())
            stream = torch.cuda.current_stream(tensors[0].device)
            stream.wait_event(self.done)
            for tensor in tensors:
                tensor.record_stream(stream)
        return self.cubes


def copied_into(out: Any, batch: Any) -> Any:
    """``batch`` copied into ``out`` (a tensor, or a mapping of tensors like the batch)."""
    if isinstance(out, dict):
        for name, tensor in unpacked(batch).items():
            out[name].copy_(tensor)
        return out
    return out.copy_(batch)


class DeviceBatches:
    """What both kinds of device source share: the device, the arrays each cube comes
    with, and the outputs batches are handed out in.

    On the CPU, outputs come from a :class:`~daskcubes.train.batches.BufferRing` per
    array (as tensors sharing its memory, so that a batch someone still holds is never
    overwritten); on CUDA from torch's caching allocator, on the source's own stream.
    """

    def __init__(self, device: torch.device, n_cubes: int, arrays: Arrays) -> None:
        self.device = device
        self._n_cubes = n_cubes
        self._arrays = {
            name: (tuple(shape), np.dtype(dtype)) for name, (shape, dtype) in arrays.items()
        }
        shape, dtype = self._arrays[CUBES]
        self.cube_shape: tuple[int, int, int] = (shape[-3], shape[-2], shape[-1])
        self.dtype = dtype
        self.torch_dtype = torch_dtype(dtype)
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._rings = {
            name: BufferRing((0, *shape), dtype, KEEP_BUFFERS)
            for name, (shape, dtype) in self._arrays.items()
        }
        self._lock = threading.Lock()  # one batch at a time on the device

    def __len__(self) -> int:
        return self._n_cubes

    @property
    def arrays(self) -> Arrays:
        """Each array handed out per cube: its item shape and dtype (``cubes`` first)."""
        return dict(self._arrays)

    def outputs(self, n: int, fresh: bool) -> dict[str, torch.Tensor]:
        """Where a batch of ``n`` cubes goes, by array name (on CUDA: call on the
        source's stream)."""
        outs = {}
        for name, (shape, dtype) in self._arrays.items():
            if self.device.type != "cpu":
                outs[name] = torch.empty((n, *shape), dtype=torch_dtype(dtype), device=self.device)
            elif fresh:
                outs[name] = torch.from_numpy(np.empty((n, *shape), dtype))
            else:
                ring = self._rings[name]
                if ring.shape[0] < n:
                    ring = self._rings[name] = BufferRing((n, *shape), dtype, KEEP_BUFFERS)
                outs[name] = torch.from_numpy(ring.take(n))
        return outs

    def done(self) -> torch.cuda.Event | None:
        """An event marking the end of the work just queued on the source's stream."""
        return None if self.stream is None else self.stream.record_event()


class DeviceStream(DeviceBatches, CubeIndexing[Any]):
    """The cubes of ``cut``, cut on ``device`` when read: stream mode on a device.

    Reads like :class:`~daskcubes.train.stream.CubeStream` (``len``, indexing, :meth:`read`)
    but gives ``torch`` tensors on ``device``: the cubes in the cut's dtype, ``(n,
    channel, depth, height, width)`` for cubes of several channels, and with paired
    arrays a mapping ``{"cubes": ..., "labels": ...}`` of tensors, each in its own
    dtype. :class:`~daskcubes.train.batches.Batches` over it cuts every batch on the
    device, the next one while the loop trains on this one. Each volume's source rows
    are uploaded when its cubes are first read, and kept within the device's budget
    (:class:`DeviceSource`).
    """

    def __init__(self, cut: DatasetCut, device: DeviceLike) -> None:
        found = usable_device(device)
        # The budget is the device's: max_slab_bytes, or by default a share of its free
        # memory once the batches handed out at once, and what the one being cut needs
        # beyond its output, are set aside.
        batch = RESERVED_BATCH * cut.cube_nbytes
        reserved = KEEP_BUFFERS * batch + batch_overhead(cut.plan, RESERVED_BATCH)
        self.cut = for_workers(cut, max(free_memory(found) - reserved, 0), threads=1)
        arrays = output_shapes(self.cut, 1)
        super().__init__(
            found,
            cut.plan.n_cubes,
            {name: (shape[1:], np.dtype(dtype)) for name, (shape, dtype) in arrays.items()},
        )
        self.source = DeviceSource(self.cut, found)
        self.where = f"stream of frames store '{self.cut.frames.path}' on {found}"

    def __repr__(self) -> str:
        return (
            f"<DeviceStream of {self.cut.frames.path!r} on {self.device}: {len(self)} cubes "
            f"of {self.cube_shape} {self.dtype}, seed {self.cut.plan.seed}>"
        )

    @property
    def jobs(self) -> list[CutJob]:
        """The job of each array of each volume, laid out for the device."""
        return self.cut.jobs()

    def recipes(self, positions: np.ndarray) -> tuple[np.ndarray, Recipes]:
        """The volume and recipe of each cube at ``positions``, checked against its
        volume's frames (on the host, before any of it reaches the device)."""
        positions = np.asarray(positions, dtype=np.int64)
        volumes, recipes = cut_recipes(self.cut, positions)
        found = np.unique(volumes) if len(self.cut.volumes) > 1 else np.zeros(1, np.int32)
        for volume in found.tolist():
            plan = self.cut.plan.plans[volume]
            assert plan is not None  # a volume left out is never drawn
            where = self.where
            if len(self.cut.volumes) > 1:
                where += f", volume '{self.cut.frames.volumes[volume].name}'"
            if len(found) == 1:
                check_recipes(recipes, plan, positions, where)
                continue
            mine = np.flatnonzero(volumes == volume)
            part = Recipes(recipes.frames[mine], recipes.rows[mine], recipes.columns[mine])
            check_recipes(part, plan, positions[mine], where)
        return volumes, recipes

    def cut_into(self, volumes: np.ndarray, recipes: Recipes, out: Any) -> Any:
        """The cubes of checked ``recipes`` (:meth:`recipes`) into ``out`` (a tensor, or
        a mapping of tensors by array name), on the calling thread's stream."""
        self.source.cut_into(volumes, recipes, unpacked(out))
        return out

    def start(self, positions: np.ndarray, fresh: bool = False) -> Pending:
        """Begin cutting the cubes at ``positions`` on the device."""
        return next(self.starts([positions], fresh))

    def starts(self, batches: Sequence[np.ndarray], fresh: bool = False) -> Iterator[Pending]:
        """Begin cutting each of ``batches`` in turn, their recipes worked out on the host
        ahead of them, a block of about ``RECIPES_AHEAD`` cubes at once (vectorised and
        checked: about a third of the host's time per cube of one call a batch)."""
        per_block = max(RECIPES_AHEAD // max(len(batches[0]), 1), 1) if len(batches) else 1
        for first in range(0, len(batches), per_block):
            block = [np.asarray(ids, dtype=np.int64) for ids in batches[first : first + per_block]]
            volumes, recipes = self.recipes(np.concatenate(block))
            ends = np.cumsum([len(ids) for ids in block])
            for end, ids in zip(ends, block, strict=True):
                cubes = slice(end - len(ids), end)
                part = Recipes(recipes.frames[cubes], recipes.rows[cubes], recipes.columns[cubes])
                yield self._cut(volumes[cubes], part, fresh)

    def _cut(self, volumes: np.ndarray, recipes: Recipes, fresh: bool) -> Pending:
        with self._lock, _on(self.device, self.stream):
            outs = self.outputs(len(recipes.rows), fresh)
            self.source.cut_into(volumes, recipes, outs)
            return Pending(packed(outs), self.done())

    def read(self, positions: np.ndarray, out: Any = None) -> Any:
        """Cubes at ``positions`` on the device (a tensor, or a mapping of tensors by
        array name where the cut has paired arrays), into ``out`` if given."""
        cubes = self.start(positions, fresh=True).ready()
        return cubes if out is None else copied_into(out, cubes)


class Staging(DeviceBatches):
    """Batches filled on the host and handed out on a device.

    On CUDA a batch is filled into a few pinned host buffers per array (taken in turn;
    a buffer is filled again once its last copy is done) and copied to the device with
    ``non_blocking`` on a stream of its own. On the CPU the buffer is the batch, as a
    tensor: no copy.
    """

    def __init__(self, device: torch.device, n_cubes: int, arrays: Arrays) -> None:
        super().__init__(device, n_cubes, arrays)
        self._staging: list[tuple[dict[str, torch.Tensor], torch.cuda.Event | None]] = []
        self._turn = 0

    def _staged(self, n: int) -> tuple[int, dict[str, torch.Tensor]]:
        """Pinned host buffers whose last copy to the device is done, taken in turn."""
        if not self._staging or len(self._staging[0][0][CUBES]) < n:
            self._staging = [
                (
                    {
                        name: torch.empty((n, *shape), dtype=torch_dtype(dtype)).pin_memory()
                        for name, (shape, dtype) in self._arrays.items()
                    },
                    None,
                )
                for _ in range(STAGING_BUFFERS)
            ]
        slot = self._turn % len(self._staging)
        self._turn += 1
        host, copied = self._staging[slot]
        if copied is not None:
            copied.synchronize()
        return slot, {name: buffer[:n] for name, buffer in host.items()}

    def upload(self, n: int, fill: Callable[[Any], object], fresh: bool) -> Pending:
        """A batch of ``n`` cubes that ``fill`` writes into host arrays (one array, or a
        mapping of them by name where there are several), on the device."""
        with self._lock:
            if self.device.type == "cpu":
                outs = self.outputs(n, fresh)
                fill(packed({name: out.numpy() for name, out in outs.items()}))
                return Pending(packed(outs))
            with _on(self.device):
                slot, host = self._staged(n)
                fill(packed({name: buffer.numpy() for name, buffer in host.items()}))
                with _on(self.device, self.stream):
                    outs = self.outputs(n, fresh)
                    for name, out in outs.items():
                        out.copy_(host[name], non_blocking=True)
                    done = self.done()
            self._staging[slot] = (self._staging[slot][0], done)
            return Pending(packed(outs), done)


def fill_from(batch: Any) -> Callable[[Any], object]:
    """What copies ``batch`` (an array, or a mapping of arrays by name) into host outputs
    of its shapes."""

    def fill(host: Any) -> None:
        targets = unpacked(host)
        for name, values in unpacked(batch).items():
            np.copyto(targets[name], values)

    return fill


class OnDevice(Staging, CubeIndexing[Any]):
    """The batches of a host ``source`` (a cube store, the host stream), handed out on
    ``device`` through :class:`Staging`: tensors, or mappings of tensors by array name
    where the source has paired arrays.

    :class:`~daskcubes.train.batches.Batches` reads them on the host's threads, whole batches
    at once, and hands each over (:meth:`hand`); :meth:`start` and :meth:`read` read one
    batch on the calling thread, straight into staging buffers.
    """

    def __init__(self, source: CubeSource, device: DeviceLike) -> None:
        super().__init__(usable_device(device), len(source), source_arrays(source))
        self.host = source

    def __repr__(self) -> str:
        return f"<OnDevice {self.device}: {self.host!r}>"

    def hand(self, cubes: Any) -> Pending:
        """A batch read on the host, onto the device: on the CPU as it is (tensors over
        the same memory), else copied through staging buffers."""
        if self.device.type == "cpu":
            return Pending(packed({k: torch.from_numpy(v) for k, v in unpacked(cubes).items()}))
        n = len(next(iter(unpacked(cubes).values())))
        return self.upload(n, fill_from(cubes), fresh=False)

    def start(self, positions: np.ndarray, fresh: bool = False) -> Pending:
        """Begin handing the cubes at ``positions`` to the device."""
        positions = np.asarray(positions, dtype=np.int64)
        return self.upload(len(positions), lambda host: self.host.read(positions, host), fresh)

    def starts(self, batches: Sequence[np.ndarray], fresh: bool = False) -> Iterator[Pending]:
        """Begin handing each of ``batches`` to the device, in turn."""
        return (self.start(ids, fresh) for ids in batches)

    def read(self, positions: np.ndarray, out: Any = None) -> Any:
        """Cubes at ``positions`` on the device, into ``out`` if given."""
        cubes = self.start(positions, fresh=True).ready()
        return cubes if out is None else copied_into(out, cubes)


def _on(device: torch.device, stream: torch.cuda.Stream | None = None) -> ExitStack:
    """A context that makes ``device`` and ``stream`` current (nothing for the CPU): the
    thread that reads ahead starts batches of a source on device 1 with device 1 current,
    so that it opens no CUDA context on device 0 and its pinned buffers, events and
    kernels are that device's."""
    context = ExitStack()
    if device.type == "cuda":
        context.enter_context(torch.cuda.device(device))
    if stream is not None:
        context.enter_context(torch.cuda.stream(stream))
    return context
