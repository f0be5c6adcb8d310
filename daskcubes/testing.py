"""Helpers for tests of daskcubes and of code built on it."""

from __future__ import annotations

import os
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np

from daskcubes.plan import Recipes


def expected_cubes(frames: np.ndarray, recipes: Recipes, height: int | None = None) -> np.ndarray:
    """Cubes by the definition, ``cube[f, r, c] = frames[frame[f], row + r, column[c]]``.

    A slow, obvious oracle: ``frames`` is ``(n_frames, n_rows, n_cols)``; cubes are
    ``height`` rows high (default: as wide as the recipes' columns).
    """
    n, width = recipes.columns.shape
    height = width if height is None else height
    cubes = np.empty((n, recipes.frames.shape[1], height, width), dtype=frames.dtype)
    for i in range(n):
        rows = slice(recipes.rows[i], recipes.rows[i] + height)
        cubes[i] = frames[recipes.frames[i]][:, rows][:, :, recipes.columns[i]]
    return cubes


def store_files(path: str | Path) -> dict[str, bytes]:
    """Every file of a local zarr store by relative path, except the root group's
    metadata (which records when and how the run went)."""
    root = Path(path)
    return {
        str(file.relative_to(root)): file.read_bytes()
        for file in sorted(root.rglob("*"))
        if file.is_file() and file != root / "zarr.json"
    }


def assert_stores_identical(a: str | Path, b: str | Path) -> None:
    """Assert two local stores hold byte-identical arrays (chunks and array metadata)."""
    files_a, files_b = store_files(a), store_files(b)
    only = sorted(set(files_a) ^ set(files_b))
    assert not only, f"{a} and {b} hold different files: {only[:5]}"
    differ = [name for name in files_a if files_a[name] != files_b[name]]
    assert not differ, f"{a} and {b} differ in {differ[:5]}"


@contextmanager
def s3_server(**env: str) -> Iterator[str]:
    """Run an S3-compatible server (moto's standalone server, ``pip install moto[server]``)
    in its own process on loopback; yield its endpoint URL, and stop it on exit.

    ``env`` is added to the server's environment: ``INITIAL_NO_AUTH_ACTION_COUNT="0"``
    makes it check credentials (it then knows none).
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the S3 server did not start") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)


def _reset(connection: socket.socket) -> None:
    """Close ``connection`` with a TCP reset, as a server or a network that goes away does."""
    with suppress(OSError):
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


class OutageProxy:
    """A TCP proxy on loopback to ``target`` (``HOST:PORT``) that can cut every connection.

    While an outage lasts, open connections are reset and new ones are reset as soon as
    they are accepted; the server behind keeps its state. Use as a context manager; the
    client connects to :attr:`endpoint`.
    """

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._down_until = 0.0
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> OutageProxy:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        self._listener.close()
        self._acceptor.join(timeout=10)
        self.outage(0)

    @property
    def down(self) -> bool:
        return time.monotonic() < self._down_until

    def outage(self, seconds: float) -> None:
        """Cut every connection now and refuse new ones for ``seconds``."""
        with self._lock:
            self._down_until = time.monotonic() + seconds
            cut, self._open = self._open, set()
        for connection in cut:
            _reset(connection)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            if self.down:
                _reset(client)
                continue
            try:
                server = socket.create_connection(self._target)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._open |= {client, server}
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        """Copy bytes both ways until either side closes or an outage cuts them."""
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ, server)
            selector.register(server, selectors.EVENT_READ, client)
            try:
                while True:
                    for key, _ in selector.select():
                        data = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
                        if not data:
                            return
                        key.data.sendall(data)
            except (OSError, ValueError):  # cut by an outage (a closed socket's fd is -1)
                return
            finally:
                with self._lock:
                    self._open -= {client, server}
                for connection in (client, server):
                    connection.close()  # after an outage's reset, closing again is harmless
