"""The CPU cost of the Prometheus metrics hooks for one HTTP request, in process.

It makes the hook calls that one request causes with ``--metrics`` off (the no-op
recorder) and on (prometheus-client), without a server, a layer or a socket. The calls
are: the interface's send wrapper and its two ASGI sends, one send round trip of one
message, one delivered reply; the worker's take, its reply send and the end of the
message. Each figure is the best of 5 runs of 50,000 requests. Batches hold a single
message here, so this is the upper bound: under load the per-batch calls are shared by
several requests.

    python -m benchmarks.metrics_hooks
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wsgi_channels.metrics import NULL_METRICS, Metrics, Recorder

REQUESTS = 50_000
RUNS = 5
REPLY = "wsgi_channels.interface.0123456789abcdef0123456789abcdef!0123456789abcdef"
START = {"type": "http.response.start", "status": 200, "headers": []}
BODY = {"type": "http.response.body", "body": b"hello", "more_body": False}
BATCH: list[tuple[tuple[str, Any, Any], Any]] = [(("http.request", b"", 0.0), None)]
ENTRIES = [([REPLY], {})]
TAKEN = [("http.request", {})]


async def _send(message: Any) -> None:
    pass


async def one_request(interface: Recorder, worker: Recorder) -> None:
    send = interface.http_send(_send)
    started = interface.clock()
    interface.flushed(BATCH, [True], started)
    worker.taken(TAKEN)
    started = worker.clock()
    worker.sent(REPLY, started)
    worker.finished()
    interface.delivered(ENTRIES)
    await send(START)
    await send(BODY)


async def per_request(interface: Recorder, worker: Recorder) -> float:
    started = time.perf_counter()
    for _ in range(REQUESTS):
        await one_request(interface, worker)
    return (time.perf_counter() - started) / REQUESTS * 1e6


async def main() -> None:
    import prometheus_client

    registry = prometheus_client.CollectorRegistry()
    on = (Metrics("interface", registry=registry), Metrics("worker", registry=registry))
    best = {"off": float("inf"), "on": float("inf")}
    for _ in range(RUNS):
        best["off"] = min(best["off"], await per_request(NULL_METRICS, NULL_METRICS))
        best["on"] = min(best["on"], await per_request(*on))
    print(
        f"metrics hooks per HTTP request (best of {RUNS} x {REQUESTS:,}): "
        f"off {best['off']:.2f} µs, on {best['on']:.2f} µs, "
        f"cost of metrics on {best['on'] - best['off']:.2f} µs"
    )


if __name__ == "__main__":
    asyncio.run(main())
