"""HTTP latency at concurrency 1: the same Flask hello-world under gunicorn sync workers
and behind wsgi-channels over Redis, in the same run (``wrk -t1 -c1 --latency``).

Bars: bridge p50 <= gunicorn p50 + 0.4 ms and bridge p99 <= gunicorn p99 + 1.0 ms.

    python -m benchmarks.http_latency [--quick] [--duration 10] [--gunicorn-workers 2]
        [--splits 1:1:4] [--json PATH]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _harness as h
from benchmarks.http_throughput import (
    measure,
    parse_split,
    split_label,
    start_bridge,
    start_gunicorn,
)

BAR_P50_MS = 0.4
BAR_P99_MS = 1.0


def main(argv: list[str] | None = None) -> h.Report:
    p = h.parser("http_latency", __doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--gunicorn-workers", type=int, default=2)
    p.add_argument("--splits", default="1:1:4", help="bridge splits I:W:T, comma-separated")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 1.0, 0.0
    splits = [parse_split(s) for s in args.splits.split(",")]
    if h.WRK is None:
        raise h.Skip("wrk is not installed (apt-get install wrk)")
    h.require_components("cli", "interface", "worker", "layers/redis")

    load = dict(threads=1, connections=1, seconds=args.duration)
    report = h.Report("http_latency", params={**vars(args), "json": str(args.json), "wrk": load})
    base = measure(
        lambda procs: start_gunicorn(procs, args.gunicorn_workers), warmup=args.warmup, **load
    )
    rows: list[dict[str, Any]] = [{"config": f"gunicorn sync -w {args.gunicorn_workers}", **base}]
    for split in splits:
        result = measure(lambda procs, s=split: start_bridge(procs, s), warmup=args.warmup, **load)
        rows.append({"config": split_label(split), **result})
    for row in rows:
        row["cpu"] = " ".join(f"{k}={v:g}%" for k, v in row["cpu_pct"].items())
        row["p50_delta_ms"] = row["p50_ms"] - base["p50_ms"]
        row["p99_delta_ms"] = row["p99_ms"] - base["p99_ms"]
    report.rows = rows
    print(f"HTTP latency, wrk -t1 -c1 -d{args.duration:g}s --latency (ms)\n")
    columns = ["config", "rps", "p50_ms", "p75_ms", "p90_ms", "p99_ms", "max_ms"]
    print(h.table(rows, [*columns, "p50_delta_ms", "p99_delta_ms", "errors", "cpu"]))
    best = min(rows[1:], key=lambda r: r["p50_ms"])
    report.bars += [
        h.Bar(
            f"bridge p50 - gunicorn p50 ({best['config']})",
            best["p50_delta_ms"],
            BAR_P50_MS,
            unit=" ms",
        ),
        h.Bar(
            f"bridge p99 - gunicorn p99 ({best['config']})",
            best["p99_delta_ms"],
            BAR_P99_MS,
            unit=" ms",
        ),
    ]
    report.print_bars()
    print(f"\nJSON: {report.write(args.json)}")
    return report


if __name__ == "__main__":
    sys.exit(h.run_main(main, sys.argv[1:]))
