"""Fixtures shared by the whole suite: real redis-server processes on free ports, and the
``layer`` fixture that runs a test on every backend."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REDIS_SERVER = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None,
    reason="no redis-server binary on PATH (apt-get install redis-server); CI always has one",
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Poll until something accepts connections on *port* (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


class RedisServer:
    """A real redis-server of our own on a free port, with nothing saved to disk."""

    def __init__(self, *extra_args: str) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed")
        self.port = free_port()
        self.extra_args = list(extra_args)
        self.dir = tempfile.mkdtemp(prefix="wsgi-channels-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                "--logfile",
                os.path.join(self.dir, "redis.log"),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.start()

    def client(self):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port)

    def dbsize(self) -> int:
        with self.client() as client:
            return int(client.dbsize())

    def flushall(self) -> None:
        with self.client() as client:
            client.flushall()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _started_redis() -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("no redis-server binary on PATH (apt-get install redis-server)")
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session; tests flush it through ``redis_url``."""
    yield from _started_redis()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the session's redis-server, emptied before the test."""
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()
    redis_server.flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_shards() -> Iterator[list[RedisServer]]:
    """Three redis-servers, for sharding tests."""
    if REDIS_SERVER is None:
        pytest.skip("no redis-server binary on PATH (apt-get install redis-server)")
    servers = [RedisServer() for _ in range(3)]
    for server in servers:
        server.start()
    yield servers
    for server in servers:
        server.cleanup()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server for this test alone, which the test may stop and restart."""
    yield from _started_redis()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A layer URL for a fresh SQLite file (absolute path: four slashes)."""
    return f"sqlite:///{tmp_path / 'layer.sqlite3'}"


LAYER_BACKENDS = ("memory", "sqlite", "redis")


def layer_query(options: dict[str, object]) -> str:
    """Layer options as a URL query string; ``channel_capacity`` may be given as a dict
    of glob pattern to capacity."""
    pairs = []
    for key, value in options.items():
        if isinstance(value, dict):
            value = ";".join(f"{pattern}:{number}" for pattern, number in value.items())
        pairs.append((key, str(value)))
    return urllib.parse.urlencode(pairs)


@pytest.fixture(params=LAYER_BACKENDS)
def layer_backend(request: pytest.FixtureRequest) -> str:
    """The name of the backend under test; override with
    ``@pytest.mark.parametrize("layer_backend", [...])`` to run on fewer backends."""
    return str(request.param)


@pytest.fixture
def layer_url(layer_backend: str, request: pytest.FixtureRequest) -> str:
    """A URL, without query, for fresh storage of the backend under test (a new SQLite
    file, a flushed redis-server of our own)."""
    if layer_backend == "memory":
        return "memory://"
    if layer_backend == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    if layer_backend == "redis":
        return str(request.getfixturevalue("redis_url"))
    raise ValueError(f"unknown layer backend {layer_backend!r}")


@pytest.fixture
def make_layer(layer_url: str) -> Iterator[Callable[..., Any]]:
    """``make_layer(**options)`` builds a layer of the backend under test with
    *options* passed in its URL's query (``expiry=1``, ``capacity=3``,
    ``channel_capacity={"big.*": 5}``, ...). Layers made in one test share storage
    (except on memory://) and are closed at teardown."""
    from wsgi_channels.layers import layer_from_url

    made: list[Any] = []

    def make(**options: object) -> Any:
        query = layer_query(options)
        layer = layer_from_url(f"{layer_url}?{query}" if query else layer_url)
        made.append(layer)
        return layer

    yield make
    for layer in made:
        layer.close()


@pytest.fixture
def layer(make_layer: Callable[..., Any]) -> Any:
    """A layer with default options, once per backend: memory, SQLite, Redis."""
    return make_layer()


# The Redis Cluster and Sentinel fixtures live beside the servers they start.
from _redis_servers import cluster_url, redis_cluster, redis_sentinel, sentinel_url  # noqa: E402, F401
