"""Cubes on a torch device: cut there from source rows uploaded once, or read on the host
and moved there through staging buffers.

:class:`DeviceStream` is stream mode on a device. The source rows a job needs are
uploaded as a row-major ``(frames, rows, n_cols)`` tensor in the training dtype (cast on
the host, once, exactly as the host's cut casts them, and copied from pinned memory
without blocking), and a batch is cut by one call of the device's :class:`Gather`: on
CUDA a Triton kernel (:mod:`daskcubes.train.device_kernel`) that takes one index of
``depth + 1 + width`` int64 a cube (its frames, first row and columns: 1.6 KB an article
cube, 0.04% of its float32 bytes) and writes each cube row once; on the CPU the host's
compiled kernel, in the tensors' memory. Neither makes an index or a temporary of the
output's size. The recipes stay the host's: computed vectorised, a batch at a time, in
the thread that reads ahead, by :func:`daskcubes.core.plan.recipes_of`, and checked
against the frames store on the host, since an out-of-range index on a GPU leaves its
CUDA context unusable. When the source exceeds the budget (``max_slab_bytes``, by
default half the device's free memory once a few batches and their indices are set
aside) it is worked through in the same bands and frame blocks as on the host
(:class:`daskcubes.cut.cutter.SourceLayout`), each block cutting in place the layers it
holds. Cube ``i`` is bit-identical to cube ``i`` of the host stream and of a stored
store: a gather copies values, and the values are cast alike.

:class:`OnDevice` hands the batches of a host source (a cube store, or the host stream)
to a device: read on the host's threads, put through staging buffers (pinned on CUDA, so
that the copy to the device is asynchronous) and copied with ``non_blocking``. On the CPU
the batch read is handed out as a tensor over the same memory.

Both start a batch in the thread that reads ahead (:meth:`start`) and give it to the
training loop in its own thread (:meth:`Pending.ready`). On CUDA the work runs on a
stream of its own and the loop's stream waits for it on the device, never on the host,
so that the next batch is cut (or copied) while the loop trains on this one.

Imported only when a device is asked for: ``import daskcubes`` does not import torch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from functools import partial
from typing import Any, Protocol

import numpy as np
import torch

from daskcubes.core.kernels import gather_cubes
from daskcubes.core.plan import CubePlan, Recipes
from daskcubes.cut.job import CutJob, DatasetCut, available_memory, job_recipes, laid_out
from daskcubes.errors import UserError
from daskcubes.train.buffers import Arrays, BufferRing, CubeSource
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
    """The cut on a device: ``out[i, f, r, c] = block[frames[i, f], rows[i] + r,
    columns[i, c]]`` for every layer whose frame the row-major ``block`` holds (a frame
    outside ``0 .. len(block) - 1`` leaves that layer of ``out`` as it is), recipes
    checked beforehand."""

    def __call__(
        self,
        block: torch.Tensor,
        frames: np.ndarray,
        rows: np.ndarray,
        columns: np.ndarray,
        out: torch.Tensor,
    ) -> object: ...


def host_gather(
    block: torch.Tensor,
    frames: np.ndarray,
    rows: np.ndarray,
    columns: np.ndarray,
    out: torch.Tensor,
) -> object:
    """The gather on the CPU: the host's one-pass kernel, in the tensors' own memory."""
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


class TritonGather:
    """The gather as a Triton kernel (:mod:`daskcubes.train.device_kernel`) over the index
    of :func:`upload_index`: a batch's index is O(cubes x (depth + width)), and the kernel
    writes each cube row once, with no index or temporary of the output's size."""

    def __init__(self, uploads: Uploads) -> None:
        from daskcubes.train import device_kernel

        self.uploads = uploads
        self.device_kernel = device_kernel

    def __call__(
        self,
        block: torch.Tensor,
        frames: np.ndarray,
        rows: np.ndarray,
        columns: np.ndarray,
        out: torch.Tensor,
    ) -> object:
        index = upload_index(frames, rows, columns, self.uploads)
        return self.device_kernel.gather(block, index, out)


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


