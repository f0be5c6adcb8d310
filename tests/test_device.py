"""Cubes on a torch device: the device gather (on ``device="cpu"`` here, on CUDA where a GPU
is) gives the bytes of the host stream and of a stored store, for every definition and
dtype, in core and out of core; its index stays small on every device; bad recipes never
reach it; batches, ranks, resumes and the torch loader behave as on the host.

The module runs alone too, as workflows/device_check.py runs it on a GPU machine without
the rest of the suite's packages (``pytest --noconftest -m gpu tests/test_device.py``):
it needs no fixture of conftest.py for its ``gpu`` tests, and skips them itself without
CUDA.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from daskcubes import Batches, CubeStream, jobs, open_cubes, open_stream  # noqa: E402
from daskcubes.config import Config  # noqa: E402
from daskcubes.core.plan import CubePlan, Recipes, recipes_of  # noqa: E402
from daskcubes.errors import UserError  # noqa: E402
from daskcubes.loaders.torch import CubeDataset  # noqa: E402
from daskcubes.train import device as device_module  # noqa: E402
from daskcubes.train.device import (  # noqa: E402
    DeviceStream,
    OnDevice,
    TritonGather,
    Uploads,
    batch_overhead,
    device_gather,
    upload_index,
)
from tests.helpers import DEFINITIONS, small_config, triton_interpreted  # noqa: E402

#: Skips a ``gpu`` test without CUDA (as conftest.py does), for this module run alone.
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CPU = torch.device("cpu")
#: Every device the tests cut on: the CPU always, CUDA where a GPU is (marked ``gpu``).
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, needs_cuda])]
#: The article's definition and every other one of tests/test_definitions.py.
ALL_DEFINITIONS: dict[str, dict[str, Any]] = {"article": {}, **DEFINITIONS}


def definition_config(root: Path, name: str, **overrides: Any) -> Config:
    values = {"n_frames": 6, "n_rows": 30, "n_cols": 20, **ALL_DEFINITIONS[name], **overrides}
    return small_config(root, **values)


def host(cubes: Any) -> np.ndarray:
    """A batch as host bytes, from a tensor on any device or a numpy array."""
    return cubes.cpu().numpy() if isinstance(cubes, torch.Tensor) else np.asarray(cubes)


def with_budget(config: Config, budget: int) -> Config:
    return Config.model_validate({**config.model_dump(), "max_slab_bytes": budget})


def out_of_core_budgets(config: Config) -> dict[str, int]:
    """Budgets of one device (no threads to share them) that give bands of all frames
    (where cubes may start on other rows than the first) and blocks of 2 frames by a
    band, for ``config``'s frames and cubes."""
    job = open_stream(config).job
    plan = job.plan.first
    row_bytes = plan.n_cols * np.dtype(config.dtype).itemsize
    budgets = {"frame blocks": 2 * plan.height * row_bytes}
    if job.jobs()[0].source.rows_needed > plan.height + 2:
        budgets["bands"] = plan.n_frames * (plan.height + 2) * row_bytes
    return budgets


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ALL_DEFINITIONS)
def test_device_cubes_are_the_host_stream_s_and_the_store_s_bytes(
    tmp_path: Path, name: str, dtype: str, device: str
) -> None:
    config = definition_config(tmp_path, name, dtype=dtype)
    jobs.run(config, show_progress=False)
    stored = open_cubes(config.out)[:]
    assert host(open_stream(config)[:]).tobytes() == stored.tobytes()
    on_device = open_stream(config, device, gather="device")
    assert isinstance(on_device, DeviceStream) and on_device.jobs[0].source.whole
    cubes = on_device[:]
    assert cubes.device.type == device and cubes.dtype == getattr(torch, dtype)
    assert host(cubes).tobytes() == stored.tobytes()
    order = np.random.default_rng(0).permutation(config.cubes)
    assert host(on_device[order]).tobytes() == stored[order].tobytes()
    for budget in out_of_core_budgets(config).values():
        banded = open_stream(with_budget(config, budget), device, gather="device")
        assert isinstance(banded, DeviceStream) and not banded.jobs[0].source.whole
        assert host(banded[order]).tobytes() == stored[order].tobytes()


