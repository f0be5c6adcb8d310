"""Where frame files and stores live: local paths, or URLs (``s3://``, ``gs://``,
``memory://``, ``file://``) reached through fsspec with the configured options.

Credentials come from the options or from the usual environment variables (for S3:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ...); they are
never written into store attributes or printed.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import fsspec
import zarr
from fsspec import AbstractFileSystem
from zarr.storage import FsspecStore, LocalStore

from daskcubes.errors import UserError

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
    target = Path(path)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    try:
        with partial.open("wb") as file:
            for part in parts:
                file.write(part)
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def local_path(url: str) -> str | None:
    """The local path ``url`` names, or None for a remote URL."""
    if url.startswith("file://"):
        return url.removeprefix("file://")
    return None if "://" in url else url


def basename(url: str) -> str:
    return posixpath.basename(url.rstrip("/"))


@dataclass(frozen=True)
class Storage:
    """fsspec options for every URL of a run: small, hashable, and sent with each task.

    Build it with :meth:`of`; the options are kept as sorted JSON so that a storage is
    hashable and compares by value.
    """

    options_json: str = "{}"

    @classmethod
    def of(cls, options: Mapping[str, Any] | None = None) -> Storage:
        return cls(json.dumps(dict(options or {}), sort_keys=True))

    @cached_property
    def options(self) -> dict[str, Any]:
        return dict(json.loads(self.options_json))

    def filesystem(self, url: str) -> tuple[AbstractFileSystem, str]:
        """The fsspec filesystem of ``url``, and the path within it."""
        path = local_path(url)
        if path is not None:
            return fsspec.filesystem("file"), os.path.abspath(path)
        try:
            fs, inner = fsspec.core.url_to_fs(url, **self.options)
        except (ImportError, ValueError) as exc:
            raise UserError(f"'{url}': cannot reach this location ({exc})") from None
        return fs, inner

    def zarr_store(self, url: str, read_only: bool) -> LocalStore | FsspecStore:
        """A zarr store object for the store at ``url``."""
        path = local_path(url)
        if path is not None:
            return LocalStore(path, read_only=read_only)
        return FsspecStore.from_url(url, storage_options=self.options, read_only=read_only)

    # zarr_format=3 and no consolidated metadata: zarr then looks for one metadata file
    # instead of probing for several (each probe is a request to an object store).

    def open_group(self, url: str, mode: AccessMode) -> zarr.Group:
        store = self.zarr_store(url, read_only=mode == "r")
        return zarr.open_group(store=store, mode=mode, zarr_format=3, use_consolidated=False)

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
        return bool(fs.exists(path))

    def isdir(self, url: str) -> bool:
        fs, path = self.filesystem(url)
        return bool(fs.isdir(path))

    def remove(self, url: str) -> None:
        fs, path = self.filesystem(url)
        if fs.exists(path):
            fs.rm(path, recursive=True)

    def makedirs(self, url: str) -> None:
        fs, path = self.filesystem(url)
        fs.makedirs(path, exist_ok=True)

    def size(self, url: str) -> int:
        fs, path = self.filesystem(url)
        return int(fs.size(path))

    def read_bytes(self, url: str, start: int | None = None, end: int | None = None) -> bytes:
        fs, path = self.filesystem(url)
        return bytes(fs.cat_file(path, start=start, end=end))

    def write_whole(self, url: str, data: bytes) -> None:
        """Write a file whole or not at all: a local file is written beside its name, then
        renamed; an object store's single put is atomic already."""
        path = local_path(url)
        if path is None:
            fs, inner = self.filesystem(url)
            fs.pipe_file(inner, data)
            return
        write_atomically(path, [data])

    def list_files(self, url_or_glob: str) -> list[str]:
        """Files in a directory, or matching a glob, as URLs of the same kind as given."""
        fs, path = self.filesystem(url_or_glob)
        if self.isdir(url_or_glob):
            found = [entry["name"] for entry in fs.ls(path, detail=True) if entry["type"] == "file"]
        else:
            found = [name for name in fs.glob(path) if fs.isfile(name)]
        if local_path(url_or_glob) is not None:
            return found
        return [fs.unstrip_protocol(name) for name in found]
