"""Stream mode: cubes cut on demand from a frames store, without writing a cube store.

For training runs where storing every cube makes no sense. Cube ``i`` of a stream is
byte-identical to cube ``i`` of a cube store written with the same config: both come
from the same recipes (:func:`daskcubes.core.plan.recipes_of`) and the same cut
(:func:`daskcubes.cut.cutter.cut_cubes`), which holds source values within the same budget
(``max_slab_bytes``, by default half this machine's available memory, shared by the
threads that read). Imports nothing from the executors.

``open_stream(config, device=...)`` hands the cubes out as torch tensors on a device, cut
there (:mod:`daskcubes.train.device`, imported only then: torch stays optional).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

from daskcubes.config import Config
from daskcubes.core.plan import recipes_of
from daskcubes.cut.cutter import available_memory, cut_cubes, cut_job
from daskcubes.errors import UserError
from daskcubes.train.batches import default_threads
from daskcubes.train.reader import CubeIndexing

if TYPE_CHECKING:
    from daskcubes.train.device import DeviceLike, DeviceStream, OnDevice


class CubeStream(CubeIndexing[np.ndarray]):
    """The cubes of ``config`` (its ``frames_store``, ``cubes``, ``dim``, ``seed``, ``dtype``),
    computed when read.

    Reads like :class:`~daskcubes.train.reader.CubeStore` (the same indexing): ``len``,
    indexing and :meth:`read`, so :class:`~daskcubes.train.batches.Batches` takes either. The source
    rows the cubes need are loaded once per process, on the first read, if they fit the
    budget; else each read works through them block by block.
    :meth:`read` may run in several threads at once (``Batches`` reads a batch on each
    of its threads, so that the cut uses every core): the cut releases the GIL.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        # Checks the frames store and the plan now; threads as Batches reads with.
        self.job = cut_job(config, available_memory(), default_threads())

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
        return cut_cubes(self.job, recipes_of(self.job.plan, positions), out)


Gather = Literal["device", "host"]


@overload
def open_stream(
    config: Config, device: None = None, gather: Gather | None = None
) -> CubeStream: ...


@overload
def open_stream(
    config: Config, device: DeviceLike, gather: Gather | None = None
) -> DeviceStream | OnDevice: ...


def open_stream(
    config: Config, device: Any = None, gather: Gather | None = None
) -> CubeStream | DeviceStream | OnDevice:
    """The cubes ``config`` would store, computed on demand from its frames store.

    Parameters
    ----------
    config : the run's settings (``frames_store``, ``cubes``, the cube definition, ...).
    device : ``None`` for numpy arrays on the host; else a torch device (``"cuda"``,
        ``"cuda:1"``, ``"cpu"``, a ``torch.device``) to hand cubes out on, as tensors.
    gather : where the cubes are cut: ``"device"`` from source rows uploaded to the
        device once (:class:`~daskcubes.train.device.DeviceStream`), ``"host"`` on the host's
        cores, then copied (:class:`~daskcubes.train.device.OnDevice`). By default on the device,
        except for ``device="cpu"``, where the host's cutter is the faster one.
    """
    if gather not in (None, "device", "host"):
        raise UserError(f"gather: {gather!r}; expected 'device' or 'host'")
    if device is None:
        return CubeStream(config)
    from daskcubes.train import device as on  # torch only when a device is asked for

    found = on.usable_device(device)
    if (gather or ("host" if found.type == "cpu" else "device")) == "device":
        return on.DeviceStream(config, found)
    return on.OnDevice(CubeStream(config), found)
