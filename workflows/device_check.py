"""The device check: the ``gpu`` tests of tests/test_device.py, then stream mode on the
device at the article's shapes, beside what bounds it and what a user gets without it.

    python workflows/device_check.py                       # a GPU machine, under 4 minutes
    python workflows/device_check.py --quick               # a second try: fewer cubes
    python workflows/device_check.py --device cpu --small  # the wiring, on any machine

On a bare GPU machine (no dask, zarr or pydantic; no package registry), with the wheels
``python workflows/device_wheels.py`` fetched into ``.whl/`` here, in the checkout's root:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:$PWD python3 \\
        workflows/device_check.py

Without a GPU (or without torch) it prints one line and exits 0. It writes a frames store
of random frames (100 of 1000 x 1000 float64) into tmpfs where it has room, else into the
temporary folder, and measures in float32 and float64:

- the device stream: ``Batches`` over ``open_stream(config, device, gather="device")``;
- the gather alone: the cut of recipes made beforehand, into one reused batch;
- the device copy ceiling: batches copied within device memory (read once, written once);
- extra device memory per batch: the peak of a batch's cut beyond the batch itself;
- the CPU stream, and the CPU stream copied to the device (``gather="host"``);
- a million cubes through ``Batches`` on the device, projected from ``--cap`` seconds;

then, in float32, the checksums of the first cubes from the device, the host stream and a
stored store. It prints the rates, their ratios and one verdict per target. Rates are the
best of ``REPEATS`` runs; the device is synchronised before each clock stops.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
REPEATS = 2
DTYPES = ("float32", "float64")
FLOAT32 = "float32"


class Shapes(NamedTuple):
    n_frames: int
    n_rows: int
    n_cols: int
    dim: int
    #: cubes each measurement runs over
    device_cubes: int
    gather_batches: int
    cpu_cubes: int
    copied_cubes: int
    million: int
    checksum_cubes: int


ARTICLE = Shapes(100, 1000, 1000, 100, 65536, 64, 512, 1024, 1_000_000, 1000)
QUICK = ARTICLE._replace(device_cubes=16384, gather_batches=16, cpu_cubes=128, copied_cubes=256)
QUICK = QUICK._replace(checksum_cubes=200)
SMALL = Shapes(20, 200, 200, 20, 4096, 16, 1024, 1024, 1_000_000, 200)


class Target(NamedTuple):
    """``measured(results)`` must be at least ``bound`` (at most, if ``at_most``)."""

    text: str
    measured: Callable[[dict[str, dict[str, float]]], float]
    bound: float
    at_most: bool = False


def rate(dtype: str, what: str) -> Callable[[dict[str, dict[str, float]]], float]:
    return lambda results: results[dtype][what]


TARGETS = [
    Target(
        "float32 article cubes through Batches >= 150,000 cubes/s",
        rate("float32", "device stream"),
        150_000,
    ),
    Target(
        "float64 article cubes through Batches >= 100,000 cubes/s",
        rate("float64", "device stream"),
        100_000,
    ),
    Target(
        "moonshot: the gather alone >= 0.6x the device copy ceiling (float32)",
        lambda r: r[FLOAT32]["gather alone"] / r[FLOAT32]["device copy ceiling"],
        0.6,
    ),
    Target(
        "extra device memory per batch <= the batch's own bytes (float32)",
        rate("float32", "extra device memory per batch (x batch)"),
        1.0,
        at_most=True,
    ),
    Target(
        "extra device memory per batch <= the batch's own bytes (float64)",
        rate("float64", "extra device memory per batch (x batch)"),
        1.0,
        at_most=True,
    ),
    Target(
        "1,000,000 float32 article cubes through Batches <= 10 s",
        rate("float32", "a million cubes (s)"),
        10,
        at_most=True,
    ),
    Target(
        "checksums: device == host stream == stored store (float32)",
        rate("float32", "checksums agree (1 = yes)"),
        1,
    ),
]


def no_gpu(device: str) -> str | None:
    """One line saying why there is nothing to check here, or None."""
    try:
        import torch
    except ImportError as error:
        return f"device check: torch is not importable ({error}); nothing to check"
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        return (
            f"device check: torch {torch.__version__} sees no CUDA device; nothing to check "
            "(--device cpu --small checks the wiring)"
        )
    return None


def gpu_tests() -> str:
    """The summary line of the ``gpu`` tests of tests/test_device.py, run alone: no
    conftest (whose fixtures need the suite's servers), warnings shown, not errors (the
    machine's torch may warn where the project's pinned one does not)."""
    command = [sys.executable, "-m", "pytest", "tests/test_device.py", "-m", "gpu", "-q"]
    command += ["--noconftest", "-p", "no:cacheprovider", "-o", "addopts=", "-W", "default"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0:
        print(done.stdout[-4000:], done.stderr[-2000:], file=sys.stderr)
    return f"exit {done.returncode}: {lines[-1] if lines else done.stderr.strip()[-200:]}"


def scratch_folder(asked: str | None, nbytes: int) -> Path:
    """``asked``, or a new folder in tmpfs if it has room for ``nbytes``, else in the
    temporary folder (a GPU machine's /dev/shm may be small)."""
    if asked:
        Path(asked).mkdir(parents=True, exist_ok=True)
        return Path(asked)
    bases = [base for base in ("/dev/shm", tempfile.gettempdir()) if os.path.isdir(base)]
    roomy = [base for base in bases if shutil.disk_usage(base).free > nbytes]
    return Path(tempfile.mkdtemp(prefix="daskcubes-device-check-", dir=(roomy or bases)[0]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--small", action="store_true", help="small shapes: the wiring only")
    parser.add_argument("--quick", action="store_true", help="fewer cubes: a second try")
    parser.add_argument("--batch", type=int, default=64, help="cubes per device batch")
    parser.add_argument("--cap", type=float, help="seconds the million may take (default 12)")
    parser.add_argument("--scratch", help="folder for the frames store (default: tmpfs)")
    parser.add_argument("--skip-tests", action="store_true", help="leave out the gpu tests")
    parser.add_argument("--json", help="also write the results into this file")
    args = parser.parse_args(argv)
    line = no_gpu(args.device)
    if line is not None:
        print(line)
        return 0
    shapes = SMALL if args.small else QUICK if args.quick else ARTICLE
    cap = args.cap or (3.0 if args.quick or args.small else 12.0)
    tests = "left out" if args.skip_tests else gpu_tests()
    frames_bytes = shapes.n_frames * shapes.n_rows * shapes.n_cols * 8
    store_bytes = shapes.checksum_cubes * shapes.n_frames * shapes.dim**2 * 4
    scratch = scratch_folder(args.scratch, 2 * (frames_bytes + store_bytes))
    try:
        about, results = measure_all(shapes, DTYPES, args.device, args.batch, cap, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"device: {about['device']} ({about['name']}); torch {about['torch']}")
    print(
        f"shapes: {shapes.n_frames} frames of {shapes.n_rows} x {shapes.n_cols}, cubes of "
        f"{shapes.dim}, batches of {args.batch}; scratch in {scratch.parent}"
    )
    print(f"gpu tests: {tests}")
    for dtype, rates in results.items():
        print(f"{dtype}:")
        for what, value in rates.items():
            unit = " cubes/s" if what in about["rates"] else ""
            print(f"  {what:48s} {value:14,.2f}{unit}")
        for over in ("device copy ceiling", "CPU stream + copy to the device", "CPU stream"):
            ratio = rates["device stream"] / rates[over]
            print(f"  {'device stream / ' + over:48s} {ratio:14,.2f}x")
        ratio = rates["gather alone"] / rates["device copy ceiling"]
        print(f"  {'gather alone / device copy ceiling':48s} {ratio:14,.2f}x")
    if about["device"].startswith("cpu"):
        print("note: not a GPU; the targets are set for one: these verdicts show the wiring only")
    print("targets:")
    for target in TARGETS:
        value = target.measured(results)
        met = value <= target.bound if target.at_most else value >= target.bound
        print(f"- {target.text}: {value:,.2f} -> {'met' if met else 'MISSED'}")
    if args.json:
        report = {**about, "tests": tests, "shapes": shapes._asdict(), "results": results}
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


# -- the measurements: torch and daskcubes are imported only once a device is found ----


def synchronise(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_rate(items: int, run: Callable[[], object], device: Any) -> float:
    rates = []
    for _ in range(REPEATS):
        synchronise(device)
        started = time.perf_counter()
        run()
        synchronise(device)
        rates.append(items / (time.perf_counter() - started))
    return max(rates)


def drain(batches: Any, cubes: int) -> Callable[[], None]:
    """``cubes`` cubes of ``batches`` (continuing its epoch run after run), each batch
    dropped once handed out, as a training loop would."""

    def run() -> None:
        taken = 0
        while taken < cubes:
            for ids, _ in batches:
                taken += len(ids)
                if taken >= cubes:
                    return

    return run


def gather_alone(stream: Any, batch: int, batches: int) -> float:
    """Cubes per second of the device cut alone: recipes made and checked beforehand,
    cut into one reused output (the index upload counted: it is part of the cut)."""
    import numpy as np
    import torch

    order = np.random.default_rng(0).permutation(len(stream))[: batch * batches]
    recipes = [stream.recipes(ids) for ids in order.reshape(batches, batch)]
    out = torch.empty((batch, *stream.cube_shape), dtype=stream.torch_dtype, device=stream.device)

    def run() -> None:
        for volumes, recipe in recipes:
            stream.cut_into(volumes, recipe, out)

    return best_rate(batch * batches, run, stream.device)


def copy_ceiling(stream: Any, batch: int, cubes: int) -> float:
    """Cubes per second copied within device memory, a batch at a time."""
    import torch

    shape = (batch, *stream.cube_shape)
    source = torch.empty(shape, dtype=stream.torch_dtype, device=stream.device).uniform_()
    target = torch.empty_like(source)

    def run() -> None:
        for _ in range(cubes // batch):
            target.copy_(source)

    return best_rate(cubes // batch * batch, run, stream.device)


def extra_memory(stream: Any, batch: int) -> float:
    """The peak device memory of cutting one batch beyond the batch itself, in batches
    (NaN off CUDA: no allocator to ask)."""
    import numpy as np
    import torch

    if stream.device.type != "cuda":
        return float("nan")
    ids = np.random.default_rng(1).permutation(len(stream))[:batch]
    stream.read(ids)
    torch.cuda.synchronize(stream.device)
    torch.cuda.reset_peak_memory_stats(stream.device)
    before = torch.cuda.memory_allocated(stream.device)
    cubes = stream.read(ids)
    torch.cuda.synchronize(stream.device)
    nbytes = cubes.numel() * cubes.element_size()
    return (torch.cuda.max_memory_allocated(stream.device) - before - nbytes) / nbytes


def million_seconds(config: Any, device: Any, batch: int, cap: float) -> float:
    """Seconds for an epoch of ``config.cubes`` cubes through ``Batches`` on the device:
    measured, or projected from the cubes done by ``cap`` seconds."""
    import numpy as np

    from daskcubes import Batches, open_stream

    stream = open_stream(config, device, gather="device")
    stream.read(np.arange(1))  # the slab, outside the timing
    taken = 0
    synchronise(stream.device)
    started = time.perf_counter()
    for ids, _ in Batches(stream, batch, shuffle=True, prefetch=2):
        taken += len(ids)
        if time.perf_counter() - started > cap:
            break
    synchronise(stream.device)
    seconds = time.perf_counter() - started
    if taken < len(stream):
        print(
            f"note: {config.dtype}: {taken:,} of {len(stream):,} cubes in {seconds:.1f} s, "
            "the rest projected",
            file=sys.stderr,
        )
    return seconds * len(stream) / taken


def measure(
    store: str, shapes: Shapes, dtype: str, device: str, batch: int, cap: float
) -> dict[str, float]:
    import numpy as np

    from daskcubes import Batches, Config, open_stream

    cubes = max(shapes.device_cubes, batch * shapes.gather_batches, shapes.cpu_cubes)
    config = Config(
        synthetic=False,
        frames_store=store,
        cubes=max(cubes, shapes.copied_cubes),
        n_frames=shapes.n_frames,
        dim=shapes.dim,
        dtype=dtype,
    )
    rates: dict[str, float] = {}
    stream: Any = open_stream(config, device, gather="device")
    stream.read(np.arange(1))  # the slab, outside the timing
    batches = Batches(stream, batch, shuffle=True, prefetch=2)
    rates["device stream"] = best_rate(
        shapes.device_cubes, drain(batches, shapes.device_cubes), stream.device
    )
    rates["gather alone"] = gather_alone(stream, batch, shapes.gather_batches)
    rates["device copy ceiling"] = copy_ceiling(stream, batch, shapes.device_cubes)
    rates["extra device memory per batch (x batch)"] = extra_memory(stream, batch)
    del stream, batches
    on_host = Batches(open_stream(config), 16, shuffle=True, prefetch=2)
    on_host.source.read(np.arange(1))
    rates["CPU stream"] = best_rate(
        shapes.cpu_cubes, drain(on_host, shapes.cpu_cubes), torch_device(device)
    )
    copied = Batches(open_stream(config, device, gather="host"), 16, shuffle=True, prefetch=2)
    rates["CPU stream + copy to the device"] = best_rate(
        shapes.copied_cubes, drain(copied, shapes.copied_cubes), torch_device(device)
    )
    many = Config.model_validate({**config.model_dump(), "cubes": shapes.million})
    rates["a million cubes (s)"] = million_seconds(many, device, batch, cap)
    return rates


def torch_device(device: str) -> Any:
    import torch

    return torch.device(device)


def checksums(store: str, shapes: Shapes, device: str, out: Path) -> float:
    """1 if the first ``checksum_cubes`` float32 cubes have one checksum from the device
    stream, the host stream and a store written of them, else 0 (each printed)."""
    import daskcubes
    from daskcubes import Config, open_cubes, open_stream

    config = Config(
        synthetic=False,
        frames_store=store,
        out=str(out),
        cubes=shapes.checksum_cubes,
        n_frames=shapes.n_frames,
        dim=shapes.dim,
        dtype=FLOAT32,
    )
    daskcubes.sample(config, progress=False)
    step = 50
    ranges = [slice(k, k + step) for k in range(0, shapes.checksum_cubes, step)]
    on_device: Any = open_stream(config, device, gather="device")
    on_host, stored = open_stream(config), open_cubes(str(out))
    digests = {
        "device": checksum(on_device[r].cpu().numpy() for r in ranges),
        "host stream": checksum(on_host[r] for r in ranges),
        "stored": checksum(stored[r] for r in ranges),
    }
    print(f"checksums of {shapes.checksum_cubes} float32 cubes: {digests}")
    return float(len(set(digests.values())) == 1)


def checksum(batches: Any) -> str:
    digest = hashlib.sha256()
    for cubes in batches:
        digest.update(cubes.tobytes())
    return digest.hexdigest()[:16]


def measure_all(
    shapes: Shapes, dtypes: tuple[str, ...], device: str, batch: int, cap: float, scratch: Path
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """The frames store made in ``scratch``, then every measurement, per dtype."""
    import numpy as np
    import torch

    import daskcubes

    frames = np.random.default_rng(0).random((shapes.n_frames, shapes.n_rows, shapes.n_cols))
    store = str(scratch / "frames.zarr")
    daskcubes.ingest(frames=frames, frames_store=store, progress=False)
    del frames
    results = {dtype: measure(store, shapes, dtype, device, batch, cap) for dtype in dtypes}
    agree = checksums(store, shapes, device, scratch / "cubes.zarr")
    results[FLOAT32]["checksums agree (1 = yes)"] = agree
    found = torch.device(device)
    name = torch.cuda.get_device_name(found) if found.type == "cuda" else "the CPU"
    rates = {"device stream", "gather alone", "device copy ceiling", "CPU stream"}
    rates |= {"CPU stream + copy to the device"}
    about = {"device": str(found), "name": name, "torch": torch.__version__, "rates": sorted(rates)}
    return about, results


if __name__ == "__main__":
    sys.exit(main())
