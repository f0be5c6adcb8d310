"""dask.distributed: a real ``dask scheduler`` + ``dask worker`` cluster, LocalClusters with
a worker killed mid-run, the dashboard (over HTTP and in a headless browser), and the
performance report. Everything listens on loopback and is stopped by its fixture."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import dask
import dask.array as da
import psutil
import pytest
from dask.typing import Key
from distributed import Client, LocalCluster

from daskcubes import jobs
from daskcubes.cli import DASK_LOG, main
from daskcubes.config import Config
from daskcubes.cut import cutter
from daskcubes.errors import UserError
from daskcubes.io.layout import open_group, store_attrs
from daskcubes.io.storage import Storage
from daskcubes.runtime import stages
from daskcubes.runtime.dashboard import page_link
from daskcubes.runtime.executors import DistributedExecutor, dask_logs_to
from daskcubes.testing import assert_stores_identical
from tests.helpers import DASHBOARD, DASK, ActOnDone, cli_args, dask_processes, small_config

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """A single-threaded run whose stores every distributed run must equal byte for byte."""
    config = small_config(
        tmp_path_factory.mktemp("sync"), cubes=64, task_size=4, shard_size=4, n_frames=6
    )
    jobs.run(config, show_progress=False)
    return config


def distributed_config(oracle: Config, root: Path, **overrides: Any) -> Config:
    """``oracle``'s job on a 2-worker LocalCluster, sampling into a new store under ``root``."""
    values = {
        **oracle.model_dump(),
        "out": str(root / "cubes.zarr"),
        "scheduler": "distributed",
        "workers": 2,
        "threads_per_worker": 1,
        "dashboard_address": DASHBOARD,
        **overrides,
    }
    return Config.model_validate(values)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The address of a real cluster on loopback: a scheduler and two 1-thread workers."""
    scheduler = [*DASK, "scheduler", "--host", "127.0.0.1", "--port", "0"]
    worker = [*DASK, "worker", "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"]
    commands = [[*scheduler, "--dashboard-address", DASHBOARD], worker, worker]
    with dask_processes(tmp_path_factory.mktemp("cluster"), commands, 2) as address:
        yield address


def slab_loads(client: Client) -> dict[str, int]:
    """How many times each worker process has loaded a source slab."""
    return client.run(cutter.slab_loads)


def test_cli_on_an_existing_cluster_matches_sync(
    dask_cluster: str, oracle: Config, tmp_path: Path
) -> None:
    config = Config.model_validate(
        {
            **oracle.model_dump(),
            "frames": str(tmp_path / "frames"),
            "frames_store": str(tmp_path / "frames.zarr"),
            "out": str(tmp_path / "cubes.zarr"),
            "scheduler": dask_cluster,
        }
    )
    with Client(dask_cluster) as client:
        before = slab_loads(client)
        assert main(["run", *cli_args(config)]) == 0
        loads = {worker: n - before[worker] for worker, n in slab_loads(client).items()}
    assert_stores_identical(oracle.frames_store, config.frames_store)
    assert_stores_identical(oracle.out, config.out)
    # The slab is loaded once on each worker that sampled, never once per task.
    assert sum(loads.values()) >= 1 and max(loads.values()) == 1, loads


def test_unreachable_scheduler_is_one_line_and_exit_2(
    oracle: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:  # a loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = small_config(tmp_path)
    argv = [*cli_args(config), "--scheduler", f"tcp://127.0.0.1:{port}", "--connect-timeout", "2"]
    assert main(["run", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"daskcubes: error: scheduler 'tcp://127.0.0.1:{port}'"), err
    assert "cannot connect within 2 s" in err and len(err.splitlines()) == 1
    assert not Path(config.frames).exists()  # nothing is written before the cluster is there


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--scheduler", "cluster"], "setting 'scheduler'"),
        (["--report", "r.html"], "report needs scheduler 'distributed'"),
        (["--dask-scheduler-address", "tcp://127.0.0.1:1"], "needs scheduler 'distributed'"),
    ],
)
def test_bad_distributed_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(["run", *cli_args(small_config(tmp_path)), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


# -- LocalCluster ---------------------------------------------------------------------------


def test_local_cluster_cli_is_quiet_and_saves_an_offline_report(
    oracle: Config, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    config = distributed_config(oracle, tmp_path, report=str(tmp_path / "report.html"))
    assert main(["sample", *cli_args(config)]) == 0
    err = capfd.readouterr().err  # the worker processes' stderr too
    assert "daskcubes: Dask dashboard http://127.0.0.1:" in err
    assert f"dask's warnings: {DASK_LOG}" in err
    assert "ERROR" not in err and "Traceback" not in err, err
    assert_stores_identical(oracle.out, config.out)
    report = (tmp_path / "report.html").read_text()
    assert "Dask Performance Report" in report
    assert "sample-" in report and "recipes-" in report  # the run's task groups
    # BokehJS is embedded: no script is loaded from a CDN, so the report renders offline.
    assert "Bokeh" in report and not re.search(r"<script[^>]+src=[\"']https?://", report)


def test_dask_warnings_go_to_the_log_file_in_driver_and_workers(
    oracle: Config, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "dask.log"
    handlers = list(logging.getLogger("distributed").handlers)
    with (
        dask_logs_to(str(log)),
        jobs.executor_for(distributed_config(oracle, tmp_path)) as executor,
    ):
        assert isinstance(executor, DistributedExecutor)
        message = "Failed to communicate with scheduler during heartbeat."
        executor.client.run(lambda: logging.getLogger("distributed.worker").error(message))
        logging.getLogger("distributed.worker").error(message)
        logging.getLogger("bokeh.server.views.ws").error("AssertionError in on_close")
    err = capfd.readouterr().err
    assert "ERROR" not in err and message not in err, err
    logged = log.read_text()
    assert "distributed.worker ERROR" in logged and "on_close" in logged
    assert logging.getLogger("distributed").handlers == handlers  # and back to stderr after


def test_a_frame_s_rows_beyond_a_worker_s_budget_are_refused(
    oracle: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = distributed_config(oracle, tmp_path)
    with LocalCluster(
        n_workers=1, threads_per_worker=1, memory_limit=1000, dashboard_address=DASHBOARD
    ) as cluster:
        argv = [*cli_args(config), "--dask-scheduler-address", cluster.scheduler_address]
        assert main(["sample", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"daskcubes: error: frames store '{oracle.frames_store}'"), err
    assert f"a cube's {oracle.dim} rows x {oracle.n_cols} columns of one frame" in err
    assert "more than a worker thread's share of the source budget (500 bytes" in err
    assert not Path(config.out).exists()  # refused before any output


def test_a_cluster_without_workers_is_refused_after_the_join_timeout() -> None:
    with (
        LocalCluster(n_workers=0, dashboard_address=DASHBOARD) as cluster,
        Client(cluster, set_as_default=False) as client,
        pytest.raises(UserError, match=r"no worker joined within 1 s"),
    ):
        DistributedExecutor(client, join_timeout=1).worker_memory()


def test_a_run_of_many_small_tasks_ends_complete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Thousands of tasks that all finish end in exit 0 and a complete store.

    Cancelling the finished futures at the end costs the scheduler time quadratic in
    their number (it releases every key once per key), and closing the client then timed
    out; at 62,500 tasks after the default 60 s. A short timeout shows it at 6,000.
    """
    frames = small_config(tmp_path, n_frames=2, n_rows=4, n_cols=4, dim=2)
    jobs.generate(frames, show_progress=False)
    jobs.ingest(frames, show_progress=False)
    config = distributed_config(frames, tmp_path, cubes=6000, shard_size=1, task_size=1)
    with dask.config.set({"distributed.comm.timeouts.connect": "3s"}):
        assert main(["sample", *cli_args(config)]) == 0, capsys.readouterr().err
    assert store_attrs(open_group(config.out, "store", Storage.of(None)))["complete"]