@pytest.fixture
def triton_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Device streams cut by the Triton kernel, run on the CPU by Triton's interpreter
    (``TRITON_INTERPRET=1``, read when the kernel is defined: so its module is loaded
    again, and again after the test)."""
    pytest.importorskip("triton")
    with triton_interpreted(monkeypatch):
        yield


@pytest.mark.usefixtures("triton_on_the_cpu")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ALL_DEFINITIONS)
def test_the_triton_kernel_gives_the_store_s_bytes(tmp_path: Path, name: str, dtype: str) -> None:
    """The CUDA gather, run on the CPU by Triton's interpreter: every definition and
    dtype, in core and out of core, byte for byte the store's cubes."""
    config = definition_config(tmp_path, name, dtype=dtype, cubes=12)
    jobs.run(config, show_progress=False)
    stored = open_cubes(config.out)[:]
    order = np.random.default_rng(0).permutation(config.cubes)
    budgets = {"whole": None, **out_of_core_budgets(config)}
    for budget in budgets.values():
        stream = open_stream(
            config if budget is None else with_budget(config, budget), "cpu", gather="device"
        )
        assert isinstance(stream, DeviceStream)
        assert isinstance(stream.source.gather, TritonGather)
        assert stream.jobs[0].source.whole == (budget is None)
        assert host(stream[order]).tobytes() == stored[order].tobytes()


def test_the_out_of_core_budgets_give_both_kinds_of_block(tmp_path: Path) -> None:
    """The budgets above work through bands of all frames, then blocks of fewer frames."""
    config = definition_config(tmp_path, "all-windows")
    jobs.run(config, show_progress=False)
    budgets = out_of_core_budgets(config)
    bands = open_stream(with_budget(config, budgets["bands"]), "cpu", gather="device")
    blocks = open_stream(with_budget(config, budgets["frame blocks"]), "cpu", gather="device")
    assert isinstance(bands, DeviceStream) and isinstance(blocks, DeviceStream)
    band_layout, block_layout = bands.jobs[0].source, blocks.jobs[0].source
    assert band_layout.frame_block == config.n_frames and band_layout.row_step == 3
    assert block_layout.frame_block == 2 and block_layout.row_step == 1


@pytest.mark.parametrize("device", DEVICES)
def test_host_gather_and_stored_cubes_reach_the_device_with_the_same_bytes(
    tmp_path: Path, device: str
) -> None:
    config = definition_config(tmp_path, "non-cubic")
    jobs.run(config, show_progress=False)
    stored = open_cubes(config.out)[:]
    copied = open_stream(config, device, gather="host")
    assert isinstance(copied, OnDevice)
    assert host(copied[:]).tobytes() == stored.tobytes()
    batches = Batches(open_cubes(config.out), 8, shuffle=True, device=device)
    for ids, cubes in batches:
        assert cubes.device.type == device
        assert host(cubes).tobytes() == stored[ids].tobytes()


def test_on_the_cpu_the_stream_cuts_on_the_host_and_hands_out_its_memory(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs.run(config, show_progress=False)
    stream = open_stream(config, "cpu")
    assert isinstance(stream, OnDevice)  # the host's cutter is the faster one there
    cut_into: list[int] = []  # addresses: a reference would keep the ring from reusing it
    read = stream.host.read

    def recording_read(positions: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        assert out is not None  # Batches hands the host a buffer of its ring to cut into
        cut_into.append(out.__array_interface__["data"][0])
        return read(positions, out)

    monkeypatch.setattr(stream.host, "read", recording_read)
    batches = Batches(stream, 8, prefetch=0, threads=1)
    stored = open_cubes(config.out)[:]
    for i, (ids, cubes) in enumerate(batches):
        assert isinstance(cubes, torch.Tensor)
        assert cubes.numpy().tobytes() == stored[ids].tobytes()
        # The ring buffer the host cut into, as a tensor: no copy.
        assert cubes.data_ptr() == cut_into[i]
        ring = batches.rings["cubes"]._buffers
        assert any(np.shares_memory(cubes.numpy(), buffer) for buffer in ring)
    assert len(cut_into) == len(batches) == 5


# -- recipes checked on the host ---------------------------------------------------------


def corrupt(recipes: Recipes, field: str) -> Recipes:
    frames, rows, columns = (np.array(a) for a in (recipes.frames, recipes.rows, recipes.columns))
    if field == "frames":
        frames[1, 0] = -1
    elif field == "rows":
        rows[1] = 10**6
    elif field == "columns":
        columns[1, -1] = 20  # one past the last column
    else:
        columns = columns[:, :-1]
    return Recipes(frames, rows, columns)


@pytest.mark.parametrize("field", ["frames", "rows", "columns", "shape"])
def test_a_corrupt_recipe_is_one_line_and_never_reaches_the_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, field: str
) -> None:
    config = definition_config(tmp_path, "all-windows")
    jobs.run(config, show_progress=False)
    stream = open_stream(config, "cpu", gather="device")
    assert isinstance(stream, DeviceStream)

    def reached(*args: object, **kwargs: object) -> None:
        raise AssertionError("a corrupt recipe reached the device")

    good = device_module.cut_recipes

    def corrupted(*args: Any) -> tuple[np.ndarray, Recipes]:
        volumes, recipes = good(*args)
        return volumes, corrupt(recipes, field)

    monkeypatch.setattr(device_module, "cut_recipes", corrupted)
    monkeypatch.setattr(stream.source, "gather", reached)
    monkeypatch.setattr(device_module, "upload_rows", reached)
    with pytest.raises(UserError) as raised:
        stream[0:4]
    message = str(raised.value)
    assert "\n" not in message and "frames store" in message
    assert field in message
    if field != "shape":
        assert "cube 1 " in message and "refused before it reaches the device" in message
    with pytest.raises(UserError):  # from the thread that reads ahead, into the loop
        list(Batches(stream, 4, prefetch=2))


def test_a_missing_gpu_is_one_line(config: Config) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match=r"^device 'cuda': torch .* sees no CUDA device;[^\n]*$"):
        open_stream(config, "cuda")


