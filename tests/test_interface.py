"""The interface server end to end: real uvicorn and real worker processes, real sockets,
on the SQLite and Redis layers; plus the pure origin rules."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import os
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import websockets
from apps import download_digest
from conftest import REDIS_SERVER, RedisServer
from servers import InterfaceProcess, Stack
from websockets.exceptions import ConnectionClosed, InvalidStatus

from wsgi_channels.interface import OriginRules
from wsgi_channels.layers import layer_from_url

MAX_BODY = 21 * 1024 * 1024


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def layer_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A fresh layer per module and backend (module scope: processes are slow to start)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('layer') / 'layer.sqlite3'}"
        return
    if REDIS_SERVER is None:
        pytest.skip("no redis-server binary on PATH")
    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def stack(layer_url: str) -> Iterator[Stack]:
    with Stack(
        layer_url,
        interface_args=("--http-timeout", "3", "--max-body", str(MAX_BODY)),
    ) as running:
        yield running


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


# -- HTTP ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH"])
def test_methods_reach_the_app(stack: Stack, method: str) -> None:
    response = requests.request(
        method,
        stack.url + "/some/p%C3%A4th?a=1&b=%20",
        data=b"payload" if method != "GET" else None,
    )
    assert response.status_code == 200
    seen = response.json()
    assert seen["method"] == method
    assert seen["path"] == "/some/p\xc3\xa4th"  # WSGI: UTF-8 bytes as latin-1
    assert seen["query"] == "a=1&b=%20"
    assert seen["body"] == ("" if method == "GET" else "payload")


def test_head_has_no_body(stack: Stack) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", stack.interface.port, timeout=5)
    conn.request("HEAD", "/anything")
    response = conn.getresponse()
    assert response.status == 200
    assert response.read() == b""
    assert int(response.headers["content-length"]) > 0
    conn.close()


def _data_segments_received(sock: socket.socket) -> int:
    """tcpi_data_segs_in of Linux's struct tcp_info (include/uapi/linux/tcp.h, since
    Linux 4.6): the TCP segments with data this socket has received."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 160)
    return int.from_bytes(info[152:156], sys.byteorder)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's TCP_INFO")
def test_a_whole_response_leaves_in_one_segment(stack: Stack) -> None:
    # A head and a body written apart go out as two segments (TCP_NODELAY) and wake
    # the client twice; the interface sends them together.
    with socket.create_connection(("127.0.0.1", stack.interface.port), timeout=5) as sock:
        for _ in range(3):  # keep-alive: each response of the connection alike
            before = _data_segments_received(sock)
            sock.sendall(b"GET /cookie/set HTTP/1.1\r\nHost: x\r\n\r\n")
            response = b""
            while not response.endswith(b"\r\n\r\nok"):
                chunk = sock.recv(65536)
                assert chunk, response
                response += chunk
            assert response.startswith(b"HTTP/1.1 200 ")
            assert _data_segments_received(sock) - before == 1


def test_a_streamed_head_and_chunk_are_not_held_for_the_next(stack: Stack) -> None:
    started = time.monotonic()
    with requests.get(stack.url + "/drip?1.5", stream=True, timeout=5) as response:
        lines = response.iter_lines()
        assert response.status_code == 200
        assert next(lines) == b"first"
        assert time.monotonic() - started < 1.2
        assert next(lines) == b"second"
        assert time.monotonic() - started >= 1.4


def test_redirects_and_cookies(stack: Stack) -> None:
    session = requests.Session()
    response = session.get(stack.url + "/redirect")
    assert [r.status_code for r in response.history] == [302]
    assert response.json()["path"] == "/landed"
    session.get(stack.url + "/cookie/set")
    assert session.get(stack.url + "/cookie/get").json() == {"session": "abc123", "theme": "dark"}


def test_20mb_upload_streams_through(stack: Stack) -> None:
    block = os.urandom(1024 * 1024)
    digest = hashlib.sha256()

    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            digest.update(block)
            yield block

    response = requests.post(stack.url + "/upload", data=chunks(), timeout=30)
    assert response.status_code == 200
    assert response.json() == {"size": 20 * 1024 * 1024, "sha256": digest.hexdigest()}


def test_50mb_download_streams_through(stack: Stack) -> None:
    digest = hashlib.sha256()
    size = 0
    with requests.get(stack.url + "/download", stream=True, timeout=30) as response:
        assert response.status_code == 200
        for chunk in response.iter_content(1024 * 1024):
            size += len(chunk)
            digest.update(chunk)
    assert size == 50 * 1024 * 1024
    assert digest.hexdigest() == download_digest()