def batch_overhead(plan: CubePlan, n: int) -> int:
    """Device bytes a batch of ``n`` cubes needs beyond its output and the source: its
    index, ``depth + 1 + width`` int64 a cube (the gather makes no temporary)."""
    depth, _, width = plan.cube_shape
    return INDEX_ITEMSIZE * n * (depth + 1 + width)


# -- the source on the device ---------------------------------------------------------


def upload_rows(
    job: CutJob, frames: range, rows: range, device: torch.device, uploads: Uploads | None = None
) -> torch.Tensor:
    """``(len(frames), len(rows), n_cols)`` source values in the job's dtype on ``device``,
    row-major, read and cast on the host one frame at a time, straight into a pinned
    buffer on CUDA (so that the host holds one frame's rows at once, the copy does not
    block, and the values are those the host's cut holds)."""
    array = job.storage.open_array(job.frames.path, "frames", mode="r")
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
    """The source values of a job on a device, within the job's budget: the whole slab,
    uploaded on first use and kept, or one block (frames by a band of rows) at a time,
    cut by the device's :class:`Gather`."""

    def __init__(self, job: CutJob, device: torch.device) -> None:
        self.job = job
        self.device = device
        self.uploads = Uploads(device)
        self.gather = device_gather(device, self.uploads)
        self._key: tuple[range, range] | None = None
        self._block: torch.Tensor | None = None

    def block(self, frames: range, rows: range) -> torch.Tensor:
        """The block of ``frames`` by ``rows``; the block held before is let go first."""
        if self._key != (frames, rows):
            self._key = self._block = None
            self._block = upload_rows(self.job, frames, rows, self.device, self.uploads)
            self._key = (frames, rows)
        assert self._block is not None
        return self._block

    def cut(self, recipes: Recipes, out: torch.Tensor) -> torch.Tensor:
        """The cubes of ``recipes`` (checked) into ``out``, on the device."""
        layout, plan = self.job.source, self.job.plan
        if layout.whole:
            block = self.block(range(plan.n_frames), range(layout.rows_needed))
            self.gather(block, recipes.frames, recipes.rows, recipes.columns, out)
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
                block = self.block(range(start, min(start + size, plan.n_frames)), band_rows)
                held = np.where(in_band, frames - start, -1)
                self.gather(block, held, rows - first, recipes.columns, out)
        return out


# -- batches handed out on a device ---------------------------------------------------


class Pending:
    """A batch started on a device: :meth:`ready` gives it to the caller's thread.

    On CUDA the batch was made on another stream: the caller's current stream waits
    for it on the device (the host does not wait), and the tensor is marked as used by
    that stream, so that its memory is reused only once the caller's work on it is done.
    """

    def __init__(self, cubes: torch.Tensor, done: torch.cuda.Event | None = None) -> None:
        self.cubes = cubes
        self.done = done

    def ready(self) -> torch.Tensor:
        if self.done is not None:
            stream = torch.cuda.current_stream(self.cubes.device)
            stream.wait_event(self.done)
            self.cubes.record_stream(stream)
        return self.cubes


