"""Helpers for tests of daskcubes and of code built on it."""

from __future__ import annotations

import os
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

from daskcubes.core.plan import Recipes


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
    """Close ``connection`` with a TCP reset, as a server or a network that goes away does
    (shut for reading first, which wakes a thread blocked reading it)."""
    with suppress(OSError):
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.shutdown(socket.SHUT_RD)
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
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> OutageProxy:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        _reset(self._listener)  # wakes the acceptor
        self._acceptor.join(timeout=10)
        self.outage(0)

    def outage(self, seconds: float) -> None:
        """Reset every open connection now, and each new one for ``seconds``."""
        with self._lock:
            self._down_until = time.monotonic() + seconds
            cut, self._open = self._open, set()
        for connection in cut:
            _reset(connection)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            if time.monotonic() < self._down_until:
                _reset(client)
                continue
            try:
                server = socket.create_connection(self._target)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._open |= {client, server}
            ends = [2]  # directions still open; the last to end closes both sockets
            for source, sink in ((client, server), (server, client)):
                threading.Thread(
                    target=self._forward, args=(source, sink, ends), daemon=True
                ).start()

    def _forward(self, source: socket.socket, sink: socket.socket, ends: list[int]) -> None:
        """Copy bytes from ``source`` to ``sink`` until ``source`` ends or is cut."""
        with suppress(OSError):  # cut by an outage: the sockets are closed already
            while data := source.recv(1 << 16):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        with self._lock:
            ends[0] -= 1
            last = ends[0] == 0
            if last:
                self._open -= {source, sink}
        if last:
            source.close()
            sink.close()
