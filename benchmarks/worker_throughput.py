"""Requests per second of one Worker on the memory layer vs calling the app directly.

    python benchmarks/worker_throughput.py                 # default: 5000 requests
    python benchmarks/worker_throughput.py --n 200 --json out.json

Both sides run the same Flask hello-world app in this process. "direct" is the least a
WSGI server can do: a fresh environ, the call, reading and closing the body. "worker"
is a client thread keeping ``--inflight`` ``http.request`` messages in flight on a
``MemoryChannelLayer`` (msgpack-encoded, as every layer does) and reading the replies,
with a real :class:`~wsgi_channels.worker.Worker` serving them. The ratio
worker/direct is the share of the app's own speed that survives the channel layer.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flask import Flask

from wsgi_channels.layers.memory import MemoryChannelLayer
from wsgi_channels.protocol import DEADLINE_KEY, EXT_KEY
from wsgi_channels.worker import Worker


def make_app() -> Flask:
    app = Flask("bench")

    @app.get("/")
    def hello() -> str:
        return "Hello, World!"

    return app


def bench_direct(app: Any, n: int) -> float:
    template = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "bench",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    status: list[str] = []

    def start_response(s: str, headers: Any, exc_info: Any = None) -> Any:
        status.append(s)
        return None

    started = time.perf_counter()
    for _ in range(n):
        environ = dict(template)
        environ["wsgi.input"] = io.BytesIO(b"")
        result = app(environ, start_response)
        try:
            b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
    elapsed = time.perf_counter() - started
    assert status[-1] == "200 OK"
    return n / elapsed


def bench_worker(app: Any, n: int, inflight: int, threads: int) -> float:
    layer = MemoryChannelLayer(capacity=10 * inflight + 100)
    worker = Worker(app, layer, threads=threads)
    server = threading.Thread(target=worker.serve, daemon=True)
    server.start()
    prefix = "bench.reply!"

    def message() -> dict[str, Any]:
        return {
            "reply_channel": layer.new_channel(prefix),
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/",
            "query_string": b"",
            "root_path": "",
            "headers": [[b"host", b"bench"]],
            "body": b"",
            "body_channel": None,
            "client": ["127.0.0.1", 1],
            "server": ["bench", 80],
            EXT_KEY: 1,
            DEADLINE_KEY: time.time() + 60,
        }

    # Warm up (imports, first-request work in Flask).
    layer.send("http.request", message())
    while layer.receive([prefix], block=True)[0] is None:
        pass

    sent = done = 0
    started = time.perf_counter()
    while sent < min(inflight, n):
        layer.send("http.request", message())
        sent += 1
    while done < n:
        channel, reply = layer.receive([prefix], block=True)
        if channel is None:
            continue
        if reply.get("more_content"):
            continue
        if reply.get("status", 200) != 200:
            raise RuntimeError(f"unexpected reply {reply!r}")
        done += 1
        if sent < n:
            layer.send("http.request", message())
            sent += 1
    elapsed = time.perf_counter() - started
    worker.stop()
    server.join(5)
    return n / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="requests per measurement")
    parser.add_argument("--inflight", type=int, default=16, help="requests in flight")
    parser.add_argument("--threads", type=int, default=8, help="worker threads")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    app = make_app()
    bench_direct(app, min(args.n, 200))  # warm up
    direct = bench_direct(app, args.n)
    worker = bench_worker(app, args.n, args.inflight, args.threads)
    ratio = worker / direct
    print(f"direct WSGI call : {direct:10.0f} req/s")
    print(
        f"worker (memory)  : {worker:10.0f} req/s  ({args.threads} threads, "
        f"{args.inflight} in flight)"
    )
    print(f"ratio            : {ratio:10.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "benchmark": "worker_throughput",
                    "n": args.n,
                    "inflight": args.inflight,
                    "threads": args.threads,
                    "direct_rps": round(direct, 1),
                    "worker_rps": round(worker, 1),
                    "ratio": round(ratio, 4),
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                },
                f,
                indent=2,
            )
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
