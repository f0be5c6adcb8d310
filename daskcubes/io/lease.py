"""One writer per store: the lease a run holds on the store it writes, in the storage itself.

The lease is a small JSON object beside the store (``STORE.lease``) that names its holder
(host, process, run id, start time) and when it expires. It is created with a
conditional write, so that of two runs only one can create it: an exclusive create on a
local or shared filesystem (a hard link, which fails where the name exists), and
``If-None-Match: *`` on S3. The holder renews it from a background thread (a write
conditional on its ETag on S3) while it runs; a run that dies leaves it to expire.

A second run is refused while the lease is alive; once it has expired (or at once, with
``break_lease``) the lease is taken over, again by a conditional write. A lease left by a
process of this machine that is gone (killed, or ended by an outage that kept it from
deleting its lease) is taken over at once: the lease names the machine by host name,
boot and process namespace, so that its process id means the same here. Expiry is judged
by the clocks of the two machines, which must agree to well within ``lease_seconds``.
A local store is also guarded by the ``flock`` of :func:`daskcubes.io.layout.store_lock`.

Storage without conditional writes (``memory://``, ``gs://`` through fsspec, ...) is
refused for writing unless ``write_without_lease`` is set.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import psutil
from fsspec.asyn import sync

from daskcubes.errors import UserError
from daskcubes.io.layout import now, store_lock
from daskcubes.io.storage import Storage, local_path, protocol

#: Protocols whose storage offers the conditional writes a lease needs.
LEASED_PROTOCOLS = ("file", "s3", "s3a")


def lease_url(url: str) -> str:
    """Where the lease of the store at ``url`` lives: beside it, as ``STORE.lease``."""
    return f"{url.rstrip('/')}.lease"


def _clock(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def this_machine() -> str:
    """This machine and process namespace: where a process id names one process."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # not Linux: the host name alone
        return socket.gethostname()
    return f"{socket.gethostname()}/{boot}/{namespace}"


def _process_started(pid: int) -> float:
    """When process ``pid`` of this machine started; 0 if there is none."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, and until when (``expires``, seconds since the epoch)."""

    host: str
    pid: int
    run: str
    started: str
    expires: float
    machine: str = ""
    #: When its process started, as this machine's process table says.
    process_started: float = 0.0

    def to_bytes(self) -> bytes:
        return json.dumps({**asdict(self), "expires at": _clock(self.expires)}).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Holder:
        """The holder a lease names; an unreadable lease names no one, long expired."""
        try:
            fields = json.loads(data)
            return cls(
                str(fields["host"]),
                int(fields["pid"]),
                str(fields["run"]),
                str(fields["started"]),
                float(fields["expires"]),
                str(fields.get("machine", "")),
                float(fields.get("process_started", 0.0)),
            )
        except (ValueError, KeyError, TypeError):
            return cls("?", 0, "", "?", 0.0)

    def describe(self) -> str:
        return f"host {self.host}, process {self.pid}, started {self.started}"

    def gone(self) -> bool:
        """Whether this holder was a process of this machine that no longer runs."""
        if self.machine != this_machine():
            return False
        return _process_started(self.pid) != self.process_started


#: What a lease file was when read: its content (local) or its ETag (S3).
Token = Any


class LeaseFile(Protocol):
    """Conditional operations on one lease object."""

    def create(self, data: bytes) -> Token:
        """Write ``data`` if nothing is there (else raise FileExistsError); its token."""

    def read(self) -> tuple[bytes, Token] | None:
        """The content and token, or None if there is no lease."""

    def replace(self, data: bytes, token: Token) -> Token | None:
        """Write ``data`` if the lease is still as ``token`` says; its new token, or None."""

    def delete(self, token: Token) -> None:
        """Delete the lease if it is still as ``token`` says."""


