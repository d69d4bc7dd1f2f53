"""Group send cost by group size: our layers' ``Group(name).send()`` (Redis, SQLite)
against channels_redis' ``group_send``, with members spread over two process prefixes
(two interface processes), in the same run.

Per size the table shows the time of one send as seen by the sender (mean, p50, p99),
the setup cost per ``group_add``, and for our layers the receiving side's expansion:
how long one interface process takes to read the group message and hand out one
message per local member (half the members).

Bars (our Redis layer): a send to 10,000 members <= 2 ms, and <= 1.5x a send to 10.

    python -m benchmarks.group_send [--quick] [--sizes 10,1000,10000] [--sends 200]
        [--backends redis,sqlite,channels_redis] [--json PATH]
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _harness as h

BAR_MS_AT_10K = 2.0
BAR_RATIO = 1.5
GROUP_CAPACITY = 100_000  # so that timed sends never meet a full queue


def message(i: int) -> dict[str, Any]:
    return {"text": json.dumps({"i": i, "t": time.time(), "body": "x" * 64})}


def summarize(times_ms: list[float]) -> dict[str, float | None]:
    return {
        "mean_ms": sum(times_ms) / len(times_ms),
        "p50_ms": h.percentile(times_ms, 50),
        "p99_ms": h.percentile(times_ms, 99),
    }


def timed_rounds(
    sizes: list[int], sends: int, send: Callable[[int, int], Any]
) -> dict[int, list[float]]:
    """Time *sends* calls of ``send(size, i)`` per size, interleaving the sizes so that
    drift (CPU frequency, other load) hits them all alike; 10 untimed rounds first."""
    times: dict[int, list[float]] = {size: [] for size in sizes}
    for i in range(-min(10, sends), sends):
        for size in sizes:
            t0 = time.perf_counter()
            send(size, i)
            if i >= 0:
                times[size].append((time.perf_counter() - t0) * 1e3)
    return times


def bench_ours(url: str, sizes: list[int], sends: int) -> list[dict[str, Any]]:
    from wsgi_channels import Group
    from wsgi_channels.layers import layer_from_url

    layer = layer_from_url(f"{url}?capacity={GROUP_CAPACITY}")
    rows: dict[int, dict[str, Any]] = {}
    groups = {}
    try:
        layer.flush()
        for size in sizes:
            prefixes = [f"wsgi_channels.interface.{secrets.token_hex(16)}!" for _ in range(2)]
            group = groups[size] = Group(f"bench{size}", layer=layer)
            t0 = time.perf_counter()
            for i in range(size):
                group.add(layer.new_channel(prefixes[i % 2]))
            row = rows[size] = {"members": size}
            row["group_add_us"] = (time.perf_counter() - t0) / size * 1e6
            # One interface process's share: read one group message as its members'.
            group.send(message(-1))
            t0 = time.perf_counter()
            got = 0
            while layer.receive([prefixes[0]], block=False)[0] is not None:
                got += 1
            row["expand_ms"] = (time.perf_counter() - t0) * 1e3
            row["expand_us_per_member"] = row["expand_ms"] * 1e3 / max(got, 1)
            row["expanded"] = got
            while layer.receive([prefixes[1]], block=False)[0] is not None:
                pass
        before = layer.global_statistics()["group_full_count"]
        times = timed_rounds(sizes, sends, lambda size, i: groups[size].send(message(i)))
        skipped = layer.global_statistics()["group_full_count"] - before
        for size in sizes:
            rows[size].update(summarize(times[size]))
            rows[size]["skipped_full"] = skipped
        layer.flush()
    finally:
        layer.close()
    return list(rows.values())


def bench_channels_redis(url: str, sizes: list[int], sends: int) -> list[dict[str, Any]]:
    from channels_redis.core import RedisChannelLayer

    async def run() -> list[dict[str, Any]]:
        options = dict(hosts=[url], capacity=GROUP_CAPACITY, prefix="cr_bench")
        # Two layers stand for two interface processes: each has its own client prefix.
        procs = [RedisChannelLayer(**options) for _ in range(2)]
        sender = RedisChannelLayer(**options)
        rows: dict[int, dict[str, Any]] = {}
        try:
            await sender.flush()
            for size in sizes:
                t0 = time.perf_counter()
                for i in range(size):
                    await sender.group_add(f"bench{size}", await procs[i % 2].new_channel())
                add_us = (time.perf_counter() - t0) / size * 1e6
                rows[size] = {"members": size, "group_add_us": add_us}
            times: dict[int, list[float]] = {size: [] for size in sizes}
            for i in range(-min(10, sends), sends):
                for size in sizes:
                    payload = {"type": "bench.message", **message(i)}
                    t0 = time.perf_counter()
                    await sender.group_send(f"bench{size}", payload)
                    if i >= 0:
                        times[size].append((time.perf_counter() - t0) * 1e3)
            for size in sizes:
                rows[size].update(summarize(times[size]))
            await sender.flush()
        finally:
            for layer in [*procs, sender]:
                await layer.close_pools()
        return list(rows.values())

    return asyncio.run(run())


def size_bars(label: str, by_members: dict[int, dict[str, Any]], sizes: list[int]) -> list[h.Bar]:
    """The group send bars of one layer (*by_members*: its rows by group size): the
    cost at the largest size, and that cost over the cost at the smallest."""
    largest, smallest = max(sizes), sizes[0]
    at_largest = by_members[largest]["mean_ms"]
    return [
        h.Bar(f"{label}: ms per send at {largest} members", at_largest, BAR_MS_AT_10K, unit=" ms"),
        h.Bar(
            f"{label}: send at {largest} / send at {smallest}",
            at_largest / by_members[smallest]["mean_ms"],
            BAR_RATIO,
        ),
    ]


def main(argv: list[str] | None = None) -> h.Report:
    p = h.parser("group_send", __doc__.splitlines()[0])
    p.add_argument("--sizes", default="10,1000,10000")
    p.add_argument("--sends", type=int, default=200, help="timed sends per size")
    p.add_argument("--backends", default="redis,sqlite,channels_redis")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.sends = "10,100", 10
    sizes = [int(s) for s in args.sizes.split(",")]
    backends = args.backends.split(",")
    report = h.Report("group_send", params={**vars(args), "json": str(args.json)})
    runners: dict[str, Callable[[str], list[dict[str, Any]]]] = {}
    with h.Procs() as procs, tempfile.TemporaryDirectory(prefix="bench-sqlite-") as tmp:
        if "redis" in backends or "channels_redis" in backends:
            url = procs.redis()
        if "redis" in backends:
            h.require_components("layers/redis", "sender")
            runners["wsgi_channels redis"] = lambda u=url: bench_ours(u, sizes, args.sends)
        if "sqlite" in backends:
            h.require_components("layers/sqlite", "sender")
            sqlite_url = f"sqlite:///{tmp}/layer.sqlite3"
            runners["wsgi_channels sqlite"] = lambda: bench_ours(sqlite_url, sizes, args.sends)
        if "channels_redis" in backends:
            runners["channels_redis"] = lambda u=url: bench_channels_redis(u, sizes, args.sends)
        rows = []
        for name, run in runners.items():
            for row in run():
                rows.append({"layer": name, **row})
    by_layer: dict[str, dict[int, dict[str, Any]]] = {}
    for row in rows:
        by_layer.setdefault(row["layer"], {})[row["members"]] = row
    for row in rows:
        smallest = by_layer[row["layer"]][sizes[0]]
        row[f"x_vs_{sizes[0]}"] = row["mean_ms"] / smallest["mean_ms"]
        cr = by_layer.get("channels_redis", {}).get(row["members"])
        row["x_vs_channels_redis"] = row["mean_ms"] / cr["mean_ms"] if cr else None
    report.rows = rows
    print(
        f"Group send, {args.sends} timed sends per size (sizes interleaved), members over "
        "2 process prefixes\n"
    )
    columns = ["layer", "members", "mean_ms", "p50_ms", "p99_ms", f"x_vs_{sizes[0]}"]
    print(
        h.table(
            rows,
            [*columns, "x_vs_channels_redis", "group_add_us", "expand_ms", "expand_us_per_member"],
        )
    )
    title = f"Group send, {args.sends} timed sends per size (sizes interleaved)"
    print("\n" + h.run_header(title, "group_send", argv))
    md_columns = [("layer", "layer"), ("members", "members"), ("mean_ms", "mean ms"),
                  ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
                  (f"x_vs_{sizes[0]}", f"vs {sizes[0]} members"),
                  ("x_vs_channels_redis", "vs channels_redis"),
                  ("expand_us_per_member", "receiver expansion µs/member")]  # fmt: skip
    print(h.markdown(rows, md_columns))
    ours = by_layer.get("wsgi_channels redis", {})
    if ours:
        report.bars += size_bars("redis", ours, sizes)
    report.notes.append(
        "expand_ms: one receiving process reads the group message and yields one message "
        "per local member (half the group); channels_redis writes one message per member "
        "at send time instead."
    )
    report.print_bars()
    print(f"\nJSON: {report.write(args.json)}")
    return report


if __name__ == "__main__":
    sys.exit(h.run_main(main, sys.argv[1:]))
