"""The device check: the ``gpu`` tests, then stream mode on the device at the article's
shapes, side by side with what bounds it and what a user gets without it.

    python workflows/device_check.py                      # on a GPU machine, a few minutes
    python workflows/device_check.py --device cpu --small # the wiring, on any machine

Runs ``pytest -m gpu`` (they skip without CUDA), writes a frames store of the article's
shapes (100 frames of 1000 x 1000 float64, random) into tmpfs, and measures for float32
and float64 cubes:

- device stream mode: ``Batches`` over ``open_stream(config, device, gather="device")``,
  batches cut on the device from the slab uploaded once;
- the device copy ceiling: copying batches of cubes within device memory (each cube's
  bytes read once and written once, as the cut does);
- the CPU stream on this machine: ``Batches`` over ``open_stream(config)``, every core;
- what a user gets today: the CPU stream's batches copied to the device through pinned
  staging buffers (``gather="host"``);
- a million cubes through ``Batches`` on the device, stopped at ``--cap`` seconds and
  projected from there if not done by then.

Then it prints the rates, their ratios and one verdict line per target. Rates are the
best of ``REPEATS`` runs; the device is synchronised before each clock stops.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from bench.data import make_frames_store, random_frames

from daskcubes import Batches, Config, open_stream

ROOT = Path(__file__).resolve().parent.parent
REPEATS = 2
DTYPES = ("float32", "float64")


class Shapes(NamedTuple):
    n_frames: int
    n_rows: int
    n_cols: int
    dim: int
    #: cubes each measurement runs over: device stream, copy ceiling, CPU stream, copies
    device_cubes: int
    cpu_cubes: int
    copied_cubes: int
    million: int


ARTICLE = Shapes(100, 1000, 1000, 100, 16384, 512, 1024, 1_000_000)
SMALL = Shapes(20, 200, 200, 20, 4096, 1024, 1024, 1_000_000)


class Target(NamedTuple):
    """``measured(rates)`` must be at least ``bound`` (at most, if ``at_most``)."""

    text: str
    measured: Callable[[dict[str, float]], float]
    bound: float
    at_most: bool = False


TARGETS = [
    Target("device stream >= 50,000 cubes/s", lambda r: r["device stream"], 50_000),
    Target(
        "moonshot: device stream >= 0.6x the device copy ceiling",
        lambda r: r["device stream"] / r["device copy ceiling"],
        0.6,
    ),
    Target(
        "device stream >= 10x the CPU stream with host-to-device copies",
        lambda r: r["device stream"] / r["CPU stream + copy to the device"],
        10,
    ),
    Target(
        "a million cubes through Batches on one device <= 30 s",
        lambda r: r["a million cubes (s)"],
        30,
        at_most=True,
    ),
]
#: The dtype each target is set for (the others are printed for the record).
SET_FOR = {TARGETS[0].text: "float32", TARGETS[1].text: "float32", TARGETS[2].text: "float32"}


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_rate(items: int, run: Callable[[], object], device: torch.device) -> float:
    rates = []
    for _ in range(REPEATS):
        synchronise(device)
        started = time.perf_counter()
        run()
        synchronise(device)
        rates.append(items / (time.perf_counter() - started))
    return max(rates)


def drain(batches: Batches, cubes: int) -> Callable[[], None]:
    """``cubes`` cubes of ``batches`` (continuing its epoch run after run), each batch
    dropped once handed out, as a training loop would."""

    def run() -> None:
        taken = 0
        for ids, _ in batches:
            taken += len(ids)
            if taken >= cubes:
                return

    return run


def copy_ceiling(config: Config, device: torch.device, batch: int, cubes: int) -> float:
    """Cubes per second copied within device memory, a batch at a time."""
    shape = (batch, config.n_frames, config.dim, config.dim)
    dtype = getattr(torch, config.dtype)
    source = torch.empty(shape, dtype=dtype, device=device).uniform_()
    target = torch.empty_like(source)

    def run() -> None:
        for _ in range(cubes // batch):
            target.copy_(source)

    return best_rate(cubes // batch * batch, run, device)


def measure(
    frames_store: str, shapes: Shapes, dtype: str, device: torch.device, batch: int, cap: float
) -> dict[str, float]:
    base = Config(
        synthetic=False,
        frames_store=frames_store,
        cubes=max(shapes.device_cubes, shapes.cpu_cubes, shapes.copied_cubes),
        n_frames=shapes.n_frames,
        dim=shapes.dim,
        dtype=dtype,
    )
    rates: dict[str, float] = {}
    on_device = open_stream(base, device, gather="device")
    on_device.read(np.arange(1))  # upload the slab outside the timing
    batches = Batches(on_device, batch, shuffle=True, prefetch=2)
    rates["device stream"] = best_rate(
        shapes.device_cubes, drain(batches, shapes.device_cubes), device
    )
    rates["device copy ceiling"] = copy_ceiling(base, device, batch, shapes.device_cubes)
    on_host = Batches(open_stream(base), 16, shuffle=True, prefetch=2)
    on_host.source.read(np.arange(1))
    rates["CPU stream"] = best_rate(shapes.cpu_cubes, drain(on_host, shapes.cpu_cubes), device)
    copied = Batches(open_stream(base, device, gather="host"), 16, shuffle=True, prefetch=2)
    rates["CPU stream + copy to the device"] = best_rate(
        shapes.copied_cubes, drain(copied, shapes.copied_cubes), device
    )
    many = Config.model_validate({**base.model_dump(), "cubes": shapes.million})
    rates["a million cubes (s)"] = million_seconds_of(many, device, batch, cap)
    return rates


def million_seconds_of(config: Config, device: torch.device, batch: int, cap: float) -> float:
    """Seconds for an epoch of ``config.cubes`` cubes through ``Batches`` on the device:
    measured, or projected from the cubes done by ``cap`` seconds."""
    stream = open_stream(config, device, gather="device")
    stream.read(np.arange(1))  # the slab, outside the timing
    taken = 0
    synchronise(device)
    started = time.perf_counter()
    for ids, _ in Batches(stream, batch, shuffle=True, prefetch=2):
        taken += len(ids)
        if time.perf_counter() - started > cap:
            break
    synchronise(device)
    seconds = time.perf_counter() - started
    if taken < len(stream):
        print(
            f"note: {config.dtype}: {taken:,} of {len(stream):,} cubes in {seconds:.1f} s, "
            "the rest projected",
            file=sys.stderr,
        )
    return seconds * len(stream) / taken


def gpu_tests() -> str:
    """The summary line of ``pytest -m gpu``."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode not in (0, 5):  # 5: nothing collected
        print(done.stdout[-4000:], file=sys.stderr)
    return f"exit {done.returncode}: {lines[-1] if lines else done.stderr.strip()[-200:]}"


