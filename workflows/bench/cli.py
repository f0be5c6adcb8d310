"""The command line: the run's setup, the measurements in table order, and the report.

Every measurement is a function ``measure(setup) -> list[Row]``; :data:`MEASUREMENTS`
lists them in table order, and :data:`OPT_IN` those that run only when ``--only`` names
them (``million``: minutes, and processes of its own). Another workflow joins the table
with one line, ``joined(module.measure)``, where its ``measure(workload) -> list[Row]``
keys its rows by :class:`~bench.rows.Key`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

from bench import (
    anchors,
    ceilings,
    cut_rows,
    daskcubes_rows,
    definitions,
    distributed,
    integrity,
    million,
    patches,
    probes,
    reading,
    volumes,
)
from bench.data import Setup, article_array, prepare, read_frames
from bench.report import charts, machine, table
from bench.rows import OPT_IN as OPT_IN_KEYS
from bench.rows import Key, Row, Workload, derived_rows
from bench.targets import TARGETS, target_lines

Measurement = Callable[[Setup], list[Row]]


def joined(measure: Callable[[Workload], list[Row]]) -> Measurement:
    """Another workflow's ``measure(workload)`` as a measurement of this run."""

    def run(setup: Setup) -> list[Row]:
        return measure(setup.workload)

    run.__module__ = measure.__module__  # named by its module, as --only names it
    return run


def measurement_name(measure: Measurement) -> str:
    """What ``--only`` calls a measurement: its module, as in ``cut_rows``."""
    return measure.__module__.rsplit(".", 1)[-1]


MEASUREMENTS: list[Measurement] = [
    anchors.measure_reads,
    anchors.measure_steps,
    anchors.measure_plain_dask,
    cut_rows.measure,
    daskcubes_rows.measure_ingest,
    daskcubes_rows.measure_daskcubes,
    definitions.measure,
    patches.measure,
    daskcubes_rows.measure_write_paths,
    integrity.measure,
    ceilings.measure_ceilings,
    probes.measure_planning_and_memory,
    joined(distributed.measure),
    joined(reading.measure),
]
OPT_IN: list[Measurement] = [million.measure_million, volumes.measure_volumes]


def measure_threads(setup: Setup) -> dict[Key, dict[int, float]]:
    """Rates against thread count, like the article's final figure."""
    arr = article_array(read_frames(setup))
    many = setup.columns(setup.cubes)
    curves: dict[Key, dict[int, float]] = {
        key: {}
        for key in [Key.STEP3, Key.GENERATION, Key.END_TO_END, Key.IO_CEILING, Key.CUT_CEILING]
    }
    for threads in setup.sweep:
        cubes = setup.cubes
        curves[Key.STEP3][threads] = anchors.article_step3(arr, setup.dim, many, threads)
        curves[Key.GENERATION][threads] = cut_rows.generation_rate(setup, threads, cubes)
        curves[Key.END_TO_END][threads] = daskcubes_rows.end_to_end_rate(
            setup, threads, cubes, setup.dtype
        )
        curves[Key.IO_CEILING][threads] = ceilings.io_ceiling_rate(setup, threads, cubes)
        curves[Key.CUT_CEILING][threads] = ceilings.cut_ceiling_rate(setup, threads, cubes)
    return curves


def default_scratch() -> str:
    base = "/dev/shm" if Path("/dev/shm").is_dir() else tempfile.gettempdir()
    return str(Path(base) / f"daskcubes-bench-{os.getpid()}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python workflows/benchmark.py",
        description="The article's cube-cutting ladder and daskcubes, side by side.",
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="small preset that finishes in about a minute")
    add("--cubes", type=int, help="cubes for the fast methods (default 512; quick 96)")
    add("--few", type=int, help="cubes for the slow methods (default 16; quick 4)")
    add("--threads", type=int, default=os.cpu_count() or 1, help="threads (default: cores)")
    add("--dtype", choices=["float64", "float32"], default="float64", help="cube dtype")
    add("--n-frames", type=int, help="number of frames (default 100; quick 20)")
    add("--n-rows", type=int, default=1000, help="rows per frame")
    add("--n-cols", type=int, default=1000, help="columns per frame")
    add("--dim", type=int, default=100, help="cube edge")
    add("--sweep", help="thread counts for the threads chart (default 1,2,..,2x threads)")
    add("--plan-cubes", type=int, default=1_000_000, help="cubes to plan (default 1,000,000)")
    add("--memory-cubes", help="two run sizes whose peak memory is compared (default 500,2000)")
    add("--memory-dir", default=tempfile.gettempdir(), help="where those runs write")
    add("--scratch", default=default_scratch(), help="where data is written (deleted after)")
    add("--out", default="benchmark-results", help="folder for benchmark.json and charts")
    names = sorted({measurement_name(measure) for measure in MEASUREMENTS + OPT_IN})
    add(
        "--only",
        help=f"comma-separated measurements to run, of {', '.join(names)}; the targets "
        "their rows decide are checked, the threads chart is left out (million runs only "
        "when named)",
    )
    add("--million-cubes", type=int, help="million: small cubes (default 1,000,000; quick 20,000)")
    add("--no-cluster", action="store_true", help="million: threads only, no LocalCluster")
    add("--million-timeout", type=float, default=900, help="million: seconds a run may take")
    add("--article-cubes", type=int, help="million: article-shape cubes (default 64; quick 0)")
    add(
        "--article-root",
        default="/dev/shm/daskcubes-article",
        help="million: where the article-shape frames store is made once and kept",
    )
    add("--volume-count", type=int, help="volumes: how many (default 24; quick 6)")
    add("--volume-frames", type=int, help="volumes: about how many frames (default 64; quick 32)")
    add("--volume-size", type=int, help="volumes: about how many rows and columns (256; quick 96)")
    add("--volume-patch", type=int, help="volumes: the patches' edge (default 32; quick 16)")
    add(
        "--volume-patches",
        type=int,
        help="volumes: patches a row's call, a multiple of 4 x volumes (default 3072; quick 384)",
    )
    return parser


