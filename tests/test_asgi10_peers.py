"""Our Worker behind the real ASGI 1.0 peers: Daphne 1.4.2 as the front end and
asgi_redis 1.4.3 as the layer, with their own pins (redis 2.10.6, msgpack 0.6.2,
autobahn 20.12.3, asgiref 1.1.2), in a virtual environment of their own.

That environment is made once (about 20 s) and kept under the pytest cache
(.pytest_cache/d/asgi10-peers), keyed by the pins, the interpreter and this checkout's
path; our package goes into it with ``--no-deps`` (the
Worker needs nothing but msgpack, which the peers bring). A private redis-server, a
Daphne process and a ``Worker(app, asgi_redis_layer)`` process serving a Flask app
(tests/_asgi10_peer.py) run there; this process talks to Daphne with a real HTTP
client and a real WebSocket client, as a browser would.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import RedisServer, free_port, needs_redis, wait_for_port

websockets = pytest.importorskip("websockets")
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402

pytestmark = [needs_redis, pytest.mark.slow, pytest.mark.timeout(300)]

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

#: Exact versions: those the issue names, and the newest Twisted and autobahn (< 21)
#: that Daphne 1.4.2 works with on this interpreter.
PEER_PINS = {
    "daphne": "1.4.2",
    "asgi-redis": "1.4.3",
    "asgiref": "1.1.2",
    "redis": "2.10.6",
    "msgpack": "0.6.2",
    "autobahn": "20.12.3",
    "twisted": "26.10.0",
}
#: Unpinned: what Daphne's pins leave open, and the app.
PEER_EXTRAS = ["six", "flask"]
#: asgi_redis asks for "msgpack-python" (the old name of the msgpack distribution): it
#: is installed without its dependencies so that msgpack 0.6.2 alone provides msgpack.
NO_DEPS = ["asgi-redis"]


def _bin(venv: Path, name: str) -> str:
    return str(venv / "bin" / name)


def _pip(venv: Path, *args: str) -> None:
    command = [_bin(venv, "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    result = subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=240, check=False
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        pytest.fail(f"pip install {' '.join(args)} failed:\n{tail}", pytrace=False)


def _create_peer_venv(venv: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pinned = [f"{name}=={version}" for name, version in PEER_PINS.items() if name not in NO_DEPS]
    _pip(venv, *pinned, *PEER_EXTRAS)
    no_deps = [f"{name}=={PEER_PINS[name]}" for name in NO_DEPS]
    _pip(venv, "--no-deps", *no_deps, "-e", str(REPO))


@pytest.fixture(scope="session")
def peer_venv(request: pytest.FixtureRequest) -> Path:
    """The peers' virtual environment, made on first use (about 30 s) and reused."""
    key = json.dumps([PEER_PINS, PEER_EXTRAS, sys.version, str(REPO)]).encode()
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    root = cache.mkdir("asgi10-peers") if cache is not None else TESTS / "artifacts"
    venv = Path(root) / hashlib.sha256(key).hexdigest()[:16]
    ready = venv / "wsgi-channels-ready"
    if not ready.exists():
        shutil.rmtree(venv, ignore_errors=True)
        _create_peer_venv(venv)
        ready.write_text("")
    return venv