class CountingClient:
    """A client that counts the tasks it is asked to compute."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self.tasks = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def get(self, dsk: Any, keys: list[Any], **options: Any) -> Any:
        self.tasks += len(keys)
        return self._client.get(dsk, keys, **options)


def test_many_small_tasks_go_to_the_cluster_in_batches(
    local_cluster: DistributedExecutor,
) -> None:
    """A task of the cluster's for each cost the driver 0.35 ms of scheduling: a million
    tiny cubes' 62,500 tasks took 7x as long on a LocalCluster as on threads."""
    client = CountingClient(local_cluster.client)
    graph: dict[Key, Any] = {("task", i): (len, [i]) for i in range(3000)}
    done: list[Key] = []
    DistributedExecutor(cast(Client, client), wave=1000).run(graph, list(graph), done.append)
    assert sorted(done) == sorted(graph)
    # 11 tasks a batch (at least 128 batches for each of the 2 threads), in waves of 1000.
    assert client.tasks == 3 * -(-1000 // 11)


def test_a_killed_worker_is_restarted_and_the_run_completes(
    oracle: Config, local_cluster: DistributedExecutor, tmp_path: Path
) -> None:
    config = distributed_config(oracle, tmp_path)
    killed: list[int] = []

    def kill_a_worker(client: Client) -> None:
        killed.append(next(iter(client.run(os.getpid).values())))
        os.kill(killed[0], signal.SIGKILL)

    jobs.sample(config, show_progress=False, executor=ActOnDone(local_cluster, kill_a_worker))
    assert_stores_identical(oracle.out, config.out)
    local_cluster.client.wait_for_workers(2, timeout=60)  # the Nanny has started a new worker
    assert killed and killed[0] not in local_cluster.client.run(os.getpid).values()


def dashboard_port(client: Client) -> int:
    port = urlsplit(client.dashboard_link).port
    assert port is not None
    return port


def test_dashboard_answers_on_loopback_only(
    oracle: Config, local_cluster: DistributedExecutor, tmp_path: Path
) -> None:
    seen: dict[str, Any] = {}

    def probe(client: Client) -> None:
        port = dashboard_port(client)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=30) as answer:
            seen["status"], seen["page"] = answer.status, answer.read().decode()
        # 127.0.0.2 is loopback too, but a server bound to 127.0.0.1 does not answer it,
        # as it would not answer on the machine's other interfaces.
        try:
            socket.create_connection(("127.0.0.2", port), timeout=10).close()
            seen["other"] = "answered"
        except ConnectionRefusedError:
            seen["other"] = "refused"
        seen["listening"] = {
            c.laddr.ip
            for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port
        }

    config = distributed_config(oracle, tmp_path)
    jobs.sample(config, show_progress=False, executor=ActOnDone(local_cluster, probe))
    assert seen["status"] == 200 and "<title>Dask Diagnostic UI</title>" in seen["page"]
    assert seen["other"] == "refused"
    assert seen["listening"] == {"127.0.0.1"}