def test_413_from_content_length_before_reading(stack: Stack) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", stack.interface.port, timeout=5)
    conn.putrequest("POST", "/upload")
    conn.putheader("Content-Length", str(MAX_BODY + 1))
    conn.endheaders()  # no body sent at all: the answer must not wait for it
    assert conn.getresponse().status == 413
    conn.close()


def test_413_as_soon_as_a_chunked_body_goes_over(stack: Stack) -> None:
    block = b"x" * (1024 * 1024)
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(40):
            sent += len(block)
            yield block

    try:
        response = requests.post(stack.url + "/upload", data=chunks(), timeout=10)
        assert response.status_code == 413
    except requests.ConnectionError:
        pass  # the server may close while we are still writing: also a refusal
    assert sent < 40 * len(block)


def test_504_when_the_app_is_slower_than_http_timeout(stack: Stack) -> None:
    started = time.monotonic()
    response = requests.get(stack.url + "/slow?5", timeout=10)
    assert response.status_code == 504
    assert 2.5 < time.monotonic() - started < 4.5


# -- WebSocket ------------------------------------------------------------------------


def test_websocket_echo_text_and_bytes(stack: Stack) -> None:
    async def talk() -> list[object]:
        async with websockets.connect(stack.ws_url + "/ws/echo") as ws:
            await ws.send("hello")
            text = await ws.recv()
            await ws.send(b"\x00\x01binary")
            data = await ws.recv()
            return [text, data]

    assert run(talk()) == ["hello", b"\x00\x01binary"]


def test_the_app_chooses_a_subprotocol_with_a_response_header(stack: Stack) -> None:
    async def talk() -> list[object]:
        url = stack.ws_url + "/ws/subprotocol"
        async with websockets.connect(url, subprotocols=["chat.v1", "chat.v2"]) as ws:
            chosen = ws.subprotocol
            await ws.send("hi")
            return [chosen, await ws.recv()]

    assert run(talk()) == ["chat.v2", "hi"]


def test_websocket_rejected_by_the_app_is_403(stack: Stack) -> None:
    async def connect() -> None:
        async with websockets.connect(stack.ws_url + "/ws/reject"):
            pass

    with pytest.raises(InvalidStatus) as info:
        run(connect())
    assert info.value.response.status_code == 403


def test_500_frames_in_a_burst_arrive_in_order(stack: Stack) -> None:
    async def burst() -> list[str]:
        async with websockets.connect(stack.ws_url + "/ws/echo") as ws:
            for i in range(500):
                await ws.send(f"frame {i}")
            return [str(await asyncio.wait_for(ws.recv(), 10)) for _ in range(500)]

    assert run(burst()) == [f"frame {i}" for i in range(500)]


def test_group_message_reaches_sockets_on_two_interface_processes(
    stack: Stack, layer_url: str
) -> None:
    second = InterfaceProcess(layer_url).start()
    layer = layer_from_url(layer_url)
    try:

        async def gather() -> list[object]:
            urls = [stack.ws_url, stack.ws_url, second.ws_url]
            sockets = [await websockets.connect(u + "/ws/group?name=fans") for u in urls]
            try:
                # The join happens in the connect event: wait until all three are in.
                deadline = time.monotonic() + 5
                while len(layer.group_channels("fans")) < 3 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                layer.send_group("fans", {"text": "goal!"})
                return [await asyncio.wait_for(ws.recv(), 5) for ws in sockets]
            finally:
                for ws in sockets:
                    await ws.close()

        assert run(gather()) == ["goal!"] * 3
    finally:
        layer.close()
        assert second.stop() == 0


def test_shutdown_closes_websockets_with_1001(layer_url: str) -> None:
    with Stack(layer_url) as own:
        interface = own.interface

        async def wait_close() -> int | None:
            async with websockets.connect(interface.ws_url + "/ws/echo") as ws:
                await ws.send("x")
                await ws.recv()
                interface.signal(15)
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 10)
                assert ws.close_code is not None
                return ws.close_code

        assert run(wait_close()) == 1001
        assert interface.stop() == 0


# -- without a worker: 503, origin refusal ------------------------------------------------


@pytest.fixture(scope="module")
def lonely(layer_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InterfaceProcess]:
    """An interface with no worker, a one-message http.request channel, 1 s timeouts."""
    sep = "&" if "?" in layer_url else "?"
    # Redis: another db, so that the stack's worker never takes these messages.
    url = (
        layer_url.replace("/0", "/3")
        if layer_url.startswith("redis")
        else (f"sqlite:///{tmp_path_factory.mktemp('lonely') / 'layer.sqlite3'}")
    )
    url += f"{sep}channel_capacity=http.request:1"
    process = InterfaceProcess(
        url,
        "--http-timeout",
        "1",
        "--websocket-connect-timeout",
        "1",
        "--allowed-origin",
        "https://*.example.com",
    ).start()
    process.layer_url = url  # type: ignore[attr-defined]
    yield process
    process.stop()


