"""Messages per second through each channel layer backend.

::

    python -m benchmarks.layer_throughput [--n 10000] [--json out.json] [--backends memory,sqlite]

Two loops per backend, each moving ``n`` small messages:

``alternate``
    one process sends a message and receives it back, ``n`` times: the latency of one
    send plus one receive, with nothing queued.
``two-process``
    one process sends ``n`` messages while another takes them with blocking receives:
    throughput with a producer and a consumer on the same queue. Not run on memory://,
    whose storage lives in one process.

SQLite runs on a file in a temporary directory; Redis on a redis-server of its own that
the script starts on a free port (skipped, with a note, when ``redis-server`` or redis-py
is missing). Prints a table and, with ``--json``, writes the figures to a file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from wsgi_channels.layers import ChannelFull, layer_from_url

CHANNEL = "bench.messages"
PAYLOAD = "x" * 100


def _message(i: int) -> dict[str, Any]:
    return {"n": i, "text": PAYLOAD}


def alternate(url: str, n: int) -> float:
    """Seconds for *n* rounds of send then receive in this process."""
    layer = layer_from_url(url)
    try:
        layer.flush()
        started = time.perf_counter()
        for i in range(n):
            layer.send(CHANNEL, _message(i))
            channel, message = layer.receive([CHANNEL])
            if channel is None or message["n"] != i:
                raise RuntimeError(f"round {i}: got {channel!r}, {message!r}")
        return time.perf_counter() - started
    finally:
        layer.close()


def _sender(url: str, n: int, ready: Any, go: Any) -> None:
    layer = layer_from_url(url)
    ready.set()
    go.wait()
    i = 0
    while i < n:
        try:
            layer.send(CHANNEL, _message(i))
        except ChannelFull:  # the receiver is behind: back off briefly
            time.sleep(0.0005)
            continue
        i += 1
    layer.close()


def _receiver(url: str, n: int, ready: Any, go: Any, done: Any) -> None:
    layer = layer_from_url(url)
    ready.set()
    go.wait()
    expected = 0
    deadline = time.monotonic() + 600
    while expected < n and time.monotonic() < deadline:
        channel, message = layer.receive([CHANNEL], block=True)
        if channel is None:
            continue
        if message["n"] != expected:
            done.put(("error", f"expected message {expected}, got {message['n']}"))
            return
        expected += 1
    layer.close()
    done.put(("ok", time.monotonic()) if expected == n else ("error", "timed out"))


def two_process(url: str, n: int) -> float:
    """Seconds for a sender process to pass *n* messages to a receiver process."""
    ctx = multiprocessing.get_context("spawn")
    layer = layer_from_url(url)
    layer.flush()
    layer.close()
    sender_ready, receiver_ready, go = ctx.Event(), ctx.Event(), ctx.Event()
    done = ctx.Queue()
    receiver = ctx.Process(target=_receiver, args=(url, n, receiver_ready, go, done))
    sender = ctx.Process(target=_sender, args=(url, n, sender_ready, go))
    receiver.start()
    sender.start()
    try:
        if not (receiver_ready.wait(60) and sender_ready.wait(60)):
            raise RuntimeError("the sender or receiver process did not start")
        started = time.monotonic()
        go.set()
        status, value = done.get(timeout=600)
        if status != "ok":
            raise RuntimeError(value)
        sender.join(60)
        receiver.join(60)
        return float(value) - started
    finally:
        for proc in (sender, receiver):
            if proc.is_alive():
                proc.kill()
                proc.join()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def redis_server() -> Iterator[str | None]:
    """A throwaway redis-server on a free port; yields its URL, or None (with a note
    on stderr) when Redis cannot be used here."""
    binary = shutil.which("redis-server")
    try:
        import redis  # noqa: F401
    except ImportError:
        binary = None
    if binary is None:
        print("redis: skipped (needs redis-server on PATH and redis-py)", file=sys.stderr)
        yield None
        return
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="layer-bench-redis-")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", workdir]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def run(n: int, backends: list[str]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    query = f"capacity={max(100, n)}"
    with tempfile.TemporaryDirectory(prefix="layer-bench-") as tmp, redis_server() as redis_url:
        urls = {
            "memory": "memory://",
            "sqlite": f"sqlite:///{os.path.join(tmp, 'bench.sqlite3')}",
            "redis": redis_url,
        }
        for backend in backends:
            base = urls[backend]
            if base is None:
                continue
            url = f"{base}?{query}"
            modes = [("alternate", alternate)]
            if backend != "memory":
                modes.append(("two-process", two_process))
            for mode, measure in modes:
                seconds = measure(url, n)
                results.append(
                    {
                        "backend": backend,
                        "mode": mode,
                        "messages": n,
                        "seconds": round(seconds, 4),
                        "messages_per_second": round(n / seconds, 1),
                    }
                )
    return results


def table(results: list[dict[str, Any]]) -> str:
    lines = [f"{'backend':<8} {'mode':<12} {'messages':>9} {'seconds':>9} {'msg/s':>10}"]
    for row in results:
        lines.append(
            f"{row['backend']:<8} {row['mode']:<12} {row['messages']:>9} "
            f"{row['seconds']:>9.3f} {row['messages_per_second']:>10.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10000, help="messages per run (default 10000)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    parser.add_argument(
        "--backends",
        default="memory,sqlite,redis",
        help="comma-separated subset of memory,sqlite,redis",
    )
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"memory", "sqlite", "redis"}
    if unknown or args.n < 1:
        parser.error(f"unknown backends {sorted(unknown)}" if unknown else "--n must be >= 1")
    results = run(args.n, backends)
    print(table(results))
    if args.json:
        report = {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "results": results,
        }
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
            out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