class DeviceBatches:
    """What both kinds of device source share: the device, the batch shape, and the
    outputs batches are handed out in.

    On the CPU, outputs come from a :class:`~daskcubes.train.batches.BufferRing` (as tensors
    sharing its memory, so that a batch someone still holds is never overwritten); on
    CUDA from torch's caching allocator, on the source's own stream.
    """

    def __init__(
        self,
        device: torch.device,
        n_cubes: int,
        cube_shape: tuple[int, int, int],
        dtype: np.dtype,
    ) -> None:
        self.device = device
        self._n_cubes = n_cubes
        self.cube_shape = cube_shape
        self.dtype = np.dtype(dtype)
        self.torch_dtype = torch_dtype(dtype)
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._ring = BufferRing((0, *cube_shape), self.dtype, KEEP_BUFFERS)
        self._lock = threading.Lock()  # one batch at a time on the device

    def __len__(self) -> int:
        return self._n_cubes

    @property
    def arrays(self) -> Arrays:
        """Each array handed out per cube: its item shape and dtype."""
        return {"cubes": (self.cube_shape, self.dtype)}

    def output(self, n: int, fresh: bool) -> torch.Tensor:
        """Where a batch of ``n`` cubes goes (on CUDA: call on the source's stream)."""
        shape = (n, *self.cube_shape)
        if self.device.type != "cpu":
            return torch.empty(shape, dtype=self.torch_dtype, device=self.device)
        if fresh:
            return torch.from_numpy(np.empty(shape, self.dtype))
        if self._ring.shape[0] < n:
            self._ring = BufferRing(shape, self.dtype, KEEP_BUFFERS)
        return torch.from_numpy(self._ring.take(n))

    def done(self) -> torch.cuda.Event | None:
        """An event marking the end of the work just queued on the source's stream."""
        return None if self.stream is None else self.stream.record_event()


def single_job(cut: DatasetCut) -> CutJob:
    """The one job of a cut of one volume of plain frames, which the device stream takes."""
    volume = cut.volumes[0]
    if len(cut.volumes) > 1 or volume is None or len(volume.jobs) > 1:
        raise UserError(
            f"frames store '{cut.frames.path}': the device stream cuts one volume of plain "
            "frames; open it with gather='host' for volumes, channels or paired arrays"
        )
    return volume.channels[0]


