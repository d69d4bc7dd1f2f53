"""Micro-measurements behind the suggested optimizations in README.md, each comparing
today's code path with the cheaper one suggested (emulated here, in this process only;
the library is not changed):

* ``receive()`` per member of an expanded group message: as is, and without the
  per-call fork check and channel-name validation (suggestion 1);
* one Redis command through redis-py's connection pool, and on a connection held by
  the thread (suggestion 2);
* ``encode_message`` (msgpack pack + strict unpack check) against a bare pack
  (suggestion 4).

    python -m benchmarks.micro [--quick] [--json PATH]
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _harness as h


def per_call_us(func: Callable[[], object], n: int) -> float:
    """Median of *n* timed calls, in microseconds, after a warm-up."""
    for _ in range(min(300, n)):
        func()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] * 1e6


def expanded_receive(url: str, members: int, rounds: int) -> tuple[float, float]:
    from wsgi_channels.layers import layer_from_url

    layer: Any = layer_from_url(f"{url}?capacity=100000")
    try:
        prefix = f"wsgi_channels.interface.{secrets.token_hex(16)}!"
        for _ in range(members):
            layer.group_add("micro", layer.new_channel(prefix))

        def drain() -> float:
            layer.send_group("micro", {"text": "x" * 64})
            t0 = time.perf_counter()
            count = 0
            while layer.receive([prefix], block=False)[0] is not None:
                count += 1
            return (time.perf_counter() - t0) / max(count, 1) * 1e6

        today = min(drain() for _ in range(rounds))
        validated: dict[tuple[str, ...], list[str]] = {}
        check_names = layer._receive_names

        def names_once(channels: list[str]) -> list[str]:
            key = tuple(channels)
            if key not in validated:
                validated[key] = check_names(channels)
            return validated[key]

        layer._check_fork = lambda: None
        layer._receive_names = names_once
        fast = min(drain() for _ in range(rounds))
        layer.flush()
    finally:
        layer.close()
    return today, fast


def redis_command(url: str, n: int) -> tuple[float, float]:
    import redis

    client = redis.Redis.from_url(url)
    held = client.connection_pool.get_connection()
    try:
        pooled = per_call_us(lambda: client.execute_command("PING"), n)

        def on_held() -> None:
            held.send_command("PING")
            held.read_response()

        direct = per_call_us(on_held, n)
    finally:
        client.connection_pool.release(held)
        client.close()
    return pooled, direct


def encoding(n: int) -> tuple[float, float]:
    import msgpack

    from wsgi_channels.layers.base import encode_message

    message = {
        "reply_channel": "wsgi_channels.interface.0123456789abcdef0123456789abcdef!x",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "query_string": b"",
        "root_path": "",
        "headers": [[b"host", b"127.0.0.1:8000"], [b"user-agent", b"wrk"]] * 3,
        "body": b"",
        "body_channel": None,
        "client": ["127.0.0.1", 50000],
        "server": ["127.0.0.1", 8000],
        "wsgi_channels.ext": 1,
        "wsgi_channels.deadline": time.time() + 60,
    }
    today = per_call_us(lambda: encode_message(message), n)
    bare = per_call_us(lambda: msgpack.packb(message, use_bin_type=True, datetime=False), n)
    return today, bare


def main(argv: list[str] | None = None) -> h.Report:
    p = h.parser("micro", __doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=5000)
    args = p.parse_args(argv)
    n, members, rounds = (500, 200, 2) if args.quick else (5000, args.members, 5)
    h.require_components("layers/redis")
    report = h.Report("micro", params={**vars(args), "json": str(args.json)})
    with h.Procs() as procs:
        url = procs.redis()
        today, fast = expanded_receive(url, members, rounds)
        report.rows.append(
            {
                "what": f"receive() per expanded member ({members})",
                "today_us": today,
                "suggested_us": fast,
            }
        )
        pooled, direct = redis_command(url, n)
        report.rows.append(
            {
                "what": "Redis PING: pool vs held connection",
                "today_us": pooled,
                "suggested_us": direct,
            }
        )
    today, bare = encoding(n)
    report.rows.append(
        {
            "what": "encode http.request: checked vs bare pack",
            "today_us": today,
            "suggested_us": bare,
        }
    )
    for row in report.rows:
        row["saved_us"] = row["today_us"] - row["suggested_us"]
        row["saved_pct"] = 100 * row["saved_us"] / row["today_us"]
    print("Micro-measurements (median or best of runs, microseconds)\n")
    print(h.table(report.rows, ["what", "today_us", "suggested_us", "saved_us", "saved_pct"]))
    print(f"\nJSON: {report.write(args.json)}")
    return report


if __name__ == "__main__":
    sys.exit(h.run_main(main, sys.argv[1:]))
