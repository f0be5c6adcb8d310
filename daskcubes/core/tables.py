"""Window tables: a weight map or a label volume summarised over where windows may lie.

Pure arithmetic over a map's values, handed in frame by frame (``layer(frame)``; the
storage layer reads them, :mod:`daskcubes.io.maps`). A map is summarised into a
:class:`WindowTable` over the *window starts*: every place a window of the cube's shape
may start (``n - size + 1`` along a ``window`` axis, one along ``all`` frames or the
``first`` rows). The table is all a plan needs to draw window ``i`` from two uniforms.

- **Weights** over frames x rows x columns: a window's weight is the mean of the map
  over the window's voxels, from a summed-area table of each frame and a running sum
  over frames; a window holding no positive weight has weight exactly 0 (counted apart,
  in integers, so that rounding never makes it drawable). Weights shaped as the window
  starts give each start's weight directly.
- **Labels** (whole-number classes) of the frames' shape: a window counts for class
  ``c`` when at least ``fraction`` of its voxels are of class ``c`` (counted exactly, in
  integers). Each class's windows are drawn uniformly; classes by their shares.

Only drawable starts are kept (their flat index, and for weights the cumulative
weight): 16 bytes a positive start for weights, 8 a qualifying start and class for
labels. The table also holds a digest of the map's values, which a cube store records.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from daskcubes.errors import UserError

MapKind = Literal["weights", "labels"]
Shape = tuple[int, int, int]


@dataclass(frozen=True)
class MapSpec:
    """The map of a plan: its kind, where it is, and (labels) the shares asked for.

    ``fingerprint`` is the digest the map's values must have (a store's record), or None
    for a map not yet read.
    """

    kind: MapKind
    path: str
    ratios: tuple[tuple[int, float], ...] = ()
    fraction: float = 0.5
    fingerprint: str | None = None

    @property
    def what(self) -> str:
        return f"{self.kind} '{self.path}'"


@dataclass(frozen=True, eq=False)
class WindowTable:
    """Drawable window starts, by group: one group for weights, one per class for labels.

    ``shares`` are the cumulative shares of the groups; group ``k`` holds the flat
    indices (into the window starts, C order) ``flats[k]`` and, for weights, their
    cumulative weights ``cdfs[k]`` (None: each start equally likely).
    """

    fingerprint: str
    starts_shape: Shape
    shares: np.ndarray
    flats: tuple[np.ndarray, ...]
    cdfs: tuple[np.ndarray | None, ...]

    def draw(self, window_u: np.ndarray, group_u: np.ndarray) -> np.ndarray:
        """(n,) int64 flat window starts for uniforms in [0, 1): ``group_u`` picks the
        group by its share, ``window_u`` a start within it."""
        groups = np.minimum(
            np.searchsorted(self.shares, group_u, side="right"), len(self.flats) - 1
        )
        out = np.empty(len(window_u), dtype=np.int64)
        for k, (flat, cdf) in enumerate(zip(self.flats, self.cdfs, strict=True)):
            mine = groups == k
            if not mine.any():
                continue
            u = window_u[mine]
            if cdf is None:
                picked = (u * len(flat)).astype(np.int64)
            else:  # a start of weight 0 spans no interval of the CDF: never picked
                picked = np.searchsorted(cdf, u * cdf[-1], side="right")
            out[mine] = flat[np.minimum(picked, len(flat) - 1)]
        return out


def starts_shape(modes: tuple[str, str, str], cube_shape: Shape, frames_shape: Shape) -> Shape:
    """Window starts along each axis: ``n - size + 1`` for a window, else one."""
    counts = [
        n - size + 1 if mode == "window" else 1
        for mode, size, n in zip(modes, cube_shape, frames_shape, strict=True)
    ]
    return counts[0], counts[1], counts[2]


#: A map's values frame by frame: ``layer(frame)`` is a (rows, columns) array.
Layer = Callable[[int], np.ndarray]


def summarise(
    spec: MapSpec,
    layer: Layer,
    starts: Shape,
    cube_shape: Shape,
    by_start: bool,
    digest: hashlib.blake2b,
) -> WindowTable:
    """The table of ``spec``'s map, whose values ``layer`` gives (and adds to ``digest``
    as it reads them); ``by_start``: weights given per window start, not per voxel."""
    if spec.kind == "labels":
        return _label_table(spec, layer, starts, cube_shape, digest)
    return _weight_table(spec, layer, starts, cube_shape, by_start, digest)


def _box_sums(layer: np.ndarray, height: int, width: int, dtype: type) -> np.ndarray:
    """Sums of ``layer`` over every ``height`` x ``width`` box, by the box's first row and
    column, from the layer's summed-area table."""
    n_rows, n_cols = layer.shape
    table = np.zeros((n_rows + 1, n_cols + 1), dtype=dtype)
    np.cumsum(np.cumsum(layer, axis=0, dtype=dtype), axis=1, out=table[1:, 1:])
    below, left = table[height:, :-width], table[:-height, width:]
    return table[height:, width:] - below - left + table[:-height, :-width]


Boxes = tuple[np.ndarray, ...]