# -- index memory ----------------------------------------------------------------------


def article_plan(n_cubes: int) -> CubePlan:
    """The article's plan (100 frames of 1000 x 1000, 100^3 cubes), no data needed."""
    return CubePlan(n_cubes, 100, 100, 100, 100, 1000, 1000, 7, 16, 16)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_index_of_an_article_batch_is_small_beside_its_bytes(dtype: str) -> None:
    """``depth + 1 + width`` int64 a cube, uploaded and used as they are: below a
    thousandth of the batch's bytes, and all a batch needs beyond its output."""
    plan, n = article_plan(64), 16
    recipes = recipes_of(plan, np.arange(n))
    index = upload_index(recipes.frames, recipes.rows, recipes.columns, Uploads(CPU))
    depth, height, width = plan.cube_shape
    assert index.dtype == torch.int64 and index.shape == (n, depth + 1 + width)
    assert index[:, :depth].numpy().tobytes() == recipes.frames.astype(np.int64).tobytes()
    assert index[:, depth].numpy().tolist() == recipes.rows.tolist()
    assert index[:, depth + 1 :].numpy().tobytes() == recipes.columns.astype(np.int64).tobytes()
    index_bytes = index.numel() * index.element_size()
    batch_bytes = n * depth * height * width * np.dtype(dtype).itemsize
    assert batch_overhead(plan, n) == index_bytes <= batch_bytes / 1000


@pytest.mark.parametrize("budget", ["whole", "bands", "frame blocks"])
def test_every_index_the_cut_builds_stays_within_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: str
) -> None:
    """Each call of the gather gets ``depth + 1 + width`` index values a cube of the batch
    and no more, whatever the layout of the source; the calls of a batch add up to at
    most one such index a block of the source."""
    config = definition_config(tmp_path, "all-windows")
    jobs.run(config, show_progress=False)
    if budget != "whole":
        config = with_budget(config, out_of_core_budgets(config)[budget])
    stream = open_stream(config, "cpu", gather="device")
    assert isinstance(stream, DeviceStream)
    calls: list[int] = []
    gather = stream.source.gather

    def recorded(*args: Any) -> Any:
        calls.append(sum(np.asarray(a).size for a in args[1:4]))
        return gather(*args)

    monkeypatch.setattr(stream.source, "gather", recorded)
    n = 16
    stored = open_cubes(config.out)[:]
    assert host(stream[np.arange(n)]).tobytes() == stored[:n].tobytes()
    depth, _, width = stream.cube_shape
    assert calls and max(calls) == n * (depth + 1 + width)
    assert (len(calls) == 1) == (budget == "whole")


def test_without_triton_the_device_gather_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import daskcubes.train

    monkeypatch.setitem(sys.modules, "daskcubes.train.device_kernel", None)  # not importable
    monkeypatch.delattr(daskcubes.train, "device_kernel", raising=False)
    with pytest.raises(UserError, match=r"^device 'cuda:0': the device gather needs Triton"):
        device_gather(torch.device("cuda", 0), Uploads(torch.device("cuda", 0)))
    assert device_gather(CPU, Uploads(CPU)) is device_module.host_gather


