"""Fetch, here, the wheels the device check needs on a bare GPU machine, into ``.whl/``
(ignored by git; the device tool carries it), and print the one command that runs the
check there::

    python workflows/device_wheels.py

That machine (Python 3.12, manylinux x86_64; no package registry) has torch, triton,
numpy, numba, pandas, pyarrow, fsspec, pytest and more (:data:`ON_THE_MACHINE`), but not
what ``import daskcubes`` needs beyond them: dask, zarr, numcodecs, pydantic, natsort and
their own needs (:data:`WHEELS`). Each wheel is fetched without its dependencies, for
that machine's Python, at the version this project is tested with; then every
requirement of every wheel is checked to be carried or already there, and none of the
carried ones to be there already (above all not torch): a wheel missing from the list,
or one that would replace the machine's own package, ends the script with one line.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / ".whl"
#: What the device path and tests/test_device.py import that the machine lacks, at the
#: versions of pyproject.toml's lower bounds (what CI installs exactly) and their needs.
WHEELS = {
    "dask": "2026.8.0",
    "partd": "1.4.2",
    "locket": "1.0.0",
    "zarr": "3.1.6",
    "numcodecs": "0.16.6",
    "donfig": "0.8.1.post1",
    "google-crc32c": "1.9.0",
    "pydantic": "2.13.4",
    "pydantic-core": "2.46.4",
    "annotated-types": "0.7.0",
    "typing-inspection": "0.4.2",
    "natsort": "8.4.0",
}
#: The Python packages of the GPU machines' image (nvidia-h100-x1, nvidia-h200), as the
#: notes on those machines list them (read on a machine on 2026-11-17).
_LISTED = """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
    botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
    coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
    diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
    frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
    hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
    jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
    linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl
    meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
    narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
    nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile
    nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
    nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime
    onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
    orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
    prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
    pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
    pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich
    sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
    sentencepiece sentence-transformers setuptools shellingham simplejson six
    sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server
    tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
    torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton
    typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt
    xarray xxhash yarl zipp
"""
ON_THE_MACHINE = frozenset(canonicalize_name(name) for name in _LISTED.split())
#: That machine's Python and platform, as pip matches wheels (manylinux_2_N: N exactly).
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64"]
PLATFORMS += ["manylinux2014_x86_64", "manylinux1_x86_64"]
TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux"}
TARGET |= {"platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix"}
#: Run there, in the checkout's root (the device tool's working directory).
COMMAND = (
    "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
    "--target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:$PWD python3 "
    "workflows/device_check.py"
)


def fetch() -> None:
    shutil.rmtree(FOLDER, ignore_errors=True)
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", "3.12", "--implementation", "cp", *platforms]
    command += ["-q", "-d", str(FOLDER), *(f"{name}=={v}" for name, v in WHEELS.items())]
    subprocess.run(command, check=True)


def requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(name).decode().splitlines()
    found = [
        Requirement(line.split(":", 1)[1]) for line in lines if line.startswith("Requires-Dist:")
    ]
    here = {key: str(value) for key, value in default_environment().items()}
    environment = here | TARGET | {"extra": ""}
    return [r for r in found if r.marker is None or r.marker.evaluate(environment)]


def problems() -> list[str]:
    carried = {canonicalize_name(name) for name in WHEELS}
    wheels = sorted(FOLDER.glob("*.whl"))
    found = []
    if len(wheels) != len(WHEELS):
        found.append(f"{len(wheels)} wheels in {FOLDER}, expected {len(WHEELS)}")
    found += [f"{name} is on the machine already" for name in sorted(carried & ON_THE_MACHINE)]
    for wheel in wheels:
        for need in requirements(wheel):
            if canonicalize_name(need.name) not in carried | ON_THE_MACHINE:
                found.append(f"{wheel.name} needs {need}, neither carried nor on the machine")
    return found


def main() -> int:
    fetch()
    found = problems()
    if found:
        print(f"device wheels: {'; '.join(found)}")
        return 1
    size = sum(wheel.stat().st_size for wheel in FOLDER.glob("*.whl"))
    print(f"{len(WHEELS)} wheels, {size / 2**20:.1f} MiB, in {FOLDER}; on the GPU machine, run:")
    print(COMMAND)
    return 0


if __name__ == "__main__":
    sys.exit(main())
