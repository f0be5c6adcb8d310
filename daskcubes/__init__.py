"""daskcubes: cut millions of 3-D training cubes out of many 2-D frames with Dask and zarr."""

from daskcubes.config import Config, load_config
from daskcubes.errors import UserError
from daskcubes.reader import CubeStore, open_cubes

__version__ = "0.1.0"

__all__ = ["Config", "CubeStore", "UserError", "__version__", "load_config", "open_cubes"]