class AtenCalls(TorchDispatchMode):
    """Every aten call made while active, with its arguments and result."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, list[Any], Any]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        result = func(*args, **(kwargs or {}))
        self.calls.append((func, [*args, *(kwargs or {}).values()], result))
        return result


def index_tensors(func: Any, args: list[Any]) -> list[Any]:
    """The index tensors an indexing call gets (none for other calls)."""
    if "index" not in func.__name__:
        return []
    found = []
    for arg in args[1:]:
        if isinstance(arg, (list, tuple)):
            found += [t for t in arg if isinstance(t, torch.Tensor)]
        elif isinstance(arg, torch.Tensor) and not arg.is_floating_point():
            found.append(arg)
    return found


@pytest.mark.parametrize("budget", ["whole", "bands", "frame blocks"])
@pytest.mark.parametrize("name", ["article", "all-windows"])
@pytest.mark.parametrize("kernel", ["host", "triton"])
def test_no_index_of_a_device_batch_grows_to_the_output_s_size(
    tmp_path: Path, request: pytest.FixtureRequest, name: str, budget: str, kernel: str
) -> None:
    """The aten calls of a batch on ``device="cpu"``, cut by the CPU's gather and by the
    CUDA one (Triton's, interpreted): no indexing call gets several index tensors that
    broadcast to its output or the batch's (CUDA expands each of them to that size
    inside the kernel, where the CPU takes them small), and no int64 tensor has as many
    values as the output."""
    if kernel == "triton":
        request.getfixturevalue("triton_on_the_cpu")
    config = definition_config(tmp_path, name)
    jobs.run(config, show_progress=False)
    if budget != "whole":
        budgets = out_of_core_budgets(config)
        if budget not in budgets:
            pytest.skip(f"{name}: its cubes' rows are all its frames' first rows")
        config = with_budget(config, budgets[budget])
    stream = open_stream(config, "cpu", gather="device")
    n = 16
    with AtenCalls() as aten:
        ids, cubes = next(iter(Batches(stream, n, shuffle=True, prefetch=0)))
    assert host(cubes).tobytes() == open_cubes(config.out)[ids].tobytes()
    indexing = [(func, index_tensors(func, args), result) for func, args, result in aten.calls]
    for func, index, result in indexing:
        if len(index) >= 2:
            broadcast = torch.broadcast_shapes(*(t.shape for t in index))
            for output in (cubes, result):
                assert broadcast != output.shape, f"{func}: indices broadcast to {broadcast}"
    for func, args, result in aten.calls:
        tensors, _ = tree_flatten([args, result])
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.dtype == torch.int64:
                assert t.numel() < cubes.numel(), f"{func}: int64 of {tuple(t.shape)}"


# -- batches, ranks and resumes --------------------------------------------------------


@pytest.fixture
def device_stream(tmp_path: Path) -> tuple[DeviceStream, np.ndarray]:
    config = definition_config(tmp_path, "row-window", cubes=37)
    jobs.run(config, show_progress=False)
    stream = open_stream(config, "cpu", gather="device")
    assert isinstance(stream, DeviceStream)
    return stream, open_cubes(config.out)[:]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_ranks_together_see_every_cube_once_with_the_store_s_bytes(
    device_stream: tuple[DeviceStream, np.ndarray], prefetch: int
) -> None:
    stream, stored = device_stream
    seen = []
    for rank in range(3):
        for ids, cubes in Batches(
            stream, 4, shuffle=True, seed=5, rank=rank, world_size=3, prefetch=prefetch
        ):
            assert host(cubes).tobytes() == stored[ids].tobytes()
            seen.extend(ids.tolist())
    assert sorted(seen) == list(range(len(stream)))


@pytest.mark.parametrize(("block", "calls"), [(1024, 1), (8, 5)])
def test_recipes_are_worked_out_ahead_a_block_of_batches_at_once(
    device_stream: tuple[DeviceStream, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
    block: int,
    calls: int,
) -> None:
    """An epoch of 10 batches of 4 (37 cubes): the recipes of ``block`` cubes in one call."""
    stream, stored = device_stream
    made: list[int] = []
    cut_recipes = device_module.cut_recipes

    def counted(cut: Any, positions: np.ndarray) -> tuple[np.ndarray, Recipes]:
        made.append(len(positions))
        return cut_recipes(cut, positions)

    monkeypatch.setattr(device_module, "cut_recipes", counted)
    monkeypatch.setattr(device_module, "RECIPES_AHEAD", block)
    for ids, cubes in Batches(stream, 4, shuffle=True, seed=2, prefetch=2):
        assert host(cubes).tobytes() == stored[ids].tobytes()
    assert len(made) == calls and sum(made) == len(stream)


def test_resuming_mid_epoch_gives_the_rest_as_on_the_host(
    device_stream: tuple[DeviceStream, np.ndarray],
) -> None:
    stream, stored = device_stream
    on_host = Batches(CubeStream(stream.cut), 4, shuffle=True, seed=5)
    host_order = [ids.tolist() for ids, _ in on_host]
    first = Batches(stream, 4, shuffle=True, seed=5)
    taken = [ids.tolist() for _, (ids, _) in zip(range(3), first, strict=False)]
    resumed = Batches(stream, 4, shuffle=True, seed=5)
    resumed.load_state_dict(first.state_dict())
    rest = list(resumed)
    for ids, cubes in rest:
        assert host(cubes).tobytes() == stored[ids].tobytes()
    assert taken + [ids.tolist() for ids, _ in rest] == host_order


def test_a_batch_someone_holds_is_never_overwritten(
    device_stream: tuple[DeviceStream, np.ndarray],
) -> None:
    stream, stored = device_stream
    held = [(ids, cubes) for ids, cubes in Batches(stream, 4, prefetch=2)]
    for ids, cubes in held:
        assert host(cubes).tobytes() == stored[ids].tobytes()


def test_a_device_source_refuses_a_second_device(
    device_stream: tuple[DeviceStream, np.ndarray],
) -> None:
    with pytest.raises(UserError, match="on a device already"):
        Batches(device_stream[0], 4, device="cpu")


# -- the torch loader ------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_cube_dataset_hands_out_device_tensors(tmp_path: Path, device: str) -> None:
    config = definition_config(tmp_path, "frame-subset")
    jobs.run(config, show_progress=False)
    stored = open_cubes(config.out)[:]
    for source in (config, config.out):
        dataset = CubeDataset(source, device=device)
        loader = DataLoader(dataset, batch_size=8, collate_fn=CubeDataset.collate)
        for k, batch in enumerate(loader):
            assert batch.device.type == device
            assert host(batch).tobytes() == stored[8 * k : 8 * (k + 1)].tobytes()
        assert host(dataset[3]).tobytes() == stored[3].tobytes()


@pytest.mark.slow
def test_collate_to_the_cpu_keeps_the_zero_copy_path_of_workers(tmp_path: Path) -> None:
    config = definition_config(tmp_path, "article")
    jobs.run(config, show_progress=False)
    stored = open_cubes(config.out)[:]
    loader = DataLoader(
        CubeDataset(config.out),
        batch_size=8,
        collate_fn=CubeDataset.collate_to("cpu"),
        num_workers=2,
    )
    for k, batch in enumerate(loader):
        assert batch.is_shared()  # the worker's shared memory, handed on as it is
        assert host(batch).tobytes() == stored[8 * k : 8 * (k + 1)].tobytes()


@pytest.mark.gpu
@needs_cuda
def test_collate_to_a_gpu_stages_batches_through_pinned_memory(tmp_path: Path) -> None:
    config = definition_config(tmp_path, "article")
    jobs.run(config, show_progress=False)
    stored = open_cubes(config.out)[:]
    loader = DataLoader(
        CubeDataset(config.out), batch_size=8, collate_fn=CubeDataset.collate_to("cuda")
    )
    for k, batch in enumerate(loader):
        assert batch.is_cuda
        assert host(batch).tobytes() == stored[8 * k : 8 * (k + 1)].tobytes()


@pytest.mark.gpu
@needs_cuda
def test_batches_on_a_gpu_overlap_and_keep_their_bytes(tmp_path: Path) -> None:
    """Batches cut on the device's own stream and handed to the loop's stream, with a
    step's work queued on the loop's stream between batches."""
    config = definition_config(tmp_path, "all-windows", cubes=64)
    jobs.run(config, show_progress=False)
    stored = open_cubes(config.out)[:]
    stream = open_stream(config, "cuda")
    assert isinstance(stream, DeviceStream)
    for ids, cubes in Batches(stream, 8, shuffle=True, prefetch=3):
        busy = torch.randn(512, 512, device="cuda")
        for _ in range(4):
            busy = busy @ busy / 512
        assert host(cubes).tobytes() == stored[ids].tobytes()


@pytest.mark.slow
def test_the_multi_gpu_example_runs_two_ranks_on_the_cpu(tmp_path: Path) -> None:
    """workflows/multi_gpu.py under torchrun, one process per rank (gloo on the CPU)."""
    script = Path(__file__).resolve().parent.parent / "workflows" / "multi_gpu.py"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "torch.distributed.run", "--standalone"),
            *("--nproc-per-node", "2", str(script)),
            *("--device", "cpu", "--config", "small", "--make-frames"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 ranks on cpu: 200 cubes in epoch 0 of 200, every cube once: True" in done.stdout
