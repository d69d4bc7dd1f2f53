"""Load generators and probes for the fault and security tests: HTTP clients in threads
that record every request's outcome, a WebSocket client that reconnects, the RSS of a
process, and a raw WebSocket client that speaks frames byte by byte.

Loads go to 127.0.0.1 only and are bounded: a fixed number of threads, each with a
client timeout, running until told to stop.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import os
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import websockets


def rss_kb(pid: int) -> int:
    """Resident set size of *pid* in KiB, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Result:
    """One HTTP request: when it started and ended (monotonic), and its status or the
    name of the exception the client saw."""

    start: float
    end: float
    status: int | None
    error: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.end - self.start


def http_get(port: int, path: str, timeout: float) -> Result:
    """One GET on a fresh connection (``Connection: close``)."""
    start = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return Result(start, time.monotonic(), response.status, headers=headers)
    except Exception as exc:
        return Result(start, time.monotonic(), None, type(exc).__name__)
    finally:
        conn.close()


class HttpLoad:
    """*concurrency* threads sending GET *path* back to back (each pausing *pause* s
    between requests) until :meth:`stop`; every outcome lands in ``results``."""

    def __init__(
        self,
        port: int,
        path: str,
        *,
        concurrency: int,
        timeout: float,
        pause: float = 0.0,
    ) -> None:
        self.port = port
        self.path = path
        self.timeout = timeout
        self.pause = pause
        self.results: list[Result] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, name=f"load-{i}", daemon=True)
            for i in range(concurrency)
        ]

    def __enter__(self) -> HttpLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            result = http_get(self.port, self.path, self.timeout)
            with self._lock:
                self.results.append(result)
            if self.pause:
                self._stop.wait(self.pause)

    def stop(self) -> list[Result]:
        """Stop starting requests, wait for those in flight, return all results."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        return self.results

    def snapshot(self) -> list[Result]:
        with self._lock:
            return list(self.results)


def summary(results: Iterable[Result]) -> dict[str, int]:
    """Outcome -> count, e.g. ``{"200": 812, "503": 14, "ConnectionRefusedError": 2}``."""
    counts: dict[str, int] = {}
    for result in results:
        key = str(result.status) if result.status is not None else str(result.error)
        counts[key] = counts.get(key, 0) + 1
    return counts


class ReconnectingEcho:
    """A WebSocket client in its own thread: connects to *url*, sends a numbered frame
    every *interval* s and waits for its echo; on any failure it records it and
    connects again. ``echoes`` holds the monotonic time of every echo received."""

    def __init__(self, url: str, *, interval: float = 0.05, timeout: float = 5.0) -> None:
        self.url = url
        self.interval = interval
        self.timeout = timeout
        self.echoes: list[float] = []
        self.failures: list[tuple[float, str]] = []
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(),), daemon=True)

    def __enter__(self) -> ReconnectingEcho:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 5)

    async def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                async with websockets.connect(
                    self.url, open_timeout=self.timeout, close_timeout=1
                ) as ws:
                    self.connections += 1
                    while not self._stop.is_set():
                        n += 1
                        await ws.send(f"echo {n}")
                        reply = await asyncio.wait_for(ws.recv(), self.timeout)
                        if reply != f"echo {n}":
                            raise AssertionError(f"sent echo {n}, got {reply!r}")
                        self.echoes.append(time.monotonic())
                        await asyncio.sleep(self.interval)
            except Exception as exc:
                self.failures.append((time.monotonic(), type(exc).__name__))
                await asyncio.sleep(0.2)


# -- raw WebSocket frames ----------------------------------------------------------------


def ws_handshake(
    port: int, path: str, *, headers: dict[str, str] | None = None, rcvbuf: int | None = None
) -> tuple[socket.socket, bytes]:
    """Open a TCP connection and send a WebSocket handshake by hand; returns the socket
    and the raw response head (``HTTP/1.1 101 ...`` when accepted)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    return sock, head


def ws_frame(opcode: int, payload: bytes, *, mask: bool = True, fin: bool = True) -> bytes:
    """One WebSocket frame (RFC 6455 5.2); clients must mask, servers must not."""
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", first, (0x80 if mask else 0) | length)
    elif length < 65536:
        head = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, length)
    else:
        head = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def read_frames(sock: socket.socket, timeout: float) -> tuple[int, int | None]:
    """Read server frames until a close frame or EOF (or *timeout*); returns (data
    frames seen, close code), the code being -1 for EOF without a close frame and
    None when the time ran out with the connection open."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    buffer = b""
    frames = 0

    eof = False

    def need(n: int) -> bool:
        nonlocal buffer, eof
        while len(buffer) < n:
            if time.monotonic() > deadline:
                return False
            try:
                chunk = sock.recv(1 << 20)
            except TimeoutError:
                return False
            except OSError:
                chunk = b""
            if not chunk:
                eof = True
                return False
            buffer += chunk
        return True

    while True:
        if not need(2):
            return frames, -1 if eof else None
        opcode = buffer[0] & 0x0F
        length = buffer[1] & 0x7F
        offset = 2
        if length == 126:
            if not need(4):
                return frames, -1 if eof else None
            length = struct.unpack("!H", buffer[2:4])[0]
            offset = 4
        elif length == 127:
            if not need(10):
                return frames, -1 if eof else None
            length = struct.unpack("!Q", buffer[2:10])[0]
            offset = 10
        if not need(offset + length):
            return frames, -1 if eof else None
        payload = buffer[offset : offset + length]
        buffer = buffer[offset + length :]
        if opcode == 0x8:
            return frames, struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        frames += 1
