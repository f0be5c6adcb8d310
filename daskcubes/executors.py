"""Executors: run a dask graph's tasks and report each one as it finishes.

An executor never knows what a cube is: it gets a graph, the keys whose completion
matters, and a callback. The single-threaded ``sync`` executor is the test oracle:
every other executor must produce byte-identical stores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dask.local
import dask.multiprocessing
import dask.threaded
from dask.callbacks import Callback
from dask.typing import Key

from daskcubes.errors import UserError

OnDone = Callable[[Key], None]

_LOCAL_GETS = {
    "sync": dask.local.get_sync,
    "threads": dask.threaded.get,
    "processes": dask.multiprocessing.get,
}


class _Report(Callback):
    """Calls ``on_done`` in the scheduler's own thread when a watched task finishes."""

    def __init__(self, watched: set[Key], on_done: OnDone) -> None:
        super().__init__()
        self._watched = watched
        self._on_done = on_done

    def _posttask(self, key: Key, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if key in self._watched:
            self._on_done(key)


def run_graph(
    dsk: Mapping[Key, Any],
    keys: Sequence[Key],
    on_done: OnDone,
    *,
    scheduler: str = "threads",
    workers: int | None = None,
) -> None:
    """Compute ``keys`` of ``dsk`` on a local dask scheduler, discarding their results.

    Parameters
    ----------
    dsk : the task graph.
    keys : tasks to run (with their dependencies); ``on_done(key)`` is called for each.
    scheduler : ``sync``, ``threads`` or ``processes``.
    workers : threads or processes; ``None`` means one per core.
    """
    try:
        get = _LOCAL_GETS[scheduler]
    except KeyError:
        raise UserError(
            f"scheduler: '{scheduler}'; expected one of {', '.join(_LOCAL_GETS)}"
        ) from None
    options: dict[str, Any] = {} if scheduler == "sync" else {"num_workers": workers}
    with _Report(set(keys), on_done):
        get(dict(dsk), list(keys), **options)