def test_503_with_retry_after_when_http_request_is_full(lonely: InterfaceProcess) -> None:
    layer = layer_from_url(lonely.layer_url)  # type: ignore[attr-defined]
    try:
        layer.flush()
        layer.send("http.request", {"filler": True})
        response = requests.get(lonely.url + "/", timeout=5)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
    finally:
        layer.flush()
        layer.close()


def test_504_when_no_worker_answers(lonely: InterfaceProcess) -> None:
    layer = layer_from_url(lonely.layer_url)  # type: ignore[attr-defined]
    layer.flush()
    layer.close()
    assert requests.get(lonely.url + "/", timeout=5).status_code == 504


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        pytest.param("http://evil.test", False, id="foreign"),
        pytest.param("https://app.example.com", True, id="allowed-pattern"),
        pytest.param("http://app.example.com", False, id="pattern-scheme-differs"),
    ],
)
def test_origin_check_before_anything_reaches_the_layer(
    lonely: InterfaceProcess, origin: str, allowed: bool
) -> None:
    layer = layer_from_url(lonely.layer_url)  # type: ignore[attr-defined]
    layer.flush()

    async def connect() -> None:
        async with websockets.connect(
            lonely.ws_url + "/ws",
            origin=origin,
            open_timeout=5,  # type: ignore[arg-type]
        ):
            pass

    try:
        with pytest.raises(InvalidStatus) as info:
            run(connect())
        assert info.value.response.status_code == 403
        # Refused by origin: nothing sent. Allowed: the connect waits on the layer
        # (no worker here) until websocket_connect_timeout, then 403.
        pending = layer.channel_statistics("websocket.connect")["messages_pending"]
        assert pending == (1 if allowed else 0)
    finally:
        layer.flush()
        layer.close()


# -- origin rules, pure -------------------------------------------------------------------


def _headers(origin: str | None, host: str = "site.test:8000") -> list[tuple[bytes, bytes]]:
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return headers


@pytest.mark.parametrize(
    ("patterns", "origin", "host", "expected"),
    [
        pytest.param((), None, "site.test:8000", True, id="no-origin-non-browser"),
        pytest.param((), "http://site.test:8000", "site.test:8000", True, id="same-host"),
        pytest.param((), "http://site.test", "site.test", True, id="same-host-default-port"),
        pytest.param((), "http://site.test:9000", "site.test:8000", False, id="other-port"),
        pytest.param((), "http://other.test:8000", "site.test:8000", False, id="other-host"),
        pytest.param((), "null", "site.test", False, id="null-origin"),
        pytest.param(("*",), "null", "site.test", True, id="star-allows-all"),
        pytest.param(("https://example.com",), "https://example.com", "x", True, id="exact"),
        pytest.param(("https://example.com",), "http://example.com", "x", False, id="scheme"),
        pytest.param(("https://example.com",), "https://example.com:444", "x", False, id="port"),
        pytest.param(("*.example.com",), "http://a.example.com", "x", True, id="wildcard"),
        pytest.param(("*.example.com",), "https://a.b.example.com", "x", True, id="deep"),
        pytest.param(("*.example.com",), "https://example.com", "x", False, id="apex"),
        pytest.param(("*.example.com",), "https://evilexample.com", "x", False, id="suffix"),
        pytest.param(("example.com:8443",), "https://example.com:8443", "x", True, id="hostport"),
    ],
)
def test_origin_rules(
    patterns: tuple[str, ...], origin: str | None, host: str, expected: bool
) -> None:
    assert OriginRules(patterns).allowed(_headers(origin, host), "ws") is expected


class Asgi10Layer:
    """Only the ASGI 1.0 layer methods of a memory layer: no receive_batch."""

    extensions = ["groups"]

    def __init__(self) -> None:
        from wsgi_channels.layers.memory import MemoryChannelLayer

        self._layer = MemoryChannelLayer()

    def send(self, channel: str, message: dict[str, object]) -> None:
        self._layer.send(channel, message)

    def receive(self, channels: list[str], block: bool = False) -> tuple[object, object]:
        return self._layer.receive(channels, block)

    def new_channel(self, pattern: str) -> str:
        return self._layer.new_channel(pattern)

    def group_add(self, group: str, channel: str) -> None:
        self._layer.group_add(group, channel)

    def group_discard(self, group: str, channel: str) -> None:
        self._layer.group_discard(group, channel)

    def send_group(self, group: str, message: dict[str, object]) -> None:
        self._layer.send_group(group, message)


