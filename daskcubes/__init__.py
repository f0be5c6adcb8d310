"""daskcubes: cut millions of 3-D training cubes out of many 2-D frames with Dask and zarr.

The stages (:func:`run`, :func:`ingest`, :func:`sample`) take a config or keyword settings
and, optionally, a ``distributed.Client`` (or a scheduler's address) to run on; the
readers (:func:`open_cubes`, :func:`open_stream`, :class:`Batches`) hand cubes to
training code.
"""

from daskcubes.api import ingest, open_stream, repair, run, sample
from daskcubes.config import Config, load_config
from daskcubes.errors import UserError
from daskcubes.io.sources import frames_array
from daskcubes.train.batches import Batches
from daskcubes.train.reader import CubeStore, open_cubes
from daskcubes.train.stream import CubeStream
from daskcubes.version import __version__

__all__ = [
    "Batches",
    "Config",
    "CubeStore",
    "CubeStream",
    "UserError",
    "__version__",
    "frames_array",
    "ingest",
    "load_config",
    "open_cubes",
    "open_stream",
    "repair",
    "run",
    "sample",
]