@dataclass
class Peers:
    redis: RedisServer
    port: int
    daphne: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    daphne_log: Path
    worker_log: Path

    def http(
        self, method: str, path: str, body: bytes | None = None, headers: Any = ()
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.putrequest(method, path)
            for name, value in headers:
                connection.putheader(name, value)
            if body is not None:
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def members(self) -> int:
        """How many channels asgi_redis holds in the app's group."""
        with self.redis.client() as client:
            # asgi_redis' key is "{prefix}:group:{name}", its prefix "asgi:".
            return sum(int(client.zcard(key)) for key in client.keys("*:group:peers"))

    def worker_output(self) -> str:
        return self.worker_log.read_text()


def _wait(process: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return -signal.SIGKILL


def _wait_for_line(process: subprocess.Popen[bytes], log: Path, text: str) -> None:
    deadline = time.monotonic() + 30
    while text not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"no {text!r} in {log.name}:\n{log.read_text()}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def peers(peer_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    logs = tmp_path_factory.mktemp("asgi10-peers")
    redis = RedisServer()
    redis.start()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("WSGI_CHANNELS_", "PYTHON"))},
        "PYTHONPATH": str(TESTS),
        "PYTHONUNBUFFERED": "1",
        "PEER_REDIS_PORT": str(redis.port),
    }
    port = free_port()
    daphne_log, worker_log = logs / "daphne.log", logs / "worker.log"
    with open(daphne_log, "wb") as out:
        daphne = subprocess.Popen(
            [_bin(peer_venv, "daphne"), "-b", "127.0.0.1", "-p", str(port),
             "_asgi10_peer:channel_layer"],
            cwd=TESTS, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    with open(worker_log, "wb") as out:
        worker = subprocess.Popen(
            [_bin(peer_venv, "python"), "-m", "_asgi10_peer"],
            cwd=TESTS, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for_port(port, timeout=30)
        _wait_for_line(worker, worker_log, "worker serving")
        yield Peers(redis, port, daphne, worker, daphne_log, worker_log)
    finally:
        # Both at once (once: a second signal would stop the worker without waiting);
        # each takes up to asgi_redis' 5 s blocking receive to notice.
        for process in (worker, daphne):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        worker_code = _wait(worker)
        _wait(daphne)
        redis.cleanup()
    output = worker_log.read_text()
    assert worker_code == 0, output
    assert "worker stopped" in output


@pytest.fixture
def peer(peers: Peers) -> Iterator[Peers]:
    """The peers, and after the test: nothing went wrong in the worker, and Daphne
    refused none of its replies (it logs an ERROR for each one it cannot send)."""
    worker_before = len(peers.worker_output())
    daphne_before = len(peers.daphne_log.read_text())
    yield peers
    worker = peers.worker_output()[worker_before:]
    assert " ERROR " not in worker and "Traceback" not in worker, worker
    assert " WARNING " not in worker, worker
    daphne = peers.daphne_log.read_text()[daphne_before:]
    assert " ERROR " not in daphne and "Traceback" not in daphne, daphne
    assert peers.worker.poll() is None and peers.daphne.poll() is None


def test_the_peers_are_the_pinned_versions(peer_venv: Path) -> None:
    script = (
        "import json, importlib.metadata as m, msgpack, wsgi_channels.worker;"
        "names = ['daphne', 'asgi-redis', 'asgiref', 'redis', 'msgpack', 'autobahn', 'twisted'];"
        "print(json.dumps({n: m.version(n) for n in names}));"
        "print(msgpack.Packer.__module__)"
    )
    out = subprocess.run(
        [_bin(peer_venv, "python"), "-c", script],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.splitlines()  # fmt: skip
    assert {k.lower(): v for k, v in json.loads(out[0]).items()} == PEER_PINS
    # msgpack 0.6.2's generated C++ does not build on recent CPythons; its setup.py
    # falls back to the pure-Python implementation, which is what asgi_redis then uses.
    assert out[1] in ("msgpack.fallback", "msgpack._cmsgpack")


def test_get_with_query_repeated_headers_and_cookie(peer: Peers) -> None:
    status, headers, body = peer.http(
        "GET",
        "/hello?q=a%20b",
        headers=[("X-Custom", "one"), ("X-Custom", "two"), ("Cookie", "session=abc")],
    )
    assert status == 200
    assert headers["X-Served-By"] == "wsgi-channels"
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {
        "path": "/hello",
        "query": "a b",
        "x_custom": "one,two",
        "cookie": "abc",
        "method": "GET",
        "server_port": str(peer.port),
    }


def test_post_body_comes_back_whole(peer: Peers) -> None:
    payload = bytes(range(256)) * 400  # 100 KiB, every byte value
    status, headers, body = peer.http(
        "POST", "/echo", payload, headers=[("Content-Type", "application/octet-stream")]
    )
    assert (status, headers["Content-Type"], body) == (201, "application/octet-stream", payload)


def test_streamed_response_arrives_in_order(peer: Peers) -> None:
    status, _headers, body = peer.http("GET", "/stream")
    assert status == 200
    assert body == b"".join(f"{i:04d}\n".encode() for i in range(2000))


def test_a_3_mib_body_arrives_whole(peer: Peers) -> None:
    status, headers, body = peer.http("GET", "/big")
    assert status == 200
    assert headers["Content-Length"] == str(3 * 2**20)
    assert body == bytes(range(256)) * (3 * 4096)


def test_unknown_path_is_the_apps_404(peer: Peers) -> None:
    status, _headers, body = peer.http("GET", "/nowhere")
    assert status == 404
    assert b"Not Found" in body


def _wait_for_members(peer: Peers, count: int) -> None:
    deadline = time.monotonic() + 10
    while peer.members() != count:
        assert time.monotonic() < deadline, f"{peer.members()} members, expected {count}"
        time.sleep(0.05)


def test_websocket_echo_group_and_disconnect(peer: Peers) -> None:
    async def scenario() -> None:
        async with (
            websockets.connect(peer.ws_url) as first,
            websockets.connect(peer.ws_url) as second,
        ):
            await first.send("hi")
            assert await asyncio.wait_for(first.recv(), 10) == "echo: hi"
            await second.send("there")
            assert await asyncio.wait_for(second.recv(), 10) == "echo: there"
            assert peer.members() == 2

            # The app sends to the group from a socket's event ...
            await first.send("all:to everyone")
            for ws in (first, second):
                assert await asyncio.wait_for(ws.recv(), 10) == "to everyone"

            # ... and from a plain HTTP view, as legacy code does.
            status, _, body = await asyncio.to_thread(peer.http, "POST", "/broadcast", b"x")
            assert (status, body) == (200, b"sent\n")
            for ws in (first, second):
                assert await asyncio.wait_for(ws.recv(), 10) == "news: x"

            await first.close()
            # Daphne's websocket.disconnect reached the app, which left the group.
            await asyncio.to_thread(_wait_for_members, peer, 1)
            await second.send("all:only you")
            assert await asyncio.wait_for(second.recv(), 10) == "only you"
        await asyncio.to_thread(_wait_for_members, peer, 0)

    asyncio.run(scenario())


def test_websocket_refused_by_the_app_and_closed_on_5xx(peer: Peers) -> None:
    async def scenario() -> None:
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(peer.ws_url + "?deny=1", open_timeout=10)
        assert refused.value.response.status_code == 403

        async with websockets.connect(peer.ws_url) as ws:
            await ws.send("unavailable")
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            # Daphne 1.x sends no 1011 (autobahn allows 1000 and 3000-4999): the Worker
            # closes with 1000 there, rather than leave the socket open.
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000

    asyncio.run(scenario())
    _wait_for_members(peer, 0)