@contextlib.contextmanager
def served_in_threads(layer: Any, **uvicorn_options: Any) -> Iterator[int]:
    """``apps.echo`` on a Worker (2 threads) and an InterfaceServer under uvicorn, both
    in threads of this process on *layer*; yields the port once it listens."""
    import threading

    import uvicorn
    from apps import echo
    from conftest import free_port, wait_for_port

    from wsgi_channels.interface import InterfaceServer
    from wsgi_channels.worker import Worker

    port = free_port()
    worker = Worker(echo, layer, threads=2)
    config = uvicorn.Config(
        InterfaceServer(layer), host="127.0.0.1", port=port, lifespan="on",
        log_level="warning", **uvicorn_options,
    )  # fmt: skip
    server = uvicorn.Server(config)
    threads = [
        threading.Thread(target=worker.serve, daemon=True),
        threading.Thread(target=server.run, daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        wait_for_port(port)
        yield port
    finally:
        server.should_exit = True
        worker.stop()
        for thread in threads:
            thread.join(10)


def test_a_layer_without_receive_batch_still_serves_http_and_websockets() -> None:
    layer = Asgi10Layer()
    assert not hasattr(layer, "receive_batch")
    with served_in_threads(layer, ws="wsproto") as port:
        response = requests.get(f"http://127.0.0.1:{port}/echo?x=1", timeout=10)
        assert response.status_code == 200

        async def talk() -> list[object]:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws/group?g=plain") as ws:
                layer.send_group("plain", {"text": "to the group"})
                first = await asyncio.wait_for(ws.recv(), 5)
                await ws.send("echo me")
                return [first, await asyncio.wait_for(ws.recv(), 5)]

        assert run(talk()) == ["to the group", "echo me"]


def test_sockets_with_and_without_compression_get_their_echoes_and_group_messages() -> None:
    """Under a uvicorn that negotiates permessage-deflate (``create_app`` with options of
    the user's), a compressed socket's frames are wsproto's own and an uncompressed
    one's are the prepared bytes; each client reads the same messages."""
    from wsgi_channels.interface import BoundedHttpToolsProtocol, GoingAwayWSProtocol

    layer = layer_from_url("memory://")
    long_text = "compressible " * 2000

    async def talk(port: int, compression: str | None) -> tuple[str, list[object]]:
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/ws/group?g=mixed", compression=compression
        ) as ws:
            assert ws.response is not None
            negotiated = ws.response.headers.get("Sec-WebSocket-Extensions", "")
            await ws.send("echo me")
            got = [await asyncio.wait_for(ws.recv(), 5)]
            await ws.send(long_text)
            got.append(await asyncio.wait_for(ws.recv(), 5))
            layer.send_group("mixed", {"text": "to the group"})
            got.append(await asyncio.wait_for(ws.recv(), 5))
            layer.send_group("mixed", {"bytes": b"\x00\xff" * 500})
            got.append(await asyncio.wait_for(ws.recv(), 5))
            return negotiated, got

    def first_bytes_on_the_wire(port: int) -> list[int]:
        """A raw client offering permessage-deflate: the first byte (FIN, RSV1 = the
        compressed bit, opcode) of its echo's frame and of a group message's."""
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                b"GET /ws/group?g=raw HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
            )
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(4096)
            assert b"permessage-deflate" in head.lower()
            payload = b"x" * 100
            mask = b"\x01\x02\x03\x04"
            masked = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
            sock.sendall(bytes((0x81, 0x80 | len(payload))) + mask + masked)  # uncompressed
            first = [sock.recv(1)[0]]
            sock.recv(65536)  # the rest of that frame
            layer.send_group("raw", {"text": "y" * 100})
            first.append(sock.recv(1)[0])
            return first

    with served_in_threads(
        layer, http=BoundedHttpToolsProtocol, ws=GoingAwayWSProtocol, ws_per_message_deflate=True
    ) as port:
        # FIN + RSV1 + text: compressed by wsproto, not the prepared (uncompressed) bytes.
        assert first_bytes_on_the_wire(port) == [0xC1, 0xC1]
        expected = ["echo me", long_text, "to the group", b"\x00\xff" * 500]
        negotiated, got = run(talk(port, "deflate"))  # type: ignore[misc]
        assert "permessage-deflate" in negotiated
        assert got == expected
        negotiated, got = run(talk(port, None))  # type: ignore[misc]
        assert negotiated == ""
        assert got == expected