def setup_from_args(args: argparse.Namespace) -> Setup:
    quick = args.quick
    threads = args.threads
    sweep = args.sweep or ",".join(str(2**k) for k in range(8) if 2**k <= 2 * threads)
    memory = (args.memory_cubes or ("48,192" if quick else "500,2000")).split(",")
    scratch = Path(args.scratch)
    return Setup(
        frames=str(scratch / "frames"),
        csv_frames=str(scratch / "csv-frames"),
        frames_store=str(scratch / "frames.zarr"),
        scratch=str(scratch),
        n_frames=args.n_frames or (20 if quick else 100),
        n_rows=args.n_rows,
        n_cols=args.n_cols,
        dim=args.dim,
        cubes=args.cubes or (96 if quick else 512),
        few=args.few or (4 if quick else 16),
        threads=threads,
        dtype=args.dtype,
        sweep=tuple(int(t) for t in sweep.split(",")),
        plan_cubes=args.plan_cubes,
        memory_cubes=(int(memory[0]), int(memory[1])),
        memory_dir=args.memory_dir,
        million_cubes=args.million_cubes or (20_000 if quick else 1_000_000),
        million_cluster=not args.no_cluster,
        million_timeout=args.million_timeout,
        article_cubes=(0 if quick else 64) if args.article_cubes is None else args.article_cubes,
        article_root=args.article_root,
        volume_count=args.volume_count or (6 if quick else 24),
        volume_frames=args.volume_frames or (32 if quick else 64),
        volume_size=args.volume_size or (96 if quick else 256),
        volume_patch=args.volume_patch or (16 if quick else 32),
        volume_patches=args.volume_patches or (384 if quick else 3072),
    )


def run(setup: Setup, command: str, out: Path, only: set[str] | None = None) -> list[Row]:
    """Measure everything (or the measurements ``only`` names), print the table and
    targets, write JSON and charts into ``out``."""
    rows: list[Row] = []
    chosen = [m for m in MEASUREMENTS if only is None or measurement_name(m) in only]
    opted = [m for m in OPT_IN if only is not None and measurement_name(m) in only]
    threads: dict[Key, dict[int, float]] = {}
    Path(setup.scratch).mkdir(parents=True, exist_ok=True)
    try:
        if chosen:  # the opt-in measurements make their own data
            prepare(setup)
        chosen += opted
        for measure in chosen:
            found = measure(setup)
            for row in found:
                print(f"  {row.method}: {row.rate:,.2f} {row.unit}", file=sys.stderr, flush=True)
            rows.extend(found)
        rows.extend(derived_rows(rows))
        if only is None:
            threads = measure_threads(replace(setup, cubes=max(setup.cubes // 2, 1)))
    finally:
        shutil.rmtree(setup.scratch, ignore_errors=True)
    about = machine()
    measured = {row.key for row in rows}
    # A full run decides every target but the opt-in rows' (a missing row is an error).
    decided = [
        t
        for t in TARGETS
        if t.keys <= measured or (only is None and not t.keys & OPT_IN_KEYS.keys())
    ]
    report = [
        f"machine: {about['cores']} cores, {about['memory_gib']} GiB",
        f"command: {command}",
        "",
        *table(rows),
        "",
        "targets:",
        *target_lines(decided, rows),
    ]
    print("\n".join(report))
    out.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": about,
        "command": command,
        "setup": asdict(setup),
        "rows": [{**row._asdict(), "method": row.method} for row in rows],
        "threads": threads,
    }
    (out / "benchmark.json").write_text(json.dumps(document, indent=2))
    if only is None:
        charts(rows, threads, about["cores"], out)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    command = " ".join(["python workflows/benchmark.py", *argv])
    only = set(args.only.split(",")) if args.only else None
    unknown = sorted((only or set()) - {measurement_name(m) for m in MEASUREMENTS + OPT_IN})
    if unknown:
        build_parser().error(f"--only: unknown measurements {', '.join(unknown)}")
    run(setup_from_args(args), command, Path(args.out), only)
    return 0