def chromium(playwright: Any) -> Any:
    """Debian's headless Chromium, as this machine runs it (no browser download)."""
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=[
            "--no-sandbox",  # the tests run as root
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    )


#: Chromium is what the README's lines do not install: its tests skip without it.
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"no Chromium at {CHROMIUM} (apt-get install chromium, as .ci/run does)",
)


@needs_chromium
def test_browser_renders_the_dashboard_during_a_run(
    oracle: Config, local_cluster: DistributedExecutor, tmp_path: Path
) -> None:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    screenshot = tmp_path / "dashboard.png"
    seen: dict[str, Any] = {}

    def look(client: Client) -> None:
        with sync_playwright() as playwright:
            browser = chromium(playwright)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(client.dashboard_link, timeout=60_000)
            # The status page's plots are Bokeh canvases, drawn once its websocket is up.
            page.locator("canvas").nth(3).wait_for(timeout=60_000)
            page.wait_for_timeout(2000)  # a refresh of the plots
            page.screenshot(path=str(screenshot))
            seen["title"] = page.title()
            page.close()
            browser.close()

    config = distributed_config(oracle, tmp_path)
    jobs.sample(config, show_progress=False, executor=ActOnDone(local_cluster, look))
    print(f"dashboard screenshot: {screenshot}")
    assert seen["title"] == "Dask: Status"
    with Image.open(screenshot) as image:
        assert image.size == (1280, 900)
        # The plots are drawn, not only the navigation bar on a blank page.
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 50


