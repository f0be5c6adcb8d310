"""The table and the charts of a run."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.rows import (
    ARTICLE,
    BASELINE,
    CEILING,
    CUBES_PER_S,
    DASKCUBES,
    GROUP,
    PATCH_LIBRARIES,
    Key,
    Row,
)

COLOURS = {
    ARTICLE: "tab:orange",
    BASELINE: "tab:gray",
    DASKCUBES: "tab:blue",
    CEILING: "tab:green",
    PATCH_LIBRARIES: "tab:purple",
}


def table(rows: Sequence[Row]) -> list[str]:
    """The table as Markdown lines: rates, and ratios to step 3 and to each row's ceiling."""
    rates = {row.key: row.rate for row in rows}
    step3 = rates.get(Key.STEP3)
    lines = [
        "| method | rate | unit | x article step 3 | x ceiling |",
        "|---|---:|---|---:|---:|",
    ]
    for row in rows:
        vs_step3 = f"{row.rate / step3:.2f}" if step3 and row.unit == CUBES_PER_S else ""
        ceiling = rates.get(row.ceiling) if row.ceiling else None
        vs_ceiling = f"{row.rate / ceiling:.2f}" if ceiling else ""
        lines.append(f"| {row.method} | {row.rate:,.2f} | {row.unit} | {vs_step3} | {vs_ceiling} |")
    return lines


def charts(
    rows: Sequence[Row], threads: dict[Key, dict[int, float]], cores: int | None, out: Path
) -> None:
    """``ladder.png`` (cube rates, log scale, one colour per group, values on the bars)
    and ``threads.png`` (rate against threads, like the article's final figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    cube_rows = [row for row in rows if row.unit == CUBES_PER_S]
    figure, axes = plt.subplots(figsize=(10, 0.4 * len(cube_rows) + 1.5))
    bars = axes.barh(
        [row.method for row in cube_rows],
        [row.rate for row in cube_rows],
        color=[COLOURS[GROUP[row.key]] for row in cube_rows],
    )
    axes.bar_label(bars, labels=[f"{row.rate:,.1f}" for row in cube_rows], padding=3, fontsize=8)
    axes.set_xscale("log")
    axes.set_xlim(right=axes.get_xlim()[1] * 3)  # room for the labels
    axes.invert_yaxis()
    axes.set_xlabel("cubes/s (log scale)")
    axes.set_title(f"Cubes per second, {cores} cores")
    shown = dict.fromkeys(GROUP[row.key] for row in cube_rows)
    axes.legend(handles=[Patch(color=COLOURS[group], label=group) for group in shown])
    figure.tight_layout()
    figure.savefig(out / "ladder.png", dpi=100)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(8, 5))
    styles = iter(["-", "--", ":", "-."] * len(threads))
    for key, curve in threads.items():
        counts = sorted(curve)
        axes.plot(
            counts,
            [curve[t] for t in counts],
            marker="o",
            linestyle=next(styles),
            color=COLOURS[GROUP[key]],
            label=f"{key} ({GROUP[key]})",
        )
    axes.set_xlabel("threads")
    axes.set_ylabel("cubes/s")
    axes.set_title("Rate against threads")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "threads.png", dpi=100)
    plt.close(figure)


def machine() -> dict[str, Any]:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(pages / 2**30, 1),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }
