"""Stream mode: cubes cut on demand from a frames store, without writing a cube store.

For training runs where storing every cube makes no sense. Cube ``i`` of a stream is
byte-identical to cube ``i`` of a cube store written with the same config: both come
from the same plan (:func:`daskcubes.plan.cube_columns`), the same slab
(:func:`daskcubes.sample.worker_slab`) and the same gather
(:func:`daskcubes.kernels.gather_cubes`). Imports nothing from the executors.
"""

from __future__ import annotations

import numpy as np

from daskcubes.config import Config
from daskcubes.kernels import gather_cubes
from daskcubes.plan import columns_of
from daskcubes.reader import Index, cube_positions
from daskcubes.sample import sample_job, worker_slab


class CubeStream:
    """The cubes of ``config`` (its ``frames_store``, ``cubes``, ``dim``, ``seed``, ``dtype``),
    computed when read.

    Behaves like :class:`~daskcubes.reader.CubeStore` for reading: ``len``, indexing
    and :meth:`read`, so :class:`~daskcubes.batches.Batches` takes either. The frames
    store's first ``dim`` rows are loaded once per process, on the first read.
    :meth:`read` may run in several threads at once (``Batches`` splits each batch
    across its threads so that the cut uses every core): the gather releases the GIL.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.job = sample_job(config)  # checks the frames store and the plan now

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

    def __getitem__(self, index: Index) -> np.ndarray:
        found = cube_positions(index, len(self))
        if isinstance(found, int):
            return self.read(np.array([found]))[0]
        return self.read(found)

    def columns(self, positions: np.ndarray) -> np.ndarray:
        """(n, dim) source columns of the cubes at ``positions``."""
        return columns_of(self.job.plan, positions)

    def read(self, positions: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Cubes at ``positions`` (non-negative, any order), into ``out`` if given."""
        positions = np.asarray(positions, dtype=np.int64)
        if out is None:
            out = np.empty((len(positions), *self.cube_shape), dtype=self.dtype)
        slab = worker_slab(self.job.frames, self.job.storage, self.job.plan.dim, self.job.dtype)
        return gather_cubes(slab, self.columns(positions), out)


def open_stream(config: Config) -> CubeStream:
    """The cubes ``config`` would store, computed on demand from its frames store."""
    return CubeStream(config)