@needs_chromium
def test_browser_shows_the_whole_run_s_progress_across_waves(
    oracle: Config,
    local_cluster: DistributedExecutor,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from playwright.sync_api import sync_playwright

    monkeypatch.setattr(stages, "PUBLISH_INTERVAL", 0.0)  # every task, for exact counts
    # Waves of 2 tasks: the scheduler never knows more than 4 of the run's 17 (16 of cubes,
    # one of recipes).
    waves = DistributedExecutor(local_cluster.client, wave=2)
    config = distributed_config(oracle, tmp_path)
    seen: list[tuple[str, str]] = []
    with sync_playwright() as playwright:
        browser = chromium(playwright)
        page = browser.new_page()

        def look(client: Client) -> None:
            if not seen:
                page.goto(page_link(client.dashboard_link), timeout=60_000)
            tasks = (3, 12)[len(seen)]
            # The page refreshes itself every second from what the driver published.
            page.wait_for_function(
                f"document.getElementById('tasks').textContent === '{tasks} of 17'",
                timeout=30_000,
            )
            seen.append((page.locator("#made").inner_text(), page.locator("#left").inner_text()))

        jobs.sample(config, show_progress=False, executor=ActOnDone(waves, look, at=(3, 12)))
        browser.close()
    made = [re.fullmatch(r"(\d+) of 64 cubes \(.*%\)", text) for text, _ in seen]
    # 4 cubes a task, and the recipes' task among the first 3 or not.
    assert made[0] and int(made[0][1]) in (8, 12), seen
    assert made[1] and int(made[1][1]) in (44, 48), seen
    assert all(left.endswith(" s") for _, left in seen), seen


def test_a_frame_s_rows_beyond_the_budget_are_refused_on_threads(
    oracle: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = psutil.virtual_memory()._replace(available=100)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: memory)
    config = Config.model_validate(
        {**oracle.model_dump(), "out": str(tmp_path / "cubes.zarr"), "scheduler": "threads"}
    )
    with pytest.raises(UserError, match=r"more than a worker thread's share of the source"):
        jobs.sample(config, show_progress=False)
    assert not Path(config.out).exists()


def test_a_run_s_cluster_is_not_dask_s_default(local_cluster: DistributedExecutor) -> None:
    # Other computations of the process (a reader's .compute()) stay on their scheduler.
    from distributed import default_client

    with pytest.raises(ValueError, match="No clients found"):
        default_client()
    assert da.ones(4).sum().compute() == 4


def test_workers_keep_glibc_s_dynamic_mmap_threshold(oracle: Config, tmp_path: Path) -> None:
    # MALLOC_TRIM_THRESHOLD_ fixes glibc's mmap threshold: every large buffer page-faults.
    # A cluster with dask's defaults first: its nanny leaves the variable in this process.
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=DASHBOARD):
        pass
    with jobs.executor_for(distributed_config(oracle, tmp_path)) as executor:
        assert isinstance(executor, DistributedExecutor)
        trims = executor.client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert set(trims.values()) == {None}, trims
