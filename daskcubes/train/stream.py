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

import numpy as np

from daskcubes.cut.cutter import cut_cubes
from daskcubes.cut.job import CutJob, available_memory, for_workers, job_recipes
from daskcubes.train.buffers import default_threads
from daskcubes.train.reader import CubeIndexing


class CubeStream(CubeIndexing[np.ndarray]):
    """The cubes of ``job`` (its frames store, plan and dtype), computed when read.

    Reads like :class:`~daskcubes.train.reader.CubeStore` (the same indexing): ``len``,
    indexing and :meth:`read`, so :class:`~daskcubes.train.batches.Batches` takes either. The source
    rows the cubes need are loaded once per process, on the first read, if they fit the
    budget; else each read works through them block by block.
    :meth:`read` may run in several threads at once (``Batches`` reads a batch on each
    of its threads, so that the cut uses every core): the cut releases the GIL.
    """

    def __init__(self, job: CutJob) -> None:
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

    def read(self, positions: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Cubes at ``positions`` (non-negative, any order), into ``out`` if given."""
        positions = np.asarray(positions, dtype=np.int64)
        if out is None:
            out = np.empty((len(positions), *self.cube_shape), dtype=self.dtype)
        return cut_cubes(self.job, job_recipes(self.job, positions), out)
