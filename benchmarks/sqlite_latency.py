"""SQLite layer between two processes: send -> receive latency, and the CPU a receiver
blocked in ``receive(block=True)`` burns while nothing arrives. The Redis layer is
measured the same way for comparison.

Bars (SQLite): p50 send -> receive <= 5 ms; idle blocked receiver < 2 % of one core.

    python -m benchmarks.sqlite_latency [--quick] [--messages 500] [--interval 0.01]
        [--idle 5] [--backends sqlite,redis] [--json PATH]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _harness as h

CHANNEL = "bench.latency"
BAR_P50_MS = 5.0
BAR_IDLE_CPU = 2.0


def receiver(url: str, count: int, out: str, deadline: float) -> None:
    """The receiving process: block on CHANNEL, record monotonic send -> receive."""
    from wsgi_channels.layers import layer_from_url

    layer = layer_from_url(url)
    layer.receive([CHANNEL], block=False)  # open the connection before "ready"
    Path(out + ".ready").write_text("ready\n")
    latencies = []
    while len(latencies) < count and time.time() < deadline:
        channel, message = layer.receive([CHANNEL], block=True)
        if channel is not None:
            latencies.append((time.monotonic() - message["t"]) * 1e3)
    layer.close()
    Path(out).write_text(json.dumps(latencies))


def trial(procs: h.Procs, name: str, url: str, args: Any) -> dict[str, Any]:
    from wsgi_channels.layers import layer_from_url

    out = str(procs.logdir / f"receiver-{name}.json")
    deadline = time.time() + args.idle + args.messages * args.interval + 60
    proc = procs.start(f"receiver-{name}", [sys.executable, "-c",
        "import sys; from benchmarks.sqlite_latency import receiver; "
        "receiver(sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]))",
        url, str(args.messages), out, str(deadline)])  # fmt: skip
    if not h.sleep_until(
        lambda: os.path.exists(out + ".ready") or proc.popen.poll() is not None, 30
    ):
        raise TimeoutError(f"receiver {name} not ready")
    proc.check_alive()
    # Idle: the receiver blocks in receive() with nothing to read.
    with h.CpuMeter({"receiver": proc}) as cpu:
        time.sleep(args.idle)
    layer = layer_from_url(url)
    try:
        start = time.monotonic()
        for i in range(args.messages):
            time.sleep(max(0.0, start + i * args.interval - time.monotonic()))
            layer.send(CHANNEL, {"i": i, "t": time.monotonic()})
    finally:
        layer.close()
    proc.popen.wait(30)
    latencies = json.loads(Path(out).read_text())
    return {
        "layer": name,
        "messages": args.messages,
        "received": len(latencies),
        "p50_ms": h.percentile(latencies, 50),
        "p90_ms": h.percentile(latencies, 90),
        "p99_ms": h.percentile(latencies, 99),
        "max_ms": max(latencies) if latencies else None,
        "idle_cpu_pct": cpu.result["receiver"],
        "idle_s": args.idle,
    }


def main(argv: list[str] | None = None) -> h.Report:
    p = h.parser("sqlite_latency", __doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=500)
    p.add_argument("--interval", type=float, default=0.01, help="seconds between sends")
    p.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU measurement")
    p.add_argument("--backends", default="sqlite,redis")
    args = p.parse_args(argv)
    if args.quick:
        args.messages, args.idle = 50, 1.0
    backends = args.backends.split(",")
    h.require_components("layers/sqlite")
    report = h.Report("sqlite_latency", params={**vars(args), "json": str(args.json)})
    with h.Procs() as procs, tempfile.TemporaryDirectory(prefix="bench-sqlite-") as tmp:
        for name in backends:
            if name == "sqlite":
                url = f"sqlite:///{tmp}/layer.sqlite3"
            elif name == "redis":
                if (
                    h.REDIS_SERVER is None
                    or not (h.ROOT / "wsgi_channels/layers/redis.py").exists()
                ):
                    report.notes.append(
                        "redis layer skipped: redis-server or layers/redis.py missing"
                    )
                    continue
                url = procs.redis()
            else:
                raise SystemExit(f"unknown backend {name!r}")
            report.rows.append(trial(procs, name, url, args))
    print(
        f"Layer send -> receive between two processes, {args.messages} messages "
        f"{args.interval * 1e3:g} ms apart; idle CPU of a blocked receiver over {args.idle:g} s\n"
    )
    print(
        h.table(
            report.rows,
            ["layer", "received", "p50_ms", "p90_ms", "p99_ms", "max_ms", "idle_cpu_pct"],
        )
    )
    sqlite = next((r for r in report.rows if r["layer"] == "sqlite"), None)
    if sqlite:
        report.bars += [
            h.Bar("sqlite p50 send -> receive", sqlite["p50_ms"], BAR_P50_MS, unit=" ms"),
            h.Bar("sqlite idle receiver CPU", sqlite["idle_cpu_pct"], BAR_IDLE_CPU, "<", unit=" %"),
        ]
    report.print_bars()
    print(f"\nJSON: {report.write(args.json)}")
    return report


if __name__ == "__main__":
    sys.exit(h.run_main(main, sys.argv[1:]))