def verdicts(results: dict[str, dict[str, float]]) -> list[str]:
    lines = []
    for target in TARGETS:
        for dtype, rates in results.items():
            value = target.measured(rates)
            met = value <= target.bound if target.at_most else value >= target.bound
            role = "" if SET_FOR.get(target.text, dtype) == dtype else " (for the record)"
            verdict = "met" if met else "MISSED"
            lines.append(f"- {target.text}, {dtype}{role}: {value:,.2f} -> {verdict}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--small", action="store_true", help="small shapes: the wiring only")
    parser.add_argument("--batch", type=int, default=64, help="cubes per device batch")
    parser.add_argument(
        "--cap", type=float, help="seconds the million may take (default 60; small 10)"
    )
    parser.add_argument("--scratch", default="/dev/shm/daskcubes-device-check")
    parser.add_argument("--skip-tests", action="store_true", help="leave out pytest -m gpu")
    parser.add_argument("--json", help="also write the results into this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    shapes = SMALL if args.small else ARTICLE
    cap = args.cap or (10.0 if args.small else 60.0)
    tests = "left out" if args.skip_tests else gpu_tests()
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        frames = random_frames(shapes.n_frames, shapes.n_rows, shapes.n_cols)
        store = make_frames_store(str(scratch / "frames.zarr"), frames)
        results = {
            dtype: measure(store, shapes, dtype, device, args.batch, cap) for dtype in DTYPES
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU"
    print(f"device: {device} ({name}); torch {torch.__version__}")
    size = f"{shapes.n_frames} frames of {shapes.n_rows} x {shapes.n_cols}, cubes of {shapes.dim}"
    print(f"shapes: {size}")
    print(f"gpu tests: {tests}")
    for dtype, rates in results.items():
        print(f"{dtype}:")
        for what, value in rates.items():
            unit = "" if what.endswith("(s)") else " cubes/s"
            print(f"  {what:48s} {value:14,.1f}{unit}")
        for over in ("device copy ceiling", "CPU stream + copy to the device", "CPU stream"):
            ratio = rates["device stream"] / rates[over]
            print(f"  {'device stream / ' + over:48s} {ratio:14,.2f}x")
    if device.type != "cuda":
        print("note: not a GPU; the targets are set for one: these verdicts show the wiring only")
    print("targets:", *verdicts(results), sep="\n")
    if args.json:
        about: dict[str, Any] = {"device": str(device), "name": name, "tests": tests}
        report = {**about, "shapes": shapes._asdict(), "results": results}
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
