"""Executors: run a dask graph's tasks and report each one as it finishes.

An executor never knows what a cube is: it gets a graph, the keys whose completion
matters, and a callback. :func:`create_executor` builds one from its name and options
(``sync``, ``threads``, ``processes``, ``distributed``), for a whole run, so that every
stage shares one cluster; ``close()`` lets go of what it started. The single-threaded
``sync`` executor is the test oracle: every other executor must produce byte-identical
stores.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any, Protocol

import dask
import dask.local
import dask.multiprocessing
import dask.threaded
import psutil
from dask.callbacks import Callback
from dask.core import keys_in_tasks
from dask.highlevelgraph import HighLevelGraph
from dask.optimization import cull
from dask.typing import Key

from daskcubes.errors import UserError

if TYPE_CHECKING:  # imported lazily elsewhere: local runs never start distributed
    from distributed import Client, LocalCluster

OnDone = Callable[[Key], None]

_LOCAL_GETS = {
    "sync": dask.local.get_sync,
    "threads": dask.threaded.get,
    "processes": dask.multiprocessing.get,
}


def needed(dsk: Mapping[Key, Any], keys: Sequence[Key]) -> dict[Key, Any]:
    """The tasks of ``dsk`` that ``keys`` need: a resumed run asks for part of a graph,
    and dask's schedulers run every task they are given."""
    graph = dsk if isinstance(dsk, dict) else dict(dsk)
    if graph.keys() == set(keys):  # a whole graph (a run's start): culling keeps all of it
        return graph
    culled, _ = cull(graph, list(keys))
    return culled


#: Batches of tasks each worker (thread) gets at least, in a run of many tasks.
BATCHES_PER_WORKER = 128
#: Tasks a worker of dask's local schedulers runs in one batch at most.
MOST_IN_BATCH = 16
#: Tasks in one batch of a cluster's at most: its scheduling costs ten times a local
#: scheduler's a batch. Measured, a million tiny cubes on a 2 x 1 LocalCluster (three
#: runs each, medians): 13.6 s in batches of 16, 10.1 s in batches of 64.
MOST_IN_CLUSTER_BATCH = 64


