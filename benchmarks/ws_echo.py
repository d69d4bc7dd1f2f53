"""WebSocket echo through the worker: round trips per second and their p50/p99 at 1 and
at 32 concurrent sockets (each sends a text frame and waits for its echo), through
``wsgi-channels interface`` -> Redis -> ``wsgi-channels worker`` (``benchmarks.apps:ws``,
route ``/idle`` echoes what it receives) against a Channels 4 echo consumer with
channels_redis under uvicorn (``benchmarks/channels_echo/``), side by side in one run:
fresh processes for every measurement, targets interleaved over ``--rounds`` rounds,
medians reported.

Aim: ours >= 1.0x Channels at 1 and at 32 sockets.

    python -m benchmarks.ws_echo [--rounds 3] [--duration 5] [--sockets 1,32]
        [--split 1:1:8] [--quick] [--json PATH]
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _harness as h
from benchmarks._wsclients import echo_rate
from benchmarks.http_throughput import parse_split

APP = "benchmarks.apps:ws"
CHANNELS = "Channels 4 echo consumer + channels_redis, uvicorn"
BAR_RATIO = 1.0


def start_ours(procs: h.Procs, split: tuple[int, int, int]) -> tuple[int, str, dict[str, Any]]:
    interfaces, workers, threads = split
    url = procs.redis()
    redis_proc = procs.procs[-1]
    interface, port = procs.interface(url, workers=interfaces)
    worker_procs = [procs.worker(APP, url, threads=threads) for _ in range(workers)]
    h.wait_http_ok(port, procs=[interface, *worker_procs])
    return port, "/idle", {"interface": interface, "worker": worker_procs, "redis": redis_proc}


def start_channels(procs: h.Procs) -> tuple[int, str, dict[str, Any]]:
    try:
        import channels  # noqa: F401
        import channels_redis  # noqa: F401
    except ImportError as exc:
        raise h.Skip(f"channels and channels-redis are needed (the test extra): {exc}") from exc
    url = procs.redis()
    redis_proc = procs.procs[-1]
    port = h.free_port()
    argv = [sys.executable, "-m", "uvicorn", "benchmarks.channels_echo.asgi:application",
            "--host", h.HOST, "--port", str(port), "--lifespan", "off", "--no-access-log",
            "--log-level", "warning"]  # fmt: skip
    server = procs.start(f"channels-uvicorn-{port}", argv, CHANNELS_ECHO_REDIS=url)
    h.wait_for_port(port, proc=server)
    return port, "/ws", {"uvicorn": server, "redis": redis_proc}


def measure(start: Any, sockets: list[int], seconds: float) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with h.Procs() as procs:
        port, path, groups = start(procs)
        asyncio.run(echo_rate(port, path, 2, min(0.5, seconds), "none"))  # warm-up
        with h.CpuMeter(groups) as cpu:
            for n in sockets:
                got = asyncio.run(echo_rate(port, path, n, seconds, "none"))
                result[f"rate_{n}"] = got["rate"]
                result[f"p50_{n}"] = got["p50_ms"]
                result[f"p99_{n}"] = got["p99_ms"]
        for group in groups.values():
            for proc in group if isinstance(group, list) else [group]:
                proc.check_alive()
    result["cpu"] = " ".join(f"{k}={v:g}%" for k, v in cpu.result.items())
    return result


def main(argv: list[str] | None = None) -> h.Report:
    p = h.parser("ws_echo", __doc__.splitlines()[0])
    h.add_rounds_options(p, rounds=3, duration=5.0)
    p.add_argument("--sockets", default="1,32", help="concurrent sockets, comma-separated")
    p.add_argument("--split", default="1:1:8", help="wsgi-channels I:W:T")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 0.5
    sockets = [int(n) for n in args.sockets.split(",")]
    split = parse_split(args.split)
    h.require_components("cli", "interface", "worker", "layers/redis")
    i, w, t = split
    mine = f"wsgi-channels {i} interface + {w} worker x{t} threads, {h.redis_label()}"
    starts = {CHANNELS: start_channels, mine: lambda procs: start_ours(procs, split)}
    report = h.Report("ws_echo", params={**vars(args), "json": str(args.json)})
    results = h.interleaved(
        args.rounds, list(starts), lambda t: measure(starts[t], sockets, args.duration)
    )
    keys = [f"{k}_{n}" for n in sockets for k in ("rate", "p50", "p99")] + ["loadavg_1m"]
    rows = []
    for label, runs in results.items():
        row = {"server": label, **h.medians(runs, keys)}
        row["cpu"] = next((r["cpu"] for r in reversed(runs) if "cpu" in r), None)
        row["runs"] = runs
        rows.append(row)
    base = rows[0]
    for row in rows:
        for n in sockets:
            row[f"x_{n}"] = h.ratio(row[f"rate_{n}"], base[f"rate_{n}"])
    report.rows = rows
    title = (
        f"WebSocket echo through the worker, {args.duration:g} s per socket count, "
        f"{args.rounds} rounds interleaved, medians"
    )
    print("\n" + h.run_header(title, "ws_echo", argv))
    columns: list[tuple[str, str]] = [("server", "server")]
    for n in sockets:
        columns += [(f"rate_{n}", f"{n} socket{'s' if n > 1 else ''}: msg/s"),
                    (f"x_{n}", "vs Channels"), (f"p50_{n}", "p50 ms"),
                    (f"p99_{n}", "p99 ms")]  # fmt: skip
    columns += [("loadavg_1m", "load 1m"), ("cpu", "cpu (% of a core, last round)")]
    print(h.markdown(rows, columns))
    for n in sockets:
        report.bars.append(
            h.Bar(f"echo msg/s vs Channels at {n} sockets", rows[1][f"x_{n}"], BAR_RATIO, ">=")
        )
    report.notes.append(
        "msg/s = echo round trips completed per second over all sockets; Channels runs "
        "under uvicorn's default WebSocket implementation, ours under its own (wsproto)."
    )
    report.print_bars()
    print(f"\nJSON: {report.write(args.json)}")
    return report


if __name__ == "__main__":
    sys.exit(h.run_main(main, sys.argv[1:]))