class DeviceStream(DeviceBatches, CubeIndexing[torch.Tensor]):
    """The cubes of ``job``, cut on ``device`` when read: stream mode on a device.

    Reads like :class:`~daskcubes.train.stream.CubeStream` (``len``, indexing, :meth:`read`)
    but gives ``torch`` tensors on ``device`` in the job's dtype;
    :class:`~daskcubes.train.batches.Batches` over it cuts every batch on the device, the next
    one while the loop trains on this one. The source is uploaded on the first read.
    """

    def __init__(self, cut: DatasetCut, device: DeviceLike) -> None:
        found = usable_device(device)
        self.cut, job = cut, single_job(cut)
        # The budget is the device's: max_slab_bytes, or by default a share of its free
        # memory once the batches handed out at once, and what the one being cut needs
        # beyond its output, are set aside.
        plan, dtype = job.plan, np.dtype(job.dtype)
        batch = RESERVED_BATCH * int(np.prod(plan.cube_shape)) * dtype.itemsize
        reserved = KEEP_BUFFERS * batch + batch_overhead(plan, RESERVED_BATCH)
        self.job = laid_out(job, max(free_memory(found) - reserved, 0), threads=1)
        super().__init__(found, plan.n_cubes, plan.cube_shape, np.dtype(self.job.dtype))
        self.source = DeviceSource(self.job, found)
        self.where = f"stream of frames store '{self.job.frames.path}' on {found}"

    def __repr__(self) -> str:
        return (
            f"<DeviceStream of {self.job.frames.path!r} on {self.device}: {len(self)} cubes "
            f"of {self.cube_shape} {self.dtype}, seed {self.job.plan.seed}>"
        )

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
            positions = np.concatenate(block)
            recipes = job_recipes(self.job, positions)
            check_recipes(recipes, self.job.plan, positions, self.where)
            ends = np.cumsum([len(ids) for ids in block])
            for end, ids in zip(ends, block, strict=True):
                cubes = slice(end - len(ids), end)
                part = Recipes(recipes.frames[cubes], recipes.rows[cubes], recipes.columns[cubes])
                yield self._cut(part, fresh)

    def _cut(self, recipes: Recipes, fresh: bool) -> Pending:
        with self._lock, _on(self.device, self.stream):
            out = self.output(len(recipes.rows), fresh)
            self.source.cut(recipes, out)
            return Pending(out, self.done())

    def read(self, positions: np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
        """Cubes at ``positions`` as a tensor on the device, into ``out`` if given."""
        cubes = self.start(positions, fresh=True).ready()
        return cubes if out is None else out.copy_(cubes)


class Staging(DeviceBatches):
    """Batches filled on the host and handed out on a device.

    On CUDA a batch is filled into one of a few pinned host buffers (taken in turn; a
    buffer is filled again once its last copy is done) and copied to the device with
    ``non_blocking`` on a stream of its own. On the CPU the buffer is the batch, as a
    tensor: no copy.
    """

    def __init__(
        self, device: torch.device, n_cubes: int, cube_shape: tuple[int, int, int], dtype: Any
    ) -> None:
        super().__init__(device, n_cubes, cube_shape, dtype)
        self._staging: list[tuple[torch.Tensor, torch.cuda.Event | None]] = []
        self._turn = 0

    def _staged(self, n: int) -> tuple[int, torch.Tensor]:
        """A pinned host buffer whose last copy to the device is done, taken in turn."""
        if not self._staging or len(self._staging[0][0]) < n:
            shape = (n, *self.cube_shape)
            self._staging = [
                (torch.empty(shape, dtype=self.torch_dtype).pin_memory(), None)
                for _ in range(STAGING_BUFFERS)
            ]
        slot = self._turn % len(self._staging)
        self._turn += 1
        host, copied = self._staging[slot]
        if copied is not None:
            copied.synchronize()
        return slot, host[:n]

    def upload(self, n: int, fill: Callable[[np.ndarray], object], fresh: bool) -> Pending:
        """A batch of ``n`` cubes that ``fill`` writes into a host array, on the device."""
        with self._lock:
            if self.device.type == "cpu":
                out = self.output(n, fresh)
                fill(out.numpy())
                return Pending(out)
            with _on(self.device):
                slot, host = self._staged(n)
                fill(host.numpy())
                with _on(self.device, self.stream):
                    out = self.output(n, fresh)
                    out.copy_(host, non_blocking=True)
                    done = self.done()
            self._staging[slot] = (self._staging[slot][0], done)
            return Pending(out, done)


class OnDevice(Staging, CubeIndexing[torch.Tensor]):
    """The batches of a host ``source`` (a cube store, the host stream), handed out on
    ``device`` through :class:`Staging`.

    :class:`~daskcubes.train.batches.Batches` reads them on the host's threads, whole batches
    at once, and hands each over (:meth:`hand`); :meth:`start` and :meth:`read` read one
    batch on the calling thread, straight into a staging buffer.
    """

    def __init__(self, source: CubeSource, device: DeviceLike) -> None:
        super().__init__(usable_device(device), len(source), source.cube_shape, source.dtype)
        self.host = source

    def __repr__(self) -> str:
        return f"<OnDevice {self.device}: {self.host!r}>"

    def hand(self, cubes: np.ndarray) -> Pending:
        """A batch read on the host, onto the device: on the CPU as it is (a tensor over
        the same memory), else copied through a staging buffer."""
        if self.device.type == "cpu":
            return Pending(torch.from_numpy(cubes))
        return self.upload(len(cubes), lambda host: np.copyto(host, cubes), fresh=False)

    def start(self, positions: np.ndarray, fresh: bool = False) -> Pending:
        """Begin handing the cubes at ``positions`` to the device."""
        positions = np.asarray(positions, dtype=np.int64)
        return self.upload(len(positions), lambda host: self.host.read(positions, host), fresh)

    def starts(self, batches: Sequence[np.ndarray], fresh: bool = False) -> Iterator[Pending]:
        """Begin handing each of ``batches`` to the device, in turn."""
        return (self.start(ids, fresh) for ids in batches)

    def read(self, positions: np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
        """Cubes at ``positions`` as a tensor on the device, into ``out`` if given."""
        cubes = self.start(positions, fresh=True).ready()
        return cubes if out is None else out.copy_(cubes)


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