def tasks_per_batch(n_tasks: int, workers: int, most: int = MOST_IN_BATCH) -> int:
    """How many tasks a worker gets at once: the ``chunksize`` of dask's local schedulers,
    the batches of :class:`DistributedExecutor`; ``workers`` is the threads that run them.

    One at a time, each task costs the scheduler's thread a wake-up and a hand-off of
    the GIL both ways; for tasks of a fraction of a millisecond (a million tiny cubes,
    62,500 tasks) that doubled a task's time (BENCHMARKS.md). Batches of up to ``most``
    tasks amortise it, while each worker still gets at least
    :data:`BATCHES_PER_WORKER` batches: the last batch leaves a worker idle for at most
    1/128 of the run, and a killed run redoes at most a batch per worker.
    """
    return max(1, min(most, n_tasks // (workers * BATCHES_PER_WORKER)))


class Executor(Protocol):
    #: Where the tasks run, as messages name it ("this threads run", a scheduler's address).
    @property
    def where(self) -> str: ...

    def close(self) -> None: ...

    def run(self, dsk: Mapping[Key, Any], keys: Sequence[Key], on_done: OnDone) -> None:
        """Compute ``keys`` of ``dsk`` (results discarded), calling ``on_done(key)`` for each."""

    def worker_memory(self) -> int:
        """Bytes of memory the smallest worker may use."""

    def on_each_worker(self, function: Callable[..., object], *args: Any) -> None:
        """Call ``function(*args)`` once in every worker process it can reach (results
        discarded): to load what every task needs before the tasks are timed."""

    def worker_threads(self) -> int:
        """Threads of the busiest worker: tasks it may run at once."""

    def publish(self, progress: dict[str, Any]) -> None:
        """Show a run's progress (a JSON-able record) where people watch the cluster."""


def _nothing(*results: object) -> None:
    """A batch's own task: its arguments, the batch's tasks, have run by the time it is called."""


class _Report(Callback):
    """Calls ``on_done`` in the scheduler's own thread when a watched task finishes."""

    def __init__(self, watched: set[Key], on_done: OnDone) -> None:
        super().__init__()
        self._watched = watched
        self._on_done = on_done

    def _posttask(self, key: Key, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if key in self._watched:
            self._on_done(key)


@dataclass(frozen=True)
class LocalExecutor:
    """One of Dask's local schedulers: ``sync``, ``threads`` or ``processes``.

    ``workers`` is the number of threads or processes; ``None`` means one per core.
    """

    scheduler: str = "threads"
    workers: int | None = None

    @property
    def where(self) -> str:
        return f"this {self.scheduler} run"

    def close(self) -> None:
        """Nothing to let go of: dask's local schedulers start their pools per run."""

    def run(self, dsk: Mapping[Key, Any], keys: Sequence[Key], on_done: OnDone) -> None:
        get = _LOCAL_GETS[self.scheduler]
        options: dict[str, Any] = {}
        if self.scheduler != "sync":  # the oracle runs one task after another, as given
            workers = self.workers or os.cpu_count() or 1
            options = {"num_workers": workers, "chunksize": tasks_per_batch(len(keys), workers)}
        with _Report(set(keys), on_done):
            get(needed(dsk, keys), list(keys), **options)

    def on_each_worker(self, function: Callable[..., object], *args: Any) -> None:
        """In this process for ``sync`` and ``threads``; ``processes`` starts its pool anew
        for every run, so each process loads what it needs in its first task."""
        if self.scheduler != "processes":
            function(*args)

    def worker_memory(self) -> int:
        """The machine's available memory, shared by the processes of ``processes``."""
        available: int = psutil.virtual_memory().available
        if self.scheduler != "processes":
            return available  # threads share one process, and so its memory
        return available // (self.workers or os.cpu_count() or 1)

    def worker_threads(self) -> int:
        if self.scheduler != "threads":
            return 1
        return self.workers or os.cpu_count() or 1

    def publish(self, progress: dict[str, Any]) -> None:
        """Nothing to publish to: the terminal's progress bar shows the run."""


@dataclass(frozen=True)
class DistributedExecutor:
    """A dask.distributed cluster, reached through ``client``.

    Tasks go to the cluster in waves of ``wave`` keys (with the tasks they need), the
    next wave as soon as fewer than ``wave`` are left in flight, and each future is
    released as it finishes: the scheduler and the driver hold at most two waves of
    tasks, whatever the run's task count. A task that keys of two waves both need is
    computed in each; pure tasks make that safe. Tasks that need no other go in batches
    of :func:`tasks_per_batch` (up to :data:`MOST_IN_CLUSTER_BATCH`), as dask's local
    schedulers hand them to their workers; a batch is one task of the cluster's, run
    again whole if its worker dies.
    """

    client: Client
    where: str = "this distributed run"
    wave: int = 1000
    #: Seconds to wait for a first worker to join a cluster that has none yet.
    join_timeout: float = 60
    #: What this executor started (a cluster, its client, a report): closed by close().
    started: ExitStack = field(default_factory=ExitStack, compare=False)

    def close(self) -> None:
        """Close what this executor started, in reverse: the report, the client, then
        the cluster (its workers, then its scheduler), so that no worker is left
        heartbeating to a closed scheduler. A client given to it is left running."""
        self.started.close()

    def publish(self, progress: dict[str, Any]) -> None:
        from daskcubes.runtime.dashboard import METADATA_KEY

        self.client.set_metadata(METADATA_KEY, progress)

    def run(self, dsk: Mapping[Key, Any], keys: Sequence[Key], on_done: OnDone) -> None:
        from distributed import Future, as_completed

        graph = dict(dsk)
        # Tasks that need no other task's result go to the cluster in batches, each one
        # task of the cluster's that runs them one after another: the scheduler's own
        # work for a task (0.35 ms of the driver's CPU, measured on a LocalCluster with
        # tasks that do nothing) is then paid once a batch.
        independent = not keys_in_tasks(graph, [graph[key] for key in keys])
        threads = sum(w["nthreads"] for w in self._workers())
        size = tasks_per_batch(len(keys), threads, MOST_IN_CLUSTER_BATCH) if independent else 1
        todo = iter(keys)
        running: dict[Key, tuple[Future, list[Key]]] = {}
        in_flight = 0
        finished = as_completed(loop=self.client.loop)

        def submit_wave() -> None:
            nonlocal in_flight
            wave = list(islice(todo, self.wave))
            if not wave:
                return
            # A dict graph would be tokenized whole by the client to name it (about 0.25
            # ms a task, each task's arguments normalized); a high-level graph is named by
            # its layer's name, which only needs to be unique.
            layer = f"daskcubes-wave-{uuid.uuid4().hex}"
            if size == 1:
                batches = {key: [key] for key in wave}
                tasks = needed(graph, wave)
            else:  # a batch's tasks are its task's arguments: dask runs them on the worker
                batches = {(layer, i): wave[i : i + size] for i in range(0, len(wave), size)}
                tasks = {
                    batch: (_nothing, *(graph[key] for key in batch_keys))
                    for batch, batch_keys in batches.items()
                }
            graph_of_wave = HighLevelGraph.from_collections(layer, tasks)
            for future in self.client.get(graph_of_wave, list(batches), sync=False):
                running[future.key] = (future, batches[future.key])
                finished.add(future)
            in_flight += len(wave)

        try:
            submit_wave()
            submit_wave()  # a second wave queued, so that workers never wait for the next
            # In batches: the futures that finished since the last look, so that this
            # thread wakes once for many tasks rather than once for each.
            for done in finished.batches():
                for future in done:
                    # Only a failed (or cancelled) task's result is asked for, to raise its
                    # error here: asking for every result would cost a round trip to the
                    # worker holding it, one task at a time.
                    if future.status != "finished":
                        future.result()
                    _, batch_keys = running.pop(future.key)
                    for key in batch_keys:
                        on_done(key)
                    in_flight -= len(batch_keys)
                    # Released, not cancelled: cancelling n keys costs the scheduler n^2
                    # (distributed releases every key once per key).
                    future.release()
                if in_flight < self.wave:
                    submit_wave()
        finally:
            for future, _ in running.values():  # on error, the scheduler forgets the rest
                future.release()

    def on_each_worker(self, function: Callable[..., object], *args: Any) -> None:
        self.client.run(function, *args)

    def _workers(self) -> list[dict[str, Any]]:
        """The cluster's workers, once at least one has joined: a cluster still starting
        would otherwise look like one without memory limits."""
        try:
            self.client.wait_for_workers(1, timeout=self.join_timeout)
        except TimeoutError:
            raise UserError(
                f"scheduler '{self.client.scheduler_info()['address']}': no worker joined within "
                f"{self.join_timeout:.0f} s"
            ) from None
        return list(self.client.scheduler_info(n_workers=-1)["workers"].values())

    def worker_memory(self) -> int:
        """The smallest dask ``memory_limit`` of the cluster's workers; a worker without
        one may use the machine's available memory."""
        available: int = psutil.virtual_memory().available
        return min(w["memory_limit"] or available for w in self._workers())

    def worker_threads(self) -> int:
        return max(w["nthreads"] for w in self._workers())


#: Loggers of dask's cluster, of its web server and of the dashboard.
DASK_LOGGERS = ("distributed", "tornado", "bokeh")


class DaskLogFile(logging.Handler):
    """Appends the warnings of dask's loggers to ``path``.

    Not a ``StreamHandler``: LocalCluster's ``silence_logs`` turns those down.
    """

    def __init__(self, path: str) -> None:
        super().__init__(logging.WARNING)
        self.path = path
        self._file = logging.FileHandler(path, delay=True)  # no file until a warning
        self._file.setFormatter(
            logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s: %(message)s")
        )

    def emit(self, record: logging.LogRecord) -> None:
        self._file.emit(record)

    def close(self) -> None:
        self._file.close()
        super().close()


@contextmanager
def dask_logs_to(path: str) -> Iterator[None]:
    """Within the block, dask's log records go to the file ``path``, not to stderr.

    A successful cluster run logs warnings that are not the user's business (a worker's
    heartbeat racing its own shutdown, a browser leaving the dashboard); real failures
    reach the user as the errors of the tasks they stop.
    """
    handler = DaskLogFile(path)
    loggers = [logging.getLogger(name) for name in DASK_LOGGERS]
    saved = [(logger.handlers, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers, logger.propagate = [handler], False
    try:
        yield
    finally:
        for logger, (handlers, propagate) in zip(loggers, saved, strict=True):
            logger.handlers, logger.propagate = handlers, propagate
        handler.close()


def _dask_log_file() -> str | None:
    """The file dask's logs go to, if :func:`dask_logs_to` is in force."""
    handlers = logging.getLogger("distributed").handlers
    return next((h.path for h in handlers if isinstance(h, DaskLogFile)), None)


def _connect(address: str, timeout: int) -> Client:
    from distributed import Client

    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, ValueError) as exc:  # refused, timed out, or not an address
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"scheduler '{address}': cannot connect within {timeout} s ({reason})"
        ) from None


def _add_page(client: Client) -> None:
    """The run's page on a cluster daskcubes did not start, through a scheduler plugin."""
    from daskcubes.runtime.dashboard import ProgressPage

    try:  # the page needs daskcubes where the scheduler runs; the run does not
        client.register_plugin(ProgressPage())
    except Exception as exc:  # any failure to unpickle or to start it there
        logging.getLogger("distributed").warning("no daskcubes dashboard page: %s", exc)


def _local_cluster(
    workers: int | None, threads_per_worker: int | None, dashboard_address: str
) -> LocalCluster:
    from distributed import LocalCluster

    # dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536, which also turns off
    # glibc's dynamic mmap threshold: each large buffer of a cut and of its write is then
    # mapped afresh and page-faulted. Measured on a sampling run at the article's shapes:
    # 10x the page faults and 1.6x the CPU time of the same run without it.
    trim = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
    # Nannies also write their pre-spawn variables into this process's environment, which
    # every later worker inherits: drop what an earlier cluster of this process left there.
    if os.environ.get("MALLOC_TRIM_THRESHOLD_") == str(dask.config.get(trim, None)):
        del os.environ["MALLOC_TRIM_THRESHOLD_"]
    # The scheduler's root-task queuing (worker-saturation 1.1) holds a task back until its
    # worker has a free thread, so that a worker with one thread runs a task, reports it,
    # then waits a round trip through the scheduler (with its batching delays) for the next:
    # 4 ms a task, measured, for tasks of 1 ms. Without it each worker gets its share of
    # a wave at once; the waves of DistributedExecutor.run already bound what is queued.
    saturation = "distributed.scheduler.worker-saturation"
    # The run's page is mounted beside Dask's own, as distributed mounts its pages.
    routes = "distributed.scheduler.http.routes"
    pages = [*dask.config.get(routes), "daskcubes.runtime.dashboard"]
    with dask.config.set({trim: None, saturation: math.inf, routes: pages}):
        return LocalCluster(
            # Worker processes print dask's warnings to stderr unless silenced; their real
            # failures reach the driver as task errors.
            silence_logs=logging.CRITICAL if _dask_log_file() else logging.WARNING,
            n_workers=workers,
            threads_per_worker=threads_per_worker,
            processes=True,  # process workers under Nannies, which restart a worker that dies
            host="127.0.0.1",
            dashboard_address=dashboard_address,
        )


#: The executors :func:`create_executor` knows, by name.
EXECUTORS = (*_LOCAL_GETS, "distributed")


def create_executor(name: str, **options: Any) -> Executor:
    """The executor called ``name``, built from ``options``.

    - ``sync``, ``threads``, ``processes``: Dask's local schedulers; ``workers`` threads
      or processes (default: one per core).
    - ``distributed``: ``client``, a ``distributed.Client`` used as it is (and left
      running); or ``address``, a scheduler to connect to (within ``connect_timeout``
      seconds); or neither, a LocalCluster of ``workers`` processes of
      ``threads_per_worker`` threads with its dashboard at ``dashboard_address``.
      ``report`` saves Dask's performance report of the run to that HTML file. The
      client is not made dask's default (the caller's own computations stay where they
      were), and the dashboard's link is printed.

    Raises ``ValueError`` for an unknown name. Call ``close()`` when done.
    """
    if name in _LOCAL_GETS:
        return LocalExecutor(name, **options)
    if name == "distributed":
        return _distributed(**options)
    raise ValueError(
        f"Unrecognized executor name: {name!r}; expected one of {', '.join(EXECUTORS)}"
    )


def _distributed(
    client: Client | None = None,
    address: str | None = None,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    dashboard_address: str = "127.0.0.1:8787",
    connect_timeout: int = 20,
    report: str | None = None,
) -> DistributedExecutor:
    from distributed import Client, performance_report

    from daskcubes.runtime.dashboard import page_link

    # What is started here is closed at once if a later step fails, else by close().
    with ExitStack() as stack:
        if client is not None:
            where = str(client.scheduler_info()["address"])
            _add_page(client)
        elif address is not None:
            client = stack.enter_context(_connect(address, connect_timeout))
            where = address
            _add_page(client)
        else:
            cluster = stack.enter_context(
                _local_cluster(workers, threads_per_worker, dashboard_address)
            )
            client = stack.enter_context(Client(cluster, set_as_default=False))
            where = "this distributed run"
        log_file = _dask_log_file()
        logs = f" (dask's warnings: {log_file})" if log_file else ""
        page = page_link(client.dashboard_link)
        print(
            f"daskcubes: Dask dashboard {client.dashboard_link}, the run's progress {page}{logs}",
            file=sys.stderr,
        )
        if report:
            # The report asks for the current client: ours, for its duration only.
            stack.enter_context(client.as_current())
            # BokehJS embedded, so that the report renders on nodes without internet.
            stack.enter_context(performance_report(filename=report, mode="inline"))
        return DistributedExecutor(client, where, started=stack.pop_all())