@dataclass(frozen=True)
class LocalLeaseFile:
    """A lease on a local or shared filesystem. It is created whole under a temporary name,
    then hard-linked to its own: the link fails where the name exists, even over NFS."""

    path: Path

    def _written(self, data: bytes) -> Path:
        partial = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.partial")
        partial.write_bytes(data)
        return partial

    def create(self, data: bytes) -> Token:
        partial = self._written(data)
        try:
            os.link(partial, self.path)
        finally:
            partial.unlink()
        return data

    def read(self) -> tuple[bytes, Token] | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return data, data

    def replace(self, data: bytes, token: Token) -> Token | None:
        # Read, compare, rename: the flock of this host's runs covers the gap between.
        found = self.read()
        if found is None or found[1] != token:
            return None
        self._written(data).replace(self.path)
        return data

    def delete(self, token: Token) -> None:
        found = self.read()
        if found is not None and found[1] == token:
            self.path.unlink(missing_ok=True)


def _precondition_failed(error: BaseException) -> bool:
    """Whether an S3 request failed because its If-Match / If-None-Match did not hold."""
    if isinstance(error, FileExistsError):
        return True
    for cause in (error, error.__cause__):
        response = getattr(cause, "response", None)
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return status in (409, 412) or response.get("Error", {}).get("Code") in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
            )
    return False


@dataclass(frozen=True)
class S3LeaseFile:
    """A lease on S3 (or an S3-compatible server), written with ``If-None-Match: *`` and
    ``If-Match: ETAG``, read with its ETag in one request."""

    url: str
    storage: Storage

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        fs, inner = self.storage.filesystem(self.url)
        bucket, key = inner.split("/", 1)

        async def call() -> dict[str, Any]:
            answer: dict[str, Any] = await fs._call_s3(method, Bucket=bucket, Key=key, **kwargs)
            if "Body" in answer:
                async with answer["Body"] as body:
                    answer["Body"] = await body.read()
            return answer

        return self.storage.retrying(self.url, lambda: sync(fs.loop, call))

    def create(self, data: bytes) -> Token:
        try:
            return self._call("put_object", Body=data, IfNoneMatch="*")["ETag"]
        except OSError as error:
            if _precondition_failed(error):
                raise FileExistsError(self.url) from None
            raise

    def read(self) -> tuple[bytes, Token] | None:
        try:
            answer = self._call("get_object")
        except FileNotFoundError:
            return None
        return answer["Body"], answer["ETag"]

    def replace(self, data: bytes, token: Token) -> Token | None:
        try:
            return self._call("put_object", Body=data, IfMatch=token)["ETag"]
        except OSError as error:  # gone (FileNotFoundError), or changed since ``token``
            if isinstance(error, FileNotFoundError) or _precondition_failed(error):
                return None
            raise

    def delete(self, token: Token) -> None:
        with suppress(FileNotFoundError):
            try:
                self._call("delete_object", IfMatch=token)
            except OSError as error:
                if not _precondition_failed(error):
                    raise


