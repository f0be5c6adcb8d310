"""The cube's definition: how a cube's frames, rows and columns are chosen.

Cube ``i`` is ``cube[f, r, c] == frames[frames_i[f], rows_i + r, columns_i[c]]`` with
shape ``(depth, height, width)``; the definition says how each choice is made:

- frames (``frame_mode``): ``all`` in order, a ``window`` of ``depth`` consecutive frames
  at a random start, or a random ``subset`` of ``depth`` frames in increasing order;
- rows (``row_mode``): the ``first`` ``height`` rows, or a ``window`` at a random start;
- columns (``column_mode``): ``width`` distinct ``random`` columns, in drawn order or
  ``sorted_columns``, or a ``window`` of consecutive columns at a random start;
- any axis may be ``grid``: windows at the starts of a grid along it (every
  ``*_stride`` positions, with the edge policy ``grid_edge``; see
  :mod:`daskcubes.core.windows`). The grid axes together make a grid of windows, and cube
  ``i`` is window ``i`` of it in C order (frames slowest, columns fastest);
- or the window starts are drawn from a map (``weights`` or ``labels``, with windows
  along every axis that is not ``all`` frames or the ``first`` rows; see
  :mod:`daskcubes.core.tables`).

The article's definition is the default: all frames, the first rows, random columns in
drawn order. :meth:`Definition.to_dict` and :meth:`Definition.from_dict` are its one
spelling: the settings (:class:`~daskcubes.config.Config`), the cube store's attributes
(:mod:`daskcubes.io.schema`) and the plan all go through them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np

from daskcubes.core.tables import MapSpec
from daskcubes.core.windows import GridEdge, grid_starts
from daskcubes.errors import UserError

#: What a store's ``semantics`` attribute says: the article's definition, or another one
#: that the store's plan attributes spell out (:class:`Definition`).
SEMANTICS = "article"
DEFINED_SEMANTICS = "defined"
FrameMode = Literal["all", "window", "subset", "grid"]
RowMode = Literal["first", "window", "grid"]
ColumnMode = Literal["random", "window", "grid"]
#: The axes of a cube as the settings name them (``frame_mode``, ``row_stride``, ...).
AXES = ("frame", "row", "column")


@dataclass(frozen=True)
class Definition:
    """How a cube's frames, rows and columns are chosen (see the module docstring)."""

    frame_mode: FrameMode = "all"
    row_mode: RowMode = "first"
    column_mode: ColumnMode = "random"
    sorted_columns: bool = False
    #: Grid axes: the step between windows (None: the window's size, no overlap).
    frame_stride: int | None = None
    row_stride: int | None = None
    column_stride: int | None = None
    grid_edge: GridEdge = "drop"
    #: Window starts drawn from a map: a weight map, or a label volume with the share of
    #: each class and the least fraction of a window's voxels that counts for a class.
    weights: str | None = None
    labels: str | None = None
    label_ratios: tuple[tuple[int, float], ...] = ()
    label_fraction: float = 0.5

    @property
    def is_article(self) -> bool:
        return self == Definition()

    @property
    def modes(self) -> tuple[str, str, str]:
        """The mode of each axis (frames, rows, columns)."""
        return (self.frame_mode, self.row_mode, self.column_mode)

    @property
    def strides(self) -> tuple[int | None, int | None, int | None]:
        return (self.frame_stride, self.row_stride, self.column_stride)

    @property
    def has_grid(self) -> bool:
        return "grid" in self.modes

    def to_dict(self) -> dict[str, Any]:
        """The definition as settings, by their names (JSON-ready: ``label_ratios`` as
        ``[class, share]`` pairs)."""
        values = asdict(self)
        values["label_ratios"] = [list(pair) for pair in self.label_ratios]
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Definition:
        """The definition ``values`` spell (settings or a store's attributes; other keys
        are ignored, missing ones take the article's defaults). ``label_ratios`` may be a
        mapping of class to share or ``[class, share]`` pairs."""
        given = {f.name: values[f.name] for f in fields(cls) if values.get(f.name) is not None}
        ratios = given.get("label_ratios", ())
        pairs = ratios.items() if isinstance(ratios, Mapping) else ratios
        given["label_ratios"] = tuple(sorted((int(c), float(s)) for c, s in pairs))
        return cls(**given)

    def map_spec(self, fingerprint: str | None = None) -> MapSpec | None:
        """The map the windows are drawn from (None if none), whose values must have the
        digest ``fingerprint`` (None: not yet read)."""
        if self.weights is not None:
            return MapSpec("weights", self.weights, fingerprint=fingerprint)
        if self.labels is not None:
            return MapSpec(
                "labels", self.labels, self.label_ratios, self.label_fraction, fingerprint
            )
        return None

    def grid(
        self, cube_shape: tuple[int, int, int], frames_shape: tuple[int, int, int]
    ) -> tuple[np.ndarray, ...]:
        """The window starts along each axis: the grid's for a grid axis, else ``[0]``
        (an axis not in the grid counts once)."""
        return tuple(
            grid_starts(n, size, stride or size, self.grid_edge)
            if mode == "grid"
            else np.zeros(1, dtype=np.int32)
            for mode, stride, size, n in zip(
                self.modes, self.strides, cube_shape, frames_shape, strict=True
            )
        )


