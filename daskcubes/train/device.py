"""Cubes on a torch device: cut there from source rows uploaded once, or read on the host
and moved there through staging buffers.

:class:`DeviceStream` is stream mode on a device. The source rows a job needs are
uploaded as a row-major ``(frames, rows, n_cols)`` tensor in the training dtype (cast on
the host, once, exactly as the host's cut casts them, and copied from pinned memory
without blocking), and a batch is cut by one gather on the device (:class:`CubeIndex`).
The recipes stay the host's: computed in vectorised blocks by
:func:`daskcubes.core.plan.recipes_of` and checked against the frames store on the host,
since an out-of-range index on a GPU leaves its CUDA context unusable. When the source
exceeds the budget (``max_slab_bytes``, by default half the device's free memory once a
few batches and their temporaries are set aside) it is worked through in the same bands
and frame blocks as on the host (:class:`daskcubes.cut.cutter.SourceLayout`). Cube ``i``
is bit-identical to cube ``i`` of the host stream and of a stored store: a gather copies
values, and the values are cast alike.

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
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import torch

from daskcubes.core.plan import CubePlan, Recipes
from daskcubes.cut.job import CutJob, available_memory, for_workers, job_recipes
from daskcubes.errors import UserError
from daskcubes.train.buffers import BufferRing, CubeSource
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

    def array(self, values: np.ndarray) -> torch.Tensor:
        """``values`` as a new tensor on the device."""
        into = torch.empty(values.shape, dtype=torch_dtype(values.dtype), device=self.device)
        return self.put(into, lambda host: np.copyto(host, values))


def column_runs(block: torch.Tensor, height: int) -> torch.Tensor:
    """A view of the row-major ``block`` whose row ``k`` is the run of ``height`` values
    ``block.flatten()[k + r * n_cols]``: the values of one source column down ``height``
    rows, from the value at flat offset ``k`` on."""
    n_cols = block.shape[-1]
    return block.as_strided((block.numel() - (height - 1) * n_cols, height), (1, n_cols))


class CubeIndex(NamedTuple):
    """Where the values of ``n`` cubes are in a row-major block of source ``(frames, rows,
    n_cols)``, as int64 tensors on the block's device: ``layers`` (n, depth), the flat
    offset of each cube layer's first row, and ``columns`` (n, width). Cube ``i`` is
    ``block.flatten()[layers[i, f] + r * n_cols + columns[i, c]]``.

    The gather hands torch's indexing one index tensor: the ``(n, depth, width)`` starts
    of the cubes' column runs (``layers + columns``, added on the device) into
    :func:`column_runs` of the block. Torch's indexing makes every index tensor as large
    as the output when it gets several with different strides (on CUDA it does so for
    the broadcast ``frames``, ``rows`` and ``columns`` of each value: 24 MB of int64 an
    article cube); one index tensor is never expanded, and is read once per run of
    ``height`` values. So a batch uploads ``depth + width`` int64 a cube, makes ``depth
    * width`` on the device (a ``height``-th of the output's values: 2% of a float32
    article batch's bytes), and the cubes are written in place, with no temporary of
    the output's size.
    """

    layers: torch.Tensor
    columns: torch.Tensor

    @property
    def nbytes(self) -> int:
        """Bytes of index uploaded."""
        return sum(t.numel() * t.element_size() for t in self)

    def starts(self) -> torch.Tensor:
        """(n, depth, width): the flat offset of the first value of each cube column."""
        return self.layers[:, :, None] + self.columns[:, None, :]

    def gather_into(self, block: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out[i, f, r, c] = block.flatten()[layers[i, f] + r * n_cols + columns[i, c]]``:
        one gather of one index tensor, written into ``out`` (n, depth, height, width)
        through a view that swaps its last two axes."""
        runs = column_runs(block, out.shape[2])
        torch.ops.aten.index.Tensor_out(runs, [self.starts()], out=out.transpose(2, 3))
        return out

    def layer_of(self, block: torch.Tensor, height: int) -> torch.Tensor:
        """(n, height, width): one layer a cube (``layers`` is then (n, 1))."""
        return column_runs(block, height)[self.starts()[:, 0]].transpose(1, 2)


def cube_index(
    frames: np.ndarray,
    rows: np.ndarray,
    columns: np.ndarray,
    block_shape: tuple[int, ...],
    uploads: Uploads,
) -> CubeIndex:
    """The index on the device of cubes whose layers come from ``frames`` (n, depth),
    whose first rows are ``rows`` (n,) and whose columns are ``columns`` (n, width), all
    counted in a block of ``block_shape``: worked out on the host, vectorised, and
    uploaded in one copy."""
    _, block_rows, n_cols = block_shape
    layers = (frames.astype(np.int64) * block_rows + rows.astype(np.int64)[:, None]) * n_cols
    depth = layers.shape[1]
    shape = (len(layers), depth + columns.shape[1])
    both = torch.empty(shape, dtype=torch.int64, device=uploads.device)

    def fill(host: np.ndarray) -> None:
        host[:, :depth] = layers
        host[:, depth:] = columns

    uploads.put(both, fill)
    return CubeIndex(both[:, :depth], both[:, depth:])


def batch_overhead(plan: CubePlan, dtype: np.dtype | str, n: int) -> int:
    """Device bytes a batch of ``n`` cubes needs beyond its output and the source, at
    most: its index (uploaded, and the starts made of it) and, out of core, the cubes
    gathered whole from one block before they are put in place (the output's size)."""
    depth, height, width = plan.cube_shape
    index = INDEX_ITEMSIZE * n * (depth + width + depth * width)
    return index + n * depth * height * width * np.dtype(dtype).itemsize


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
    uploaded on first use and kept, or one block (frames by a band of rows) at a time."""

    def __init__(self, job: CutJob, device: torch.device) -> None:
        self.job = job
        self.device = device
        self.uploads = Uploads(device)
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
            index = cube_index(
                recipes.frames, recipes.rows, recipes.columns, block.shape, self.uploads
            )
            return index.gather_into(block, out)
        # Out of core: the host's bands and frame blocks (see SourceLayout).
        step, size = layout.row_step, layout.frame_block
        frames, rows = recipes.frames, recipes.rows
        bands = rows // step
        for band in np.unique(bands):
            first = int(band) * step
            band_rows = range(first, min(first + step + plan.height - 1, layout.rows_needed))
            in_band = bands == band
            for start in np.unique(frames[in_band] // size) * size:
                held_frames = range(int(start), min(int(start) + size, plan.n_frames))
                held = in_band[:, None] & (frames >= start) & (frames < held_frames.stop)
                block = self.block(held_frames, band_rows)
                self._cut_held(block, held, recipes, int(start), first, out)
        return out

    def _cut_held(
        self,
        block: torch.Tensor,
        held: np.ndarray,
        recipes: Recipes,
        start: int,
        first: int,
        out: torch.Tensor,
    ) -> None:
        """The layers ``held`` (n, depth) marks, from ``block`` (frames from ``start``,
        rows from ``first``): whole cubes in one gather, other layers one layer at a time."""
        whole = np.asarray(held.all(axis=1))
        frames, rows = recipes.frames - start, recipes.rows - first
        if whole.all():
            index = cube_index(frames, rows, recipes.columns, block.shape, self.uploads)
            index.gather_into(block, out)
            return
        if whole.any():
            cubes = np.flatnonzero(whole)
            index = cube_index(
                frames[cubes], rows[cubes], recipes.columns[cubes], block.shape, self.uploads
            )
            values = torch.empty((len(cubes), *out.shape[1:]), dtype=out.dtype, device=out.device)
            out[self.uploads.array(cubes)] = index.gather_into(block, values)
        some = held & ~whole[:, None]
        for layer in np.flatnonzero(some.any(axis=0)):
            cubes = np.flatnonzero(some[:, layer])
            index = cube_index(
                frames[cubes, layer, None],
                rows[cubes],
                recipes.columns[cubes],
                block.shape,
                self.uploads,
            )
            height = self.job.plan.height
            out[self.uploads.array(cubes), int(layer)] = index.layer_of(block, height)


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


class DeviceStream(DeviceBatches, CubeIndexing[torch.Tensor]):
    """The cubes of ``job``, cut on ``device`` when read: stream mode on a device.

    Reads like :class:`~daskcubes.train.stream.CubeStream` (``len``, indexing, :meth:`read`)
    but gives ``torch`` tensors on ``device`` in the job's dtype;
    :class:`~daskcubes.train.batches.Batches` over it cuts every batch on the device, the next
    one while the loop trains on this one. The source is uploaded on the first read.
    """

    def __init__(self, job: CutJob, device: DeviceLike) -> None:
        found = usable_device(device)
        # The budget is the device's: max_slab_bytes, or by default a share of its free
        # memory once the batches handed out at once, and what the one being cut needs
        # beyond its output, are set aside.
        plan, dtype = job.plan, np.dtype(job.dtype)
        batch = RESERVED_BATCH * int(np.prod(plan.cube_shape)) * dtype.itemsize
        reserved = KEEP_BUFFERS * batch + batch_overhead(plan, dtype, RESERVED_BATCH)
        self.job = for_workers(job, max(free_memory(found) - reserved, 0), threads=1)
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
        positions = np.asarray(positions, dtype=np.int64)
        recipes = job_recipes(self.job, positions)  # on the host, vectorised
        check_recipes(recipes, self.job.plan, positions, self.where)
        with self._lock, _on(self.device, self.stream):
            out = self.output(len(positions), fresh)
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
