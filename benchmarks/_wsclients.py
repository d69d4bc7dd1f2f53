"""WebSocket client processes for the fan-out and memory scenarios.

Run as ``python -m benchmarks._wsclients MODE PORT PATH COUNT OUTFILE DEADLINE
[EXPECTED] [COMPRESSION]``:

* ``fanout``: open COUNT connections, write ``OUTFILE.ready``, then record every
  message received (``{"i": ..., "t": ...}`` JSON) until each connection has
  EXPECTED messages, the stream goes quiet, or DEADLINE (Unix time); write the
  receipts' summary to OUTFILE as JSON.
* ``fanout-raw``: the same as ``fanout`` with a lean client of our own (an asyncio
  ``Protocol`` per socket that parses the server's unmasked frames itself, no
  permessage-deflate), so that one client process holds thousands of sockets and keeps
  up with tens of thousands of frames per second; the fan-out measures the interface,
  not the client library.
* ``idle``: open COUNT connections, write ``OUTFILE.ready``, hold them open until
  ``OUTFILE.release`` appears or DEADLINE, then close them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from typing import Any

QUIET_SECONDS = 5.0
CONNECT_CONCURRENCY = 50


async def open_many(port: int, path: str, count: int, compression: str) -> tuple[list[Any], int]:
    from websockets.asyncio.client import connect

    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
    uri = f"ws://127.0.0.1:{port}{path}"

    async def one() -> Any:
        async with sem:
            return await connect(
                uri,
                origin=f"http://127.0.0.1:{port}",  # type: ignore[arg-type]
                compression="deflate" if compression == "deflate" else None,
                ping_interval=None,
                open_timeout=60,
                max_queue=None,
            )

    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    conns = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        print(f"{len(errors)} connections failed, first: {errors[0]!r}", file=sys.stderr)
    return conns, len(errors)


async def fanout(
    port: int, path: str, count: int, out: str, deadline: float, expected: int, compression: str
) -> None:
    conns, failed = await open_many(port, path, count, compression)
    received = 0
    last_arrival = [0.0]
    per_send: dict[int, list[float]] = {}  # i -> [count, send t, last receipt t]
    latencies: list[float] = []
    duplicates = 0
    done = asyncio.Event()
    total_expected = len(conns) * expected

    async def reader(ws: Any) -> None:
        nonlocal received, duplicates
        seen: set[int] = set()
        try:
            async for frame in ws:
                now = time.time()
                data = json.loads(frame)
                i = data["i"]
                if i in seen:
                    duplicates += 1
                    continue
                seen.add(i)
                entry = per_send.setdefault(i, [0, data["t"], 0.0])
                entry[0] += 1
                entry[2] = max(entry[2], now)
                latencies.append((now - data["t"]) * 1e3)
                received += 1
                last_arrival[0] = now
                if received >= total_expected:
                    done.set()
        except Exception:
            pass

    tasks = [asyncio.create_task(reader(ws)) for ws in conns]
    with open(out + ".ready", "w") as f:
        f.write(f"{len(conns)} {failed}\n")
    while not done.is_set() and time.time() < deadline:
        arrived = last_arrival[0]
        if arrived and time.time() - arrived > QUIET_SECONDS:
            break
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), 0.2)
    await close_all(conns)
    for task in tasks:
        task.cancel()
    summary = {
        "connected": len(conns),
        "failed": failed,
        "received": received,
        "duplicates": duplicates,
        "per_send": {str(i): v for i, v in per_send.items()},
        "latencies_ms": latencies,
    }
    with open(out + ".tmp", "w") as f:
        json.dump(summary, f)
    os.replace(out + ".tmp", out)


class RawSocket(asyncio.Protocol):
    """One client WebSocket: writes the opening handshake, then hands each text frame's
    payload to *on_text*. Server frames are unmasked; the client's few frames (pong,
    close) carry a zero mask key, which RFC 6455 allows."""

    def __init__(self, request: bytes, on_text: Any) -> None:
        self.request = request
        self.on_text = on_text
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.buf = bytearray()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.opened.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            del buf[: end + 4]
            if b" 101 " not in status + b" ":
                self.opened.set_exception(ConnectionError(status.decode("latin-1")))
                self.transport.close()
                return
            self.opened.set_result(None)
        while len(buf) >= 2:
            length, start = buf[1] & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    return
                length, start = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length, start = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < start + length:
                return
            opcode = buf[0] & 0x0F
            payload = bytes(buf[start : start + length])
            del buf[: start + length]
            if opcode == 1:
                self.on_text(payload)
            elif opcode == 9:  # ping -> pong with the same payload
                self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + b"\0" * 4 + payload)
            elif opcode == 8:
                self.transport.close()

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self.transport.write(b"\x88\x82\0\0\0\0\x03\xe8")  # close 1000
            self.transport.close()


async def fanout_raw(
    port: int, path: str, count: int, out: str, deadline: float, expected: int
) -> None:
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
    per_send: dict[int, list[float]] = {}  # i -> [count, send t, last receipt t]
    latencies: list[float] = []
    state = {"received": 0, "last": 0.0}
    done = asyncio.Event()

    def on_text(payload: bytes) -> None:
        now = time.time()
        data = json.loads(payload)
        entry = per_send.get(data["i"])
        if entry is None:
            entry = per_send[data["i"]] = [0, data["t"], 0.0]
        entry[0] += 1
        entry[2] = now
        latencies.append((now - data["t"]) * 1e3)
        state["received"] += 1
        state["last"] = now
        if state["received"] >= total_expected:
            done.set()

    import base64

    async def one() -> RawSocket:
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:{port}\r\n\r\n"
        ).encode()
        async with sem:
            _, sock = await loop.create_connection(
                lambda: RawSocket(request, on_text), "127.0.0.1", port
            )
            await asyncio.wait_for(sock.opened, 60)
            return sock

    total_expected = count * expected
    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    conns = [r for r in results if isinstance(r, RawSocket)]
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        print(f"{len(errors)} connections failed, first: {errors[0]!r}", file=sys.stderr)
    total_expected = len(conns) * expected
    with open(out + ".ready", "w") as f:
        f.write(f"{len(conns)} {len(errors)}\n")
    while not done.is_set() and time.time() < deadline:
        if state["last"] and time.time() - state["last"] > QUIET_SECONDS:
            break
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), 0.2)
    for sock in conns:
        sock.close()
    await asyncio.sleep(0.2)
    summary = {
        "connected": len(conns),
        "failed": len(errors),
        "received": state["received"],
        # A duplicate would show as a send counted more often than there are sockets.
        "duplicates": sum(max(0, int(v[0]) - len(conns)) for v in per_send.values()),
        "per_send": {str(i): v for i, v in per_send.items()},
        "latencies_ms": latencies,
    }
    with open(out + ".tmp", "w") as f:
        json.dump(summary, f)
    os.replace(out + ".tmp", out)


async def idle(
    port: int, path: str, count: int, out: str, deadline: float, compression: str
) -> None:
    conns, failed = await open_many(port, path, count, compression)
    with open(out + ".ready", "w") as f:
        f.write(f"{len(conns)} {failed}\n")
    while time.time() < deadline and not os.path.exists(out + ".release"):
        await asyncio.sleep(0.05)
    await close_all(conns)
    with open(out, "w") as f:
        json.dump({"connected": len(conns), "failed": failed}, f)


async def close_all(conns: list[Any]) -> None:
    async def close(ws: Any) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 2)

    for start in range(0, len(conns), 500):
        await asyncio.gather(*(close(ws) for ws in conns[start : start + 500]))


async def echo_rate(
    port: int, path: str, concurrency: int, seconds: float, compression: str
) -> dict[str, float]:
    """Round trips per second: *concurrency* connections each send a text frame and
    wait for its echo, for *seconds*. Also returns the round trip's p50/p99 (ms)."""
    conns, failed = await open_many(port, path, concurrency, compression)
    if failed:
        raise RuntimeError(f"{failed} echo connections failed")
    times: list[float] = []
    end = time.perf_counter() + seconds
    payload = json.dumps({"hello": "x" * 32})

    async def loop(ws: Any) -> None:
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            await ws.send(payload)
            await ws.recv()
            times.append((time.perf_counter() - t0) * 1e3)

    start = time.perf_counter()
    await asyncio.gather(*(loop(ws) for ws in conns))
    elapsed = time.perf_counter() - start
    await close_all(conns)
    times.sort()
    return {
        "rate": len(times) / elapsed,
        "p50_ms": times[len(times) // 2] if times else float("nan"),
        "p99_ms": times[int(len(times) * 0.99)] if times else float("nan"),
    }


def main(argv: list[str]) -> None:
    mode, port, path, count, out, deadline = argv[:6]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, int(count) + 256)), hard))
    if mode == "fanout":
        expected, compression = int(argv[6]), argv[7]
        asyncio.run(
            fanout(int(port), path, int(count), out, float(deadline), expected, compression)
        )
    elif mode == "fanout-raw":
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(fanout_raw(int(port), path, int(count), out, float(deadline), int(argv[6])))
    elif mode == "idle":
        asyncio.run(idle(int(port), path, int(count), out, float(deadline), argv[6]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
