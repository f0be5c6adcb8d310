"""A picture of one cube, for a person to look at: three slices through it as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from daskcubes.errors import UserError
from daskcubes.train.reader import open_cubes


def _shorten(values: np.ndarray, keep: int = 6) -> str:
    shown = ", ".join(str(v) for v in values[:keep])
    return f"[{shown}{', ...' if len(values) > keep else ''}] ({len(values)})"


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("preview needs matplotlib: pip install 'daskcubes[preview]'") from None
    return plt


def cube_figure(store_path: str, index: int, storage_options: dict[str, Any] | None = None) -> Any:
    """The matplotlib figure of cube ``index`` of the cube store at ``store_path``.

    Three panels: the first frame (row x col), the middle row through all frames
    (frame x col) and the middle column through all frames (frame x row), of the first
    channel of cubes of several, with ticks at whole indices only; the title gives the
    cube's recipe and, for a store of several volumes, its volume. ``storage_options`` are
    fsspec options for a URL.
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    store = open_cubes(store_path, storage_options=storage_options)
    if not -len(store) <= index < len(store):
        raise UserError(f"--cube {index}: out of range; the store holds {len(store)} cubes")
    read = store[index]
    cube = read["cubes"] if isinstance(read, dict) else read  # beside it: its paired cubes
    channel = " (channel 0)" if cube.ndim == 4 else ""
    cube = cube[0] if cube.ndim == 4 else cube
    recipe = store.recipes(index)
    names = [volume["name"] for volume in store.attrs["plan"].get("volumes", [])]
    volume = f"volume '{names[int(store.volumes(index)[0])]}', " if len(names) > 1 else ""
    _, height, width = cube.shape
    panels = [
        (cube[0], "frame 0", "col", "row"),
        (cube[:, height // 2, :], f"row {height // 2}", "col", "frame"),
        (cube[:, :, width // 2], f"col {width // 2}", "row", "frame"),
    ]
    figure, axes = plt.subplots(1, 3, figsize=(13, 4.6), layout="constrained")
    for ax, (image, name, xlabel, ylabel) in zip(axes, panels, strict=True):
        shown = ax.imshow(image, cmap="viridis", aspect="auto", interpolation="nearest")
        ax.set(title=name, xlabel=xlabel, ylabel=ylabel)
        for axis in (ax.xaxis, ax.yaxis):  # indices: no tick at 2.5
            axis.set_major_locator(MaxNLocator(integer=True))
        figure.colorbar(shown, ax=ax, shrink=0.8)
    figure.suptitle(
        f"{Path(store_path).name} cube {index % len(store)}{channel}: {cube.shape} "
        f"{cube.dtype}, seed {store.attrs.get('seed')}\n{volume}frames "
        f"{_shorten(recipe.frames[0])}, "
        f"first row {recipe.rows[0]}, columns {_shorten(recipe.columns[0])}",
        fontsize=10,
    )
    return figure


def draw_cube(
    store_path: str, index: int, png: str, storage_options: dict[str, Any] | None = None
) -> str:
    """Draw cube ``index`` of the cube store at ``store_path`` into ``png`` (see
    :func:`cube_figure`); returns the path written."""
    figure = cube_figure(store_path, index, storage_options)
    try:
        figure.savefig(png, dpi=100)
    except OSError as exc:
        raise UserError(f"--png {png}: cannot write ({exc.strerror})") from None
    finally:
        _pyplot().close(figure)
    return png