class Lease:
    """The lease of one run on the store at ``url`` (``file`` None: held without one)."""

    def __init__(self, url: str, what: str, file: LeaseFile | None, seconds: float) -> None:
        self.url, self.what, self.file, self.seconds = url, what, file, seconds
        self.holder = Holder(
            socket.gethostname(),
            os.getpid(),
            uuid.uuid4().hex,
            now(),
            time.time() + seconds,
            this_machine(),
            _process_started(os.getpid()),
        )
        self._data = self.holder.to_bytes()
        self._token: Token = None
        self._lost: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew_until_stopped, daemon=True)

    def acquire(self, break_lease: bool) -> None:
        """Create the lease, or take over one that has expired, whose process is gone, or
        (with ``break_lease``) any."""
        assert self.file is not None
        for _ in range(5):  # only as many tries as other runs racing for it need
            try:
                self._token = self.file.create(self._data)
                break
            except FileExistsError:
                pass
            found = self.file.read()
            if found is None:
                continue  # released in between
            data, token = found
            if data == self._data:  # our own create, whose answer was lost and retried
                self._token = token
                break
            other = Holder.from_bytes(data)
            if not (time.time() > other.expires or other.gone() or break_lease):
                raise UserError(self._refusal(other))
            self._token = self.file.replace(self._data, token)
            if self._token is not None:
                break
        else:
            raise UserError(f"{self.what} '{self.url}': other runs keep taking its lease")
        self._renewer.start()

    def _refusal(self, other: Holder) -> str:
        return (
            f"{self.what} '{self.url}': another daskcubes run is writing it ({other.describe()}; "
            f"its lease {lease_url(self.url)} expires {_clock(other.expires)} unless renewed). "
            "Wait for it to finish; if it died, run again with --resume once its lease has "
            "expired, or with --break-lease at once (two runs writing one store corrupt it)"
        )

    def _renew_until_stopped(self) -> None:
        """Renew every third of the lease's life; give up once it has expired unrenewed."""
        while not self._stop.wait(self.seconds / 3):
            holder = replace(self.holder, expires=time.time() + self.seconds)
            try:
                with self._lock:
                    if self._lost is not None:
                        return
                    data = holder.to_bytes()
                    token = self.file.replace(data, self._token)  # type: ignore[union-attr]
                    found = self.file.read() if token is None else None  # type: ignore[union-attr]
                    if found is not None and found[0] == data:
                        token = found[1]  # our renewal, whose answer was lost and retried
                    if token is None:
                        self._lost = "another run took it over"
                        return
                    self.holder, self._data, self._token = holder, data, token
            except Exception as error:  # a thread's error reaches no one: the check reports it
                if time.time() > self.holder.expires:
                    self._lost = f"it expired while it could not be renewed: {error}"
                    return

    def check(self) -> None:
        """Raise :class:`UserError` if the lease is lost (or expired unrenewed)."""
        if self.file is None:
            return
        lost = self._lost
        if lost is None and time.time() > self.holder.expires:
            lost = "it expired while it could not be renewed"
        if lost is not None:
            raise UserError(
                f"{self.what} '{self.url}': this run lost its lease ({lost}), so it stopped "
                "writing and did not mark the store complete; run the same command with "
                "--resume to finish it"
            )

    def confirm(self) -> None:
        """Check in the storage itself that the lease is still this run's: done just before
        the store is marked complete, so that a run that lost it never does that."""
        if self.file is None:
            return
        with self._lock:
            found = self.file.read()
            if found is None or found[1] != self._token:
                self._lost = self._lost or "another run took it over"
        self.check()

    def release(self) -> None:
        if self.file is None:
            return
        self._stop.set()
        # A renewal may be retrying through an outage: the lease is then left to expire,
        # rather than the run's end waiting for the storage's retry budget once more.
        if not self._lock.acquire(timeout=1):
            return
        try:
            with suppress(OSError, UserError):
                self.file.delete(self._token)
        finally:
            self._lock.release()


def lease_file(url: str, storage: Storage) -> LeaseFile | None:
    where = lease_url(url)
    path = local_path(where)
    if path is not None:
        return LocalLeaseFile(Path(os.path.abspath(path)))
    if protocol(url) in ("s3", "s3a"):
        return S3LeaseFile(where, storage)
    return None


@dataclass(frozen=True)
class LeaseTerms:
    """The lease a run holds on the store it writes: ``seconds`` it lasts unless renewed;
    ``break_lease`` takes over another run's at once; ``without_lease`` writes storage
    that offers no conditional write, unguarded."""

    seconds: float = 60
    break_lease: bool = False
    without_lease: bool = False


@contextmanager
def hold_lease(url: str, what: str, storage: Storage, terms: LeaseTerms) -> Iterator[Lease]:
    """Hold the lease of the store at ``url`` for the ``with`` block, or raise
    :class:`UserError` naming who holds it, before anything is written."""
    storage.check_reachable(url, what)
    file = lease_file(url, storage)
    if file is None and not terms.without_lease:
        raise UserError(
            f"{what} '{url}': {protocol(url)}:// offers no conditional write, so nothing "
            "would stop a second run from writing this store at the same time and corrupting "
            "it; write to a local path or s3://, or pass --write-without-lease if no other "
            "run can write it"
        )
    lease = Lease(url, what, file, terms.seconds)
    with ExitStack() as stack:
        if local_path(url) is not None:
            stack.enter_context(store_lock(url, what))
        if file is not None:
            lease.acquire(terms.break_lease)
            stack.callback(lease.release)
        yield lease