#: A cube's depth, height and width, each with the name of the setting that gave it.
CubeSizes = tuple[tuple[str, int], tuple[str, int], tuple[str, int]]


def check_cube_fits(
    sizes: CubeSizes,
    definition: Definition,
    frames_shape: tuple[int, int, int],
    frames: str = "the frames store has",
) -> None:
    """Refuse cubes of ``sizes`` that do not fit frames of ``frames_shape`` (``n_frames,
    n_rows, n_cols``), in one line naming the setting; ``frames`` says whose shape it is.

    The one check of its kind: a plan makes it, and so does a config of synthetic
    frames before any frame is made.
    """
    n_frames, n_rows, n_cols = frames_shape
    for name, size in sizes:
        # One setting may give two sizes (``dim``): it must fit the smaller frame axis.
        limit = min(n for (other, _), n in zip(sizes, frames_shape, strict=True) if other == name)
        if not 1 <= size <= limit:
            raise UserError(
                f"{name}: {size}; expected 1 to {limit}, since {frames} {n_frames} frames "
                f"of {n_rows} rows x {n_cols} columns"
            )
    depth = sizes[0][1]
    if definition.frame_mode == "all" and depth != n_frames:
        raise UserError(
            f"depth: {depth}; frame_mode all stacks every frame, so depth must be "
            f"{n_frames} (the frame count); use frame_mode window or subset for fewer frames"
        )
    for axis, mode, stride in zip(AXES, definition.modes, definition.strides, strict=True):
        if stride is not None and mode != "grid":
            raise UserError(
                f"{axis}_stride: {stride} needs {axis}_mode grid ({axis}_mode is {mode})"
            )
        if stride is not None and stride < 1:
            raise UserError(f"{axis}_stride: {stride}; expected at least 1")
    if definition.grid_edge != "drop" and not definition.has_grid:
        raise UserError(f"grid_edge: {definition.grid_edge} needs an axis in grid mode")
    _check_map_settings(definition)


#: Modes whose windows a map may choose: a window, all frames, the first rows.
MAP_MODES = (("all", "window"), ("first", "window"), ("window",))


def _check_map_settings(definition: Definition) -> None:
    if definition.labels is not None and not definition.label_ratios:
        raise UserError(
            'labels needs label_ratios: the share of each class, such as {"0": 1, "1": 1}'
        )
    if definition.weights is not None and (
        definition.labels is not None or definition.label_ratios
    ):
        raise UserError("weights and labels: windows are drawn from one map; give one of them")
    if definition.weights is None and not definition.label_ratios:
        return
    if not 0 < definition.label_fraction <= 1:
        raise UserError(
            f"label_fraction: {definition.label_fraction}; expected more than 0, at most 1"
        )
    shares = [share for _, share in definition.label_ratios]
    if any(share < 0 for share in shares) or (shares and sum(shares) <= 0):
        raise UserError(f"label_ratios: shares {shares}; expected shares of 0 or more, not all 0")
    setting = "weights" if definition.weights is not None else "labels"
    for axis, mode, allowed in zip(AXES, definition.modes, MAP_MODES, strict=True):
        if mode not in allowed:
            raise UserError(
                f"{setting} chooses where windows start: {axis}_mode must be "
                f"{' or '.join(allowed)} (it is {mode})"
            )


def check_grid_count(
    n_cubes: int,
    cube_shape: tuple[int, int, int],
    definition: Definition,
    frames_shape: tuple[int, int, int],
) -> None:
    """Refuse more cubes than a grid has windows, in one line giving the count."""
    if not definition.has_grid:
        return
    counts = [len(starts) for starts in definition.grid(cube_shape, frames_shape)]
    total = int(np.prod(counts))
    if n_cubes > total:
        along = " x ".join(
            f"{count} {axis}s"
            for axis, mode, count in zip(AXES, definition.modes, counts, strict=True)
            if mode == "grid"
        )
        raise UserError(
            f"cubes: {n_cubes}; the grid has {total} windows ({along}), so expected 1 to "
            f"{total} (cube i is window i of the grid in C order)"
        )
