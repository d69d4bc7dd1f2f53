"""Hostile clients against real interface processes, over raw sockets.

Each test is an attack from the threat model: pipelining and ping floods (memory,
read from /proc/<pid>/status), sockets that never read next to one that does,
header trickles and silent connections, slow uploads, and malformed replies from a
producer on the layer. What is asserted is what a client or an operator would see.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from servers import InterfaceProcess, Stack

from wsgi_channels.layers import layer_from_url

MB = 1024 * 1024


@pytest.fixture
def layer_url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'layer.sqlite3'}"


def rss(pid: int) -> int:
    """Resident memory of *pid* in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def interface_pid(stack: Stack) -> int:
    assert stack.interface.process is not None
    return stack.interface.process.pid


def connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    return sock


def read_response(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Bytes until the peer closes or *timeout* passes."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def timed_get(port: int, path: str = "/bystander") -> tuple[float, bytes]:
    start = time.monotonic()
    with connect(port) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
        data = read_response(sock, 30)
    return time.monotonic() - start, data


def ws_handshake(port: int, path: str, rcvbuf: int | None = None) -> socket.socket:
    sock = connect(port, rcvbuf)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path.encode(), key)
    )
    sock.settimeout(10)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def masked_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + body


# -- requests the rebuild already bounds ------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="no-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", id="two-hosts"),
    ],
)
def test_a_request_without_exactly_one_host_gets_400(layer_url: str, head: bytes) -> None:
    interface = InterfaceProcess(layer_url).start()
    try:
        with connect(interface.port) as sock:
            sock.sendall(head)
            assert read_response(sock).startswith(b"HTTP/1.1 400")
    finally:
        interface.stop()


@pytest.mark.slow
@pytest.mark.fault
@pytest.mark.parametrize("reading", [True, False], ids=["reading", "not-reading"])
def test_pipelining_keeps_interface_memory_bounded(layer_url: str, reading: bool) -> None:
    with Stack(layer_url) as stack:
        pid = interface_pid(stack)
        before = rss(pid)
        request = b"GET /posts.json HTTP/1.1\r\nHost: x\r\n\r\n" * 200
        stop = time.monotonic() + 8
        peak = before

        def flood() -> None:
            with connect(stack.interface.port, rcvbuf=None if reading else 4096) as sock:
                sock.setblocking(False)
                while time.monotonic() < stop:
                    try:
                        sock.send(request)
                    except BlockingIOError:
                        time.sleep(0.001)
                    if reading:
                        try:
                            while sock.recv(1 << 20):
                                pass
                        except BlockingIOError:
                            pass

        threads = [threading.Thread(target=flood) for _ in range(1 if reading else 4)]
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            peak = max(peak, rss(pid))
            time.sleep(0.2)
        latency, reply = timed_get(stack.interface.port)
        after = rss(pid)
    print(f"pipelining reading={reading}: RSS {before / MB:.0f} -> peak {peak / MB:.0f} MB")
    assert peak - before <= 64 * MB
    assert reply.startswith(b"HTTP/1.1 200") and latency < 1.0
    assert after - before <= 64 * MB


@pytest.mark.slow
@pytest.mark.fault
def test_a_ping_flood_from_a_client_that_never_reads_is_bounded(layer_url: str) -> None:
    with Stack(layer_url, app="apps:websocket") as stack:
        pid = interface_pid(stack)
        before = peak = rss(pid)
        sock = ws_handshake(stack.interface.port, "/ws/ping", rcvbuf=4096)
        ping = masked_frame(0x9, b"p" * 125)
        sock.setblocking(False)
        stop = time.monotonic() + 10
        checked = time.monotonic()
        while time.monotonic() < stop:
            try:
                sock.send(ping * 64)
            except BlockingIOError:
                time.sleep(0.001)
            except OSError:
                break  # the interface closed a client that never reads: bounded too
            if time.monotonic() - checked > 0.2:
                peak, checked = max(peak, rss(pid)), time.monotonic()
        sock.close()
        peak = max(peak, rss(pid))
    print(f"ping flood: RSS {before / MB:.0f} -> peak {peak / MB:.0f} MB")
    assert peak - before <= 64 * MB


