"""HTTP latency at concurrency 1: the servers of ``http_throughput`` (gunicorn sync and
gthread, the naive bridge, wsgi-channels over Redis) under ``wrk -t1 -c1 --latency``,
interleaved over ``--rounds`` rounds, medians of p50 and p99, reported as differences
from gunicorn sync in ms.

Bars: ours p50 <= gunicorn p50 + 0.4 ms and p99 <= gunicorn p99 + 1.0 ms.

    python -m benchmarks.http_latency [--rounds 3] [--duration 6] [--splits 1:2:8,1:2:16]
        [--quick] [--json PATH]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _harness as h
from benchmarks.http_throughput import add_options, ours, run_rounds

BAR_P50_MS = 0.4
BAR_P99_MS = 1.0


def main(argv: list[str] | None = None) -> h.Report:
    p = h.parser("http_latency", __doc__.splitlines()[0])
    add_options(p, duration=6.0)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 1.0, 0.0
        args.splits = args.splits.split(",")[0]
    report = h.Report("http_latency", params={**vars(args), "json": str(args.json)})
    rows = run_rounds(args, threads=1, connections=1)
    base = rows[0]
    for row in rows:
        for pct in ("p50", "p99"):
            value, ref = row[f"{pct}_ms"], base[f"{pct}_ms"]
            row[f"{pct}_delta_ms"] = value - ref if value is not None and ref is not None else None
    report.rows = rows
    title = (
        f"HTTP latency at concurrency 1, Flask hello world, wrk -t1 -c1 -d{args.duration:g}s "
        f"--latency, {args.rounds} rounds interleaved, medians"
    )
    print("\n" + h.run_header(title, "http_latency", argv))
    columns = [("config", "server"), ("rps", "req/s"), ("p50_ms", "p50 ms"),
               ("p50_delta_ms", "p50 vs gunicorn sync, ms"), ("p99_ms", "p99 ms"),
               ("p99_delta_ms", "p99 vs gunicorn sync, ms"), ("errors", "errors"),
               ("loadavg_1m", "load 1m"), ("cpu", "cpu (% of a core, last round)")]  # fmt: skip
    print(h.markdown(rows, columns))
    measured = [r for r in ours(rows) if r["p50_ms"] is not None]
    if measured:
        best = min(measured, key=lambda r: r["p50_ms"])
        name = best["config"]
        report.bars += [
            h.Bar(f"p50 - gunicorn p50 ({name})", best["p50_delta_ms"], BAR_P50_MS, unit=" ms"),
            h.Bar(f"p99 - gunicorn p99 ({name})", best["p99_delta_ms"], BAR_P99_MS, unit=" ms"),
        ]
    report.print_bars()
    print(f"\nJSON: {report.write(args.json)}")
    return report


if __name__ == "__main__":
    sys.exit(h.run_main(main, sys.argv[1:]))
