"""Where frame files and stores live: local paths, or URLs (``s3://``, ``gs://``,
``memory://``, ``file://``) reached through fsspec with the configured options.

Credentials come from the options or from the usual environment variables (for S3:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ...); they are
never written into store attributes or printed.

Requests to remote storage that fail for a transient reason (a connection refused or
reset, a timeout, a 5xx answer, throttling) are tried again with backoff, for at most
:attr:`Storage.retry_seconds` from the first failure; then :class:`StorageUnavailable`
says which endpoint did not answer. Every request a zarr store makes goes through
:class:`RetryingStore`, and the file operations of :class:`Storage` retry alike. The
layers below (botocore) are left one attempt each, so that the budget bounds a request.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import posixpath
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, TypeVar

import fsspec
import fsspec.asyn
import zarr
from fsspec import AbstractFileSystem
from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import FsspecStore, LocalStore, WrapperStore

from daskcubes.errors import UserError

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Seconds a failing storage request is tried again before the run gives up (default).
RETRY_SECONDS = 60.0
#: Longest wait between two tries of a request, in seconds.
MAX_BACKOFF = 2.0
#: S3 error codes that mean "try again later".
TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    "503",
}

#: fsspec protocols whose paths start with a bucket that must exist before writing.
BUCKET_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}
#: How a store is opened: read only, read and write, or created anew (as in zarr).
AccessMode = Literal["r", "r+", "a", "w", "w-"]


def write_atomically(path: str | Path, parts: Iterable[Any]) -> None:
    """Write the buffers ``parts`` into the local file ``path``, whole or not at all.

    They go into a temporary file beside it (``.NAME.RANDOM.partial``), which is then
    renamed: a killed writer never leaves a torn file under the real name, and two
    writers of the same file never share a temporary one.
    """
    folder, name = os.path.split(os.fspath(path))
    # Unique to this writer (process, thread, write); no random bytes, which cost a system
    # call. Plain os calls, one writev: each system call lets another thread take the GIL,
    # and a tiny cube's task made a dozen of them (measured: 7x the shard's write time on
    # two threads against one).
    partial = os.path.join(folder, f".{name}.{_HOST}-{os.getpid()}-{_writes()}.partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            views = [memoryview(part).cast("B") for part in parts]
            while views:  # writev may write less than asked: go on from there
                written = os.writev(fd, views[:_IOV_MAX])
                while views and written >= len(views[0]):
                    written -= len(views.pop(0))
                if views and written:
                    views[0] = views[0][written:]
        finally:
            os.close(fd)
        os.replace(partial, os.path.join(folder, name))
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(partial)
        raise


#: Buffers one writev takes at most (the system's IOV_MAX).
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
#: This machine, and a number for each write of this process: with the pid, a temporary
#: name no other writer of a shared filesystem has.
_HOST = socket.gethostname()
_writes = itertools.count().__next__


def local_path(url: str) -> str | None:
    """The local path ``url`` names, or None for a remote URL."""
    if url.startswith("file://"):
        return url.removeprefix("file://")
    return None if "://" in url else url


def basename(url: str) -> str:
    return posixpath.basename(url.rstrip("/"))


def protocol(url: str) -> str:
    """The fsspec protocol of ``url``: ``file`` for a local path."""
    return "file" if local_path(url) is not None else url.split("://", 1)[0]


class StorageUnavailable(UserError):
    """Remote storage kept failing for a transient reason for the whole retry budget.

    Made of plain values (``endpoint``, ``url``, ``seconds``, ``reason``), so that it
    travels from a worker to the driver as it was raised.
    """

    def __init__(self, endpoint: str, url: str, seconds: float, reason: str) -> None:
        super().__init__(endpoint, url, seconds, reason)
        self.endpoint, self.url, self.seconds, self.reason = endpoint, url, seconds, reason

    def __str__(self) -> str:
        return (
            f"storage {self.endpoint} did not answer for {self.seconds:.0f} s ({self.reason}) "
            f"at '{self.url}'"
        )


def _causes(error: BaseException) -> Iterable[BaseException]:
    """``error`` and the exceptions it was raised from (s3fs wraps botocore's errors)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_transient_one(error: BaseException) -> bool:
    if isinstance(error, ConnectionError | TimeoutError):  # refused, reset, timed out
        return True
    response = getattr(error, "response", None)  # botocore's ClientError
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = response.get("Error", {}).get("Code", "")
        return status >= 500 or status == 429 or code in TRANSIENT_CODES
    # botocore's and aiohttp's connection errors (endpoint unreachable, connection closed,
    # a response cut short), named so that neither library needs to be installed.
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(
        names
        & {
            "HTTPClientError",
            "ConnectionError",
            "IncompleteReadError",
            "ResponseStreamingError",
            "ClientConnectionError",
            "ClientPayloadError",
            "ServerTimeoutError",
        }
    )


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` (or what it was raised from) may pass if the request is tried again."""
    return any(_is_transient_one(cause) for cause in _causes(error))


def _reason(error: BaseException) -> str:
    cause = next((c for c in _causes(error) if _is_transient_one(c)), error)
    text = str(cause).splitlines()[0] if str(cause) else ""
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


class _Retry:
    """The tries of one request: how long to wait after each transient failure."""

    def __init__(self, storage: Storage, url: str) -> None:
        self._storage, self._url = storage, url
        self._deadline: float | None = None
        self._wait = 0.05

    def wait_after(self, error: BaseException) -> float:
        """Seconds to wait before trying again; raises :class:`StorageUnavailable` once
        the budget is spent."""
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = now + self._storage.retry_seconds
        if now >= self._deadline:
            raise StorageUnavailable(
                self._storage.endpoint(self._url),
                self._url,
                self._storage.retry_seconds,
                _reason(error),
            ) from error
        log.debug("retrying %s after %s", self._url, _reason(error))
        self._wait = min(2 * self._wait, MAX_BACKOFF)
        return min(self._wait, self._deadline - now)


def _quiet_unretrieved(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """fsspec's event loop: transient errors of tasks that nobody awaits, logged at debug.

    aiohttp starts a task that writes each request's body; when the connection is reset
    under it, the request fails (and is retried), but that task's own error is never
    retrieved, and asyncio's default handler would print its traceback.
    """
    error = context.get("exception")
    if error is not None and is_transient(error):
        log.debug("%s: %s", context.get("message"), _reason(error))
    else:
        loop.default_exception_handler(context)


def _quiet(loop: asyncio.AbstractEventLoop) -> None:
    if loop.get_exception_handler() is not _quiet_unretrieved:
        loop.set_exception_handler(_quiet_unretrieved)


@dataclass(frozen=True)
class Storage:
    """fsspec options for every URL of a run, and how long a failing request is retried:
    small, hashable, and sent with each task.

    Build it with :meth:`of`; the options are kept as sorted JSON so that a storage is
    hashable and compares by value.
    """

    options_json: str = "{}"
    retry_seconds: float = RETRY_SECONDS

    @classmethod
    def of(
        cls, options: Mapping[str, Any] | None = None, retry_seconds: float = RETRY_SECONDS
    ) -> Storage:
        return cls(json.dumps(dict(options or {}), sort_keys=True), retry_seconds)

    @cached_property
    def options(self) -> dict[str, Any]:
        return dict(json.loads(self.options_json))

    def fsspec_options(self, url: str) -> dict[str, Any]:
        """The options fsspec gets for ``url``: for S3, botocore tries each request once
        (unless the options say otherwise), so that :attr:`retry_seconds` bounds it, and
        gives up connecting after 10 s."""
        options = dict(self.options)
        if protocol(url) in ("s3", "s3a"):
            config = {"retries": {"total_max_attempts": 1}, "connect_timeout": 10}
            options["config_kwargs"] = {**config, **options.get("config_kwargs", {})}
        return options

    def endpoint(self, url: str) -> str:
        """Where requests for ``url`` go, as the user would name it."""
        if protocol(url) not in ("s3", "s3a"):
            return f"{protocol(url)}://{url.split('://', 1)[-1].split('/', 1)[0]}"
        given = self.options.get("endpoint_url") or self.options.get("client_kwargs", {}).get(
            "endpoint_url"
        )
        env = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return str(given or env or "https://s3.amazonaws.com")

    def retrying(self, url: str, request: Callable[[], T]) -> T:
        """``request()``, tried again through transient failures of the storage of ``url``."""
        if local_path(url) is not None:
            return request()  # a local disk's errors are not network weather
        retry = _Retry(self, url)
        while True:
            try:
                return request()
            except Exception as error:
                if not is_transient(error):
                    raise
                time.sleep(retry.wait_after(error))

    def filesystem(self, url: str) -> tuple[AbstractFileSystem, str]:
        """The fsspec filesystem of ``url``, and the path within it."""
        path = local_path(url)
        if path is not None:
            return fsspec.filesystem("file"), os.path.abspath(path)
        try:
            fs, inner = fsspec.core.url_to_fs(url, **self.fsspec_options(url))
        except (ImportError, ValueError) as exc:
            raise UserError(f"'{url}': cannot reach this location ({exc})") from None
        _quiet(fsspec.asyn.get_loop())  # where the filesystem's requests run
        return fs, inner

    def zarr_store(self, url: str, read_only: bool) -> LocalStore | RetryingStore:
        """A zarr store object for the store at ``url``."""
        path = local_path(url)
        if path is not None:
            return LocalStore(path, read_only=read_only)
        store = FsspecStore.from_url(
            url, storage_options=self.fsspec_options(url), read_only=read_only
        )
        return RetryingStore(store, self, url)

    # zarr_format=3 and no consolidated metadata: zarr then looks for one metadata file
    # instead of probing for several (each probe is a request to an object store).

    def open_group(
        self, url: str, mode: AccessMode, attributes: dict[str, Any] | None = None
    ) -> zarr.Group:
        """The group at ``url``; one created (mode ``w``) holds ``attributes`` from its first
        write, so that no reader ever finds it without them."""
        store = self.zarr_store(url, read_only=mode == "r")
        return zarr.open_group(
            store=store, mode=mode, zarr_format=3, use_consolidated=False, attributes=attributes
        )

    def open_array(self, url: str, name: str, mode: AccessMode) -> zarr.Array:
        store = self.zarr_store(url, read_only=mode == "r")
        return zarr.open_array(store=store, path=name, mode=mode, zarr_format=3)

    def check_reachable(self, url: str, what: str) -> None:
        """Check that a URL's bucket (its top-level container) exists and lets us in.

        Raises :class:`UserError` naming the bucket or the access problem; local paths
        pass unchecked.
        """
        if local_path(url) is not None:
            return
        fs, path = self.filesystem(url)
        protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
        if not protocols & BUCKET_PROTOCOLS:
            return
        bucket = path.split("/", 1)[0]
        try:
            fs.info(bucket)
        except FileNotFoundError:
            raise UserError(f"{what} '{url}': bucket '{bucket}' does not exist") from None
        except PermissionError as exc:
            raise UserError(
                f"{what} '{url}': access denied ({exc}); check the credentials "
                "(storage_options, or the usual environment variables such as AWS_ACCESS_KEY_ID)"
            ) from None
        except OSError as exc:
            raise UserError(f"{what} '{url}': cannot reach it ({exc})") from None

    def exists(self, url: str) -> bool:
        fs, path = self.filesystem(url)
        return bool(self.retrying(url, lambda: fs.exists(path)))

    def isdir(self, url: str) -> bool:
        fs, path = self.filesystem(url)
        return bool(self.retrying(url, lambda: fs.isdir(path)))

    def remove(self, url: str) -> None:
        fs, path = self.filesystem(url)
        if self.exists(url):
            self.retrying(url, lambda: fs.rm(path, recursive=True))

    def makedirs(self, url: str) -> None:
        fs, path = self.filesystem(url)
        fs.makedirs(path, exist_ok=True)

    def size(self, url: str) -> int:
        fs, path = self.filesystem(url)
        return int(self.retrying(url, lambda: fs.size(path)))

    def read_bytes(self, url: str, start: int | None = None, end: int | None = None) -> bytes:
        fs, path = self.filesystem(url)
        return bytes(self.retrying(url, lambda: fs.cat_file(path, start=start, end=end)))

    def write_whole(self, url: str, data: bytes) -> None:
        """Write a file whole or not at all: a local file is written beside its name, then
        renamed; an object store's single put is atomic already."""
        path = local_path(url)
        if path is None:
            fs, inner = self.filesystem(url)
            self.retrying(url, lambda: fs.pipe_file(inner, data))
            return
        write_atomically(path, [data])

    def list_files(self, url_or_glob: str) -> list[str]:
        """Files in a directory, or matching a glob, as URLs of the same kind as given."""
        fs, path = self.filesystem(url_or_glob)

        def listed() -> list[str]:
            if fs.isdir(path):
                entries = fs.ls(path, detail=True)
                return [entry["name"] for entry in entries if entry["type"] == "file"]
            return [name for name in fs.glob(path) if fs.isfile(name)]

        return self._urls(url_or_glob, self.retrying(url_or_glob, listed))

    def entries(self, url: str) -> list[str]:
        """The files and folders in the folder ``url``, as URLs of the same kind."""
        fs, path = self.filesystem(url)
        return self._urls(url, self.retrying(url, lambda: list(fs.ls(path, detail=False))))

    def _urls(self, given: str, found: list[str]) -> list[str]:
        if local_path(given) is not None:
            return found
        fs, _ = self.filesystem(given)
        return [fs.unstrip_protocol(name) for name in found]


class RetryingStore(WrapperStore[FsspecStore]):
    """A zarr store on remote storage whose every request is retried as
    :meth:`Storage.retrying` retries (``url`` is the store's, for the message)."""

    def __init__(self, store: FsspecStore, storage: Storage, url: str) -> None:
        super().__init__(store)
        self._storage, self._url = storage, url

    def _with_store(self, store: FsspecStore) -> RetryingStore:
        return type(self)(store, self._storage, self._url)

    async def _retrying(self, request: Callable[[], Awaitable[T]]) -> T:
        _quiet(asyncio.get_running_loop())  # zarr's own event loop, where the requests run
        retry = _Retry(self._storage, self._url)
        while True:
            try:
                return await request()
            except Exception as error:
                if not is_transient(error):
                    raise
                await asyncio.sleep(retry.wait_after(error))

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        return await self._retrying(lambda: self._store.get(key, prototype, byte_range))

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        key_ranges = list(key_ranges)
        return await self._retrying(lambda: self._store.get_partial_values(prototype, key_ranges))

    async def exists(self, key: str) -> bool:
        return await self._retrying(lambda: self._store.exists(key))

    async def set(self, key: str, value: Buffer) -> None:
        await self._retrying(lambda: self._store.set(key, value))

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        await self._retrying(lambda: self._store.set_if_not_exists(key, value))

    async def delete(self, key: str) -> None:
        await self._retrying(lambda: self._store.delete(key))

    async def delete_dir(self, prefix: str) -> None:
        await self._retrying(lambda: self._store.delete_dir(prefix))

    async def is_empty(self, prefix: str) -> bool:
        return await self._retrying(lambda: self._store.is_empty(prefix))

    # The wrapped store's many-key requests would call its own get and set, not these.
    _get_many = Store._get_many
    _set_many = Store._set_many

    def list(self) -> AsyncIterator[str]:
        return self._listed(self._store.list)

    def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        return self._listed(lambda: self._store.list_prefix(prefix))

    def list_dir(self, prefix: str) -> AsyncIterator[str]:
        return self._listed(lambda: self._store.list_dir(prefix))

    async def _listed(self, listing: Callable[[], AsyncIterator[str]]) -> AsyncIterator[str]:
        """A listing read whole (and read again whole if it fails), then handed out."""

        async def whole() -> list[str]:
            return [key async for key in listing()]

        for key in await self._retrying(whole):
            yield key