@pytest.mark.slow
@pytest.mark.fault
def test_sockets_that_never_read_delay_no_bystander(layer_url: str) -> None:
    layer = layer_from_url(layer_url)
    with Stack(layer_url, app="apps:websocket") as stack:
        port = stack.interface.port
        stuck = [ws_handshake(port, "/ws/group?g=crowd", rcvbuf=4096) for _ in range(50)]
        latencies: list[float] = []

        async def bystander() -> int:
            got = 0
            async with websockets.connect(stack.ws_url + "/ws/group?g=crowd") as ws:
                deadline = time.monotonic() + 10
                while len(layer.group_channels("crowd")) < 51 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)

                def produce() -> None:
                    payload = "x" * 32 * 1024
                    for n in range(400):
                        layer.send_group("crowd", {"text": f"{n} {payload}"})
                        time.sleep(0.002)
                        if n % 50 == 0:
                            latencies.append(timed_get(port)[0])

                producer = threading.Thread(target=produce)
                producer.start()
                try:
                    while got < 400:
                        await asyncio.wait_for(ws.recv(), 10)
                        got += 1
                finally:
                    await asyncio.to_thread(producer.join)
            return got

        assert asyncio.run(bystander()) == 400
        for sock in stuck:
            sock.close()
    layer.close()
    print(f"50 non-readers: bystander HTTP latencies {[round(x, 3) for x in latencies]}")
    assert max(latencies) < 1.0


# -- timeouts ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_silent_connection_and_a_header_trickle_are_closed(layer_url: str) -> None:
    interface = InterfaceProcess(
        layer_url,
        env={"WSGI_CHANNELS_HEADER_TIMEOUT": "3", "WSGI_CHANNELS_KEEP_ALIVE_TIMEOUT": "2"},
    ).start()
    try:
        silent = connect(interface.port)
        trickle = connect(interface.port)
        start = time.monotonic()
        head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
        closed: dict[str, float] = {}
        answer = b""
        silent.setblocking(False)
        trickle.setblocking(False)
        for byte in head:
            if time.monotonic() - start > 15 or len(closed) == 2:
                break
            try:
                trickle.send(bytes((byte,)))
            except OSError:
                closed.setdefault("trickle", time.monotonic() - start)
            for name, sock in (("silent", silent), ("trickle", trickle)):
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if name == "trickle":
                    answer += data
                if not data:
                    closed.setdefault(name, time.monotonic() - start)
            time.sleep(0.5)
        silent.close()
        trickle.close()
    finally:
        interface.stop()
    assert 1.5 <= closed["silent"] < 4
    assert 2.5 <= closed["trickle"] < 6
    assert answer.startswith(b"HTTP/1.1 408")


def test_the_limits_have_defaults_and_variables() -> None:
    from wsgi_channels.interface.config import InterfaceConfig

    defaults = InterfaceConfig()
    assert defaults.header_timeout <= 30 and defaults.keep_alive_timeout <= 30
    names = {
        "HEADER_TIMEOUT": ("header_timeout", 7.0),
        "KEEP_ALIVE_TIMEOUT": ("keep_alive_timeout", 3.0),
        "BODY_TIMEOUT": ("body_timeout", 9.0),
        "BODY_BUFFER": ("body_buffer", 2 * MB),
        "MAX_PIPELINE": ("max_pipeline", 4),
        "PONG_BACKLOG": ("pong_backlog", 8192),
        "WEBSOCKET_QUEUE": ("websocket_queue", 32),
        "WEBSOCKET_WRITE_BUFFER": ("websocket_write_buffer", MB),
        "RESPONSE_BUFFER": ("response_buffer", 4 * MB),
    }
    environ = {"WSGI_CHANNELS_" + k: str(v) for k, (_f, v) in names.items()}
    environ["WSGI_CHANNELS_BODY_BUFFER"] = "2M"
    config = InterfaceConfig.from_environ(environ)
    assert {k: getattr(config, f) for k, (f, _v) in names.items()} == {
        k: v for k, (_f, v) in names.items()
    }
    assert InterfaceConfig.from_environ(config.to_environ()) == config


# -- slow uploads -----------------------------------------------------------------------