def _frame_windows(box_of: Callable[[int], Boxes], n_starts: int, depth: int) -> Iterator[Boxes]:
    """The sums of ``box_of(frame)`` over ``depth`` consecutive frames, start by start:
    adding the frame that enters and taking away the one that leaves (read again)."""
    total = box_of(0)
    for frame in range(1, depth):
        total = tuple(t + b for t, b in zip(total, box_of(frame), strict=True))
    yield total
    for start in range(1, n_starts):
        entering, leaving = box_of(start + depth - 1), box_of(start - 1)
        total = tuple(t + e - g for t, e, g in zip(total, entering, leaving, strict=True))
        yield total


def _check_weights(maps: MapSpec, values: np.ndarray, frame: int) -> np.ndarray:
    weights = values.astype(np.float64)
    bad = ~np.isfinite(weights) | (weights < 0)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise UserError(
            f"{maps.what}: value {weights[row, col]} at frame {frame}, row {row}, column "
            f"{col}; expected finite weights of 0 or more"
        )
    return weights


def _weight_table(
    maps: MapSpec,
    layer: Layer,
    starts: Shape,
    cube_shape: Shape,
    by_start: bool,
    digest: hashlib.blake2b,
) -> WindowTable:
    n_starts, start_rows, start_cols = starts
    depth, height, width = cube_shape
    per_frame = start_rows * start_cols
    flats, weights = [], []

    def keep(frame_start: int, window_weights: np.ndarray) -> None:
        flat = np.flatnonzero(window_weights > 0)
        flats.append(flat + frame_start * per_frame)
        weights.append(window_weights[flat])

    if by_start:
        for frame in range(n_starts):
            keep(frame, _check_weights(maps, layer(frame), frame).reshape(-1))
    else:

        def box_of(frame: int) -> Boxes:
            values = _check_weights(maps, layer(frame), frame)
            held = (values > 0).astype(np.int64)
            return (
                _box_sums(values, height, width, np.float64)[:start_rows],
                _box_sums(held, height, width, np.int64)[:start_rows],
            )

        voxels = depth * height * width
        tiny = np.finfo(np.float64).tiny
        for frame, (sums, held) in enumerate(_frame_windows(box_of, n_starts, depth)):
            # A window with no positive voxel weighs exactly 0, whatever the rounding of
            # the running sums; one with some weighs more than 0.
            mean = np.where(held > 0, np.maximum(sums / voxels, tiny), 0.0)
            keep(frame, mean.reshape(-1))
    flat, weight = np.concatenate(flats), np.concatenate(weights)
    if not flat.size:
        raise UserError(f"{maps.what}: every window has weight 0; expected some positive weight")
    return WindowTable(digest.hexdigest(), starts, np.ones(1), (flat,), (np.cumsum(weight),))


def _label_table(
    maps: MapSpec,
    layer: Layer,
    starts: Shape,
    cube_shape: Shape,
    digest: hashlib.blake2b,
) -> WindowTable:
    n_starts, start_rows, start_cols = starts
    depth, height, width = cube_shape
    voxels = depth * height * width
    need = max(1, math.ceil(maps.fraction * voxels))
    asked = [(label, share) for label, share in maps.ratios if share > 0]
    present: set[int] = set()
    most = [0] * len(asked)
    found: list[list[np.ndarray]] = [[] for _ in asked]

    def box_of(frame: int) -> Boxes:
        values = layer(frame)
        if (
            values.dtype.kind == "f"
            and not (np.isfinite(values) & (values == np.round(values))).all()
        ):
            row, col = np.argwhere(~(np.isfinite(values) & (values == np.round(values))))[0]
            raise UserError(
                f"{maps.what}: value {values[row, col]} at frame {frame}, row {row}, column "
                f"{col}; expected whole-number classes"
            )
        present.update(int(v) for v in np.unique(values))
        return tuple(
            _box_sums((values == label).astype(np.int64), height, width, np.int64)[:start_rows]
            for label, _ in asked
        )

    for frame, counts in enumerate(_frame_windows(box_of, n_starts, depth)):
        for k, count in enumerate(counts):
            most[k] = max(most[k], int(count.max()))
            found[k].append(
                np.flatnonzero(count.reshape(-1) >= need) + frame * start_rows * start_cols
            )
    for (label, _), best in zip(asked, most, strict=True):
        if label not in present:
            held = ", ".join(map(str, sorted(present)[:10])) + (
                ", ..." if len(present) > 10 else ""
            )
            raise UserError(
                f"label_ratios: class {label} does not occur in {maps.what} (it holds classes "
                f"{held})"
            )
        if best < need:
            raise UserError(
                f"label_ratios: class {label} cannot be met: no window has label_fraction "
                f"{maps.fraction} of its {voxels} voxels of class {label} (at most "
                f"{best / voxels:.3g} of a window is)"
            )
    shares = np.cumsum([share for _, share in asked])
    return WindowTable(
        digest.hexdigest(),
        starts,
        shares / shares[-1],
        tuple(np.concatenate(parts) for parts in found),
        (None,) * len(asked),
    )
