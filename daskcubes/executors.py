"""Executors: run a dask graph's tasks and report each one as it finishes.

An executor never knows what a cube is: it gets a graph, the keys whose completion
matters, and a callback. :func:`open_executor` makes one from a :class:`Config` for a
whole run, so that every stage shares one cluster. The single-threaded ``sync``
executor is the test oracle: every other executor must produce byte-identical stores.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import dask.local
import dask.multiprocessing
import dask.threaded
from dask.callbacks import Callback
from dask.optimization import cull
from dask.typing import Key

from daskcubes.config import Config
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
    culled, _ = cull(dict(dsk), list(keys))
    return culled


class Executor(Protocol):
    def run(self, dsk: Mapping[Key, Any], keys: Sequence[Key], on_done: OnDone) -> None:
        """Compute ``keys`` of ``dsk`` (results discarded), calling ``on_done(key)`` for each."""


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

    def run(self, dsk: Mapping[Key, Any], keys: Sequence[Key], on_done: OnDone) -> None:
        get = _LOCAL_GETS[self.scheduler]
        options: dict[str, Any] = {} if self.scheduler == "sync" else {"num_workers": self.workers}
        with _Report(set(keys), on_done):
            get(needed(dsk, keys), list(keys), **options)


@dataclass(frozen=True)
class DistributedExecutor:
    """A dask.distributed cluster, reached through ``client``."""

    client: Client

    def run(self, dsk: Mapping[Key, Any], keys: Sequence[Key], on_done: OnDone) -> None:
        from distributed import as_completed

        futures = self.client.get(needed(dsk, keys), list(keys), sync=False)
        try:
            for future in as_completed(futures):
                future.result()  # a failed task raises its error here
                on_done(future.key)
        finally:
            self.client.cancel(futures)  # on error, stop what is still queued


def _connect(address: str, timeout: int) -> Client:
    from distributed import Client

    try:
        return Client(address, timeout=timeout)
    except (OSError, ValueError) as exc:  # refused, timed out, or not an address
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"scheduler '{address}': cannot connect within {timeout} s ({reason})"
        ) from None


def _local_cluster(config: Config) -> LocalCluster:
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=config.workers,
        threads_per_worker=config.threads_per_worker,
        processes=True,  # process workers under Nannies, which restart a worker that dies
        host="127.0.0.1",
        dashboard_address=config.dashboard_address,
    )


@contextmanager
def open_executor(config: Config, reuse: Executor | None = None) -> Iterator[Executor]:
    """The executor ``config`` asks for, open for the duration of the ``with`` block.

    A distributed run starts a LocalCluster (or connects to ``cluster_address``), prints
    the dashboard link, saves the performance report on exit when ``config.report`` is
    set, and closes what it started. ``reuse``, if given, is yielded as it is.
    """
    if reuse is not None:
        yield reuse
        return
    if not config.distributed:
        yield LocalExecutor(config.scheduler, config.workers)
        return
    from distributed import Client, performance_report

    address = config.cluster_address
    with ExitStack() as stack:
        if address is None:
            cluster = stack.enter_context(_local_cluster(config))
            client = stack.enter_context(Client(cluster))
        else:
            client = stack.enter_context(_connect(address, config.connect_timeout))
        print(f"daskcubes: Dask dashboard {client.dashboard_link}", file=sys.stderr)
        if config.report:
            stack.enter_context(performance_report(filename=config.report))
        yield DistributedExecutor(client)