def start_trickle_upload(port: int, size: int, sent: int) -> socket.socket:
    sock = connect(port)
    sock.sendall(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size + b"u" * sent
    )
    return sock


@pytest.mark.slow
@pytest.mark.fault
def test_trickling_uploads_hold_no_worker_thread(layer_url: str) -> None:
    with Stack(layer_url, threads=8) as stack:
        port = stack.interface.port
        uploads = [start_trickle_upload(port, 400 * 1024, 300 * 1024) for _ in range(8)]
        latencies = []
        for _ in range(5):
            for sock in uploads:
                sock.send(b"u" * 10)
            latency, reply = timed_get(port)
            assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
            latencies.append(latency)
            time.sleep(0.5)
        for sock in uploads:
            sock.close()
    print(f"8 trickling uploads: bystander latencies {[round(x, 3) for x in latencies]}")
    assert max(latencies) < 1.0


@pytest.mark.slow
@pytest.mark.parametrize("size", [100 * 1024, 3 * 1024 * 1024], ids=["held", "streamed"])
def test_a_stalled_upload_gets_408(layer_url: str, size: int) -> None:
    with Stack(layer_url, interface_args=()) as stack:
        stack.interface.stop()
        stack.interface = InterfaceProcess(layer_url, env={"WSGI_CHANNELS_BODY_TIMEOUT": "2"})
        stack.interface.start()
        start = time.monotonic()
        with start_trickle_upload(stack.interface.port, size, size // 2) as sock:
            reply = read_response(sock, 15)
        took = time.monotonic() - start
        stack.interface.stop()
        log = stack.interface.output
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert took < 8
    assert "Exception in ASGI application" not in log


def test_a_complete_upload_just_over_the_inline_limit_is_whole(layer_url: str) -> None:
    import hashlib
    import json

    body = os.urandom(300 * 1024)
    with Stack(layer_url) as stack, connect(stack.interface.port) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
            % len(body)
            + body
        )
        reply = read_response(sock, 15)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    result = json.loads(reply.partition(b"\r\n\r\n")[2])
    assert result == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


# -- malformed replies from a producer --------------------------------------------------

MALFORMED = [
    pytest.param(
        {
            "status": 200,
            "headers": [[b"content-length", b"2"], [b"content-length", b"3"]],
            "content": b"ok",
        },
        id="two-content-lengths",
    ),
    pytest.param({"status": 101, "headers": [[b"upgrade", b"websocket"]]}, id="101"),
    pytest.param({"status": 200, "headers": [[b"x-bad", b"a\r\nset-cookie: x=1"]]}, id="crlf"),
]


@pytest.mark.parametrize("reply", MALFORMED)
def test_a_malformed_reply_is_answered_502(layer_url: str, reply: dict[str, object]) -> None:
    layer = layer_from_url(layer_url)
    interface = InterfaceProcess(layer_url).start()
    try:
        with connect(interface.port) as sock:
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            deadline = time.monotonic() + 10
            channel, message = None, None
            while channel is None and time.monotonic() < deadline:
                channel, message = layer.receive(["http.request"], block=True)
            assert message is not None
            layer.send(message["reply_channel"], reply)
            answer = read_response(sock, 10)
    finally:
        interface.stop()
        layer.close()
    assert answer.startswith(b"HTTP/1.1 502"), answer[:300]
    assert b"set-cookie" not in answer
    log = interface.output
    assert log.count("malformed response") == 1
    assert "Traceback" not in log


@pytest.mark.slow
def test_a_client_leaving_mid_pipeline_logs_no_traceback(layer_url: str) -> None:
    with Stack(layer_url) as stack:
        for _ in range(20):
            with connect(stack.interface.port) as sock:
                sock.sendall(
                    b"GET /download?5000000 HTTP/1.1\r\nHost: x\r\n\r\n" * 3
                    + b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n" * 20
                )
                sock.recv(1000)
        _latency, reply = timed_get(stack.interface.port)
        time.sleep(1)
        stack.interface.stop()
        log = stack.interface.output
    assert reply.startswith(b"HTTP/1.1 200")
    assert "Exception in ASGI application" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
