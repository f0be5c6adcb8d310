"""Worker checks: before the first task, every worker must see the stores a stage reads
and the store it writes (by the lease this run holds on it)."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from daskcubes.errors import UserError
from daskcubes.io.lease import Holder, Lease, lease_file, lease_url
from daskcubes.io.storage import Storage
from daskcubes.runtime.executors import Executor

#: What works where the workers cannot see a store.
SHARED_STORAGE = (
    "give stores as object-store URLs (s3://...) or paths on a filesystem every worker mounts"
)


def _worker_sees(
    output: tuple[str, str, str] | None,
    inputs: Sequence[tuple[str, str]],
    storage: Storage,
    cluster: str,
) -> None:
    """In a worker: raise :class:`UserError` unless it sees each input ``(what, url)`` and
    the lease of the ``output`` store ``(what, url, run id)`` this run holds."""
    worker = f"the worker on {socket.gethostname()}, process {os.getpid()}"
    for what, url in inputs:
        if not storage.exists(url):
            raise UserError(
                f"{what} '{url}': the workers of {cluster} cannot see it ({worker} finds "
                f"nothing there); {SHARED_STORAGE}"
            )
    if output is None:
        return
    what, url, run = output
    file = lease_file(url, storage)
    found = file.read() if file is not None else None
    if found is None or Holder.from_bytes(found[0]).run != run:
        raise UserError(
            f"{what} '{url}': the workers of {cluster} cannot see the store this run writes "
            f"({worker} does not find its lease {lease_url(url)}); {SHARED_STORAGE}"
        )


def check_workers_see(
    executor: Executor,
    lease: Lease,
    inputs: Sequence[tuple[str, str]],
    storage: Storage,
    cluster: str,
) -> None:
    """Before the first task: check from every worker of ``executor`` that it sees the
    store this run writes (by its lease) and each input ``(what, url)`` it reads."""
    output = (lease.what, lease.url, lease.holder.run) if lease.file is not None else None
    executor.on_each_worker(_worker_sees, output, list(inputs), storage, cluster)
