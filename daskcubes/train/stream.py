"""Stream mode: cubes cut on demand from a frames store, without writing a cube store.

For training runs where storing every cube makes no sense. Cube ``i`` of a stream is
byte-identical to cube ``i`` of a cube store written with the same settings: both come
from the same job (:class:`~daskcubes.cut.job.CutJob`, its recipes) and the same cut
(:func:`daskcubes.cut.cutter.cut_cubes`), which holds source values within the same budget
(``max_slab_bytes``, by default half this machine's available memory, shared by the
threads that read). Imports nothing from the executors.

``daskcubes.open_stream(config, device=...)`` hands the cubes out as torch tensors on a
device, cut there (:class:`~daskcubes.train.device.DeviceStream`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from daskcubes.cut.cutter import cut_into, output_shapes, resident_volumes
from daskcubes.cut.job import DatasetCut, available_memory, for_workers
from daskcubes.io.schema import CUBES
from daskcubes.train.buffers import default_threads
from daskcubes.train.reader import Arrays, CubeIndexing, empty_outputs


class CubeStream(CubeIndexing[Any]):
    """The cubes of ``job`` (its frames store, plan and dtype), computed when read.

    Reads like :class:`~daskcubes.train.reader.CubeStore` (the same indexing): ``len``,
    indexing and :meth:`read`, so :class:`~daskcubes.train.batches.Batches` takes either;
    with paired arrays, a mapping of array names to arrays. The source rows the cubes
    need are loaded once per process, on the first read, if they fit the budget (of a
    dataset of many volumes, as many volumes as fit it, the least recently used dropped
    first); else each read works through them block by block.
    :meth:`read` may run in several threads at once (``Batches`` reads a batch on each
    of its threads, so that the cut uses every core): the cut releases the GIL.
    """

    def __init__(self, job: DatasetCut) -> None:
        # The source laid out for this machine, and the threads Batches reads with.
        self.job = for_workers(job, available_memory(), default_threads())

    def __len__(self) -> int:
        return self.job.plan.n_cubes

    def __repr__(self) -> str:
        return (
            f"<CubeStream of {self.job.frames.path!r}: {len(self)} cubes of "
            f"{self.cube_shape} {self.dtype}, seed {self.job.plan.seed}>"
        )

    @property
    def cube_shape(self) -> tuple[int, int, int]:
        return self.job.plan.cube_shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.job.dtype)

    @property
    def arrays(self) -> Arrays:
        """Each array handed out per cube: its item shape and dtype."""
        return {
            name: (shape[1:], np.dtype(dtype))
            for name, (shape, dtype) in output_shapes(self.job, 1).items()
        }

    def volumes(self, positions: np.ndarray) -> np.ndarray:
        """The volume of each cube at ``positions``."""
        return self.job.plan.volumes_of(np.asarray(positions, dtype=np.int64))[0]

    @property
    def n_volumes(self) -> int:
        return len(self.job.plan.plans)

    @property
    def resident_volumes(self) -> int:
        """How many volumes the stream holds at once within its budget: a shuffled
        :class:`~daskcubes.train.batches.Batches` shuffles in blocks of as many where
        that is fewer than all."""
        return resident_volumes(self.job)

    def read(self, positions: np.ndarray, out: Any = None) -> Any:
        """Cubes at ``positions`` (non-negative, any order), into ``out`` if given."""
        positions = np.asarray(positions, dtype=np.int64)
        if out is None:
            out = empty_outputs(self.arrays, len(positions))
        cut_into(self.job, positions, out if isinstance(out, dict) else {CUBES: out})
        return out
