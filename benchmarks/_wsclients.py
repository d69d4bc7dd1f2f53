"""WebSocket client processes for the fan-out and memory scenarios.

Run as ``python -m benchmarks._wsclients MODE PORT PATH COUNT OUTFILE DEADLINE
[EXPECTED] [COMPRESSION]``:

* ``fanout``: open COUNT connections, write ``OUTFILE.ready``, then record every
  message received (``{"i": ..., "t": ...}`` JSON) until each connection has
  EXPECTED messages, the stream goes quiet, or DEADLINE (Unix time); write the
  receipts' summary to OUTFILE as JSON.
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
    elif mode == "idle":
        asyncio.run(idle(int(port), path, int(count), out, float(deadline), argv[6]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
