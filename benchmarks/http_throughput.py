"""HTTP throughput: the same Flask hello-world under gunicorn sync workers, and behind
``wsgi-channels interface`` + ``wsgi-channels worker`` over Redis, in the same run, with
the same wrk load.

Process counts are split over the machine's cores; each bridge split is written
``I:W:T`` = interface processes : worker processes : threads per worker. Bar: the best
bridge split serves at least 0.75x gunicorn's requests per second.

    python -m benchmarks.http_throughput [--quick] [--duration 10] [--connections 32]
        [--gunicorn-workers 2] [--splits 1:1:4,1:2:2,2:2:2] [--json PATH]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _harness as h

APP = "benchmarks.apps:hello"
BAR_RATIO = 0.75


def parse_split(text: str) -> tuple[int, int, int]:
    parts = text.split(":")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"a split is I:W:T with positive integers, not {text!r}")
    i, w, t = (int(p) for p in parts)
    return i, w, t


def split_label(split: tuple[int, int, int]) -> str:
    i, w, t = split
    return f"bridge {i} interface + {w} worker x{t} threads"


def start_gunicorn(procs: h.Procs, workers: int) -> tuple[int, dict[str, Any]]:
    """Start gunicorn on the hello app; return its port and CPU groups."""
    proc, port = procs.gunicorn(APP, workers=workers)
    h.wait_http_ok(port, procs=[proc])
    return port, {"gunicorn": proc}


def start_bridge(
    procs: h.Procs, split: tuple[int, int, int], app: str = APP
) -> tuple[int, dict[str, Any]]:
    """Start redis, the interface and the workers of *split*; return the port once a
    request has gone all the way through, and the CPU groups."""
    interfaces, workers, threads = split
    url = procs.redis()
    redis_proc = procs.procs[-1]
    interface, port = procs.interface(url, workers=interfaces)
    worker_procs = [procs.worker(app, url, threads=threads) for _ in range(workers)]
    h.wait_http_ok(port, procs=[interface, *worker_procs])
    return port, {"interface": interface, "worker": worker_procs, "redis": redis_proc}


def measure(
    start: Any, *, threads: int, connections: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """Start a target with *start(procs)*, warm it up, run wrk once with CPU metering,
    stop everything."""
    with h.Procs() as procs:
        port, groups = start(procs)
        if warmup:
            h.wrk(port, threads=threads, connections=connections, seconds=warmup)
        with h.CpuMeter(groups) as cpu:
            result = h.wrk(port, threads=threads, connections=connections, seconds=seconds)
        for group in groups.values():
            for proc in group if isinstance(group, list) else [group]:
                proc.check_alive()
    result["cpu_pct"] = cpu.result
    return result


def main(argv: list[str] | None = None) -> h.Report:
    p = h.parser("http_throughput", __doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk before each run")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--gunicorn-workers", type=int, default=2)
    p.add_argument(
        "--splits", default="1:1:4,1:2:2,2:2:2", help="bridge splits I:W:T, comma-separated"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.splits = 1.0, 0.0, args.splits.split(",")[0]
    splits = [parse_split(s) for s in args.splits.split(",")]
    if h.WRK is None:
        raise h.Skip("wrk is not installed (apt-get install wrk)")
    h.require_components("cli", "interface", "worker", "layers/redis")

    load = dict(threads=args.wrk_threads, connections=args.connections, seconds=args.duration)
    report = h.Report(
        "http_throughput",
        params={**vars(args), "json": str(args.json), "app": APP, "wrk": load},
    )
    rows: list[dict[str, Any]] = []
    base = measure(
        lambda procs: start_gunicorn(procs, args.gunicorn_workers), warmup=args.warmup, **load
    )
    rows.append({"config": f"gunicorn sync -w {args.gunicorn_workers}", **base})
    for split in splits:
        result = measure(lambda procs, s=split: start_bridge(procs, s), warmup=args.warmup, **load)
        rows.append({"config": split_label(split), "split": ":".join(map(str, split)), **result})
    for row in rows:
        row["ratio"] = row["rps"] / base["rps"] if base["rps"] else None
        row["cpu"] = " ".join(f"{k}={v:g}%" for k, v in row["cpu_pct"].items())
    report.rows = rows
    print(
        f"HTTP throughput, wrk -t{args.wrk_threads} -c{args.connections} -d{args.duration:g}s, "
        f"{h.environment()['cpus']} CPUs\n"
    )
    print(h.table(rows, ["config", "rps", "ratio", "p50_ms", "p99_ms", "errors", "cpu"]))
    best = max(rows[1:], key=lambda r: r["rps"])
    report.bars.append(
        h.Bar(
            f"best bridge req/s / gunicorn req/s ({best['config']})", best["ratio"], BAR_RATIO, ">="
        )
    )
    report.notes.append(
        "gunicorn sync workers close the connection after each response (no keep-alive); "
        "uvicorn keeps connections alive. cpu = % of one core over the measured run."
    )
    report.print_bars()
    print(f"\nJSON: {report.write(args.json)}")
    return report


if __name__ == "__main__":
    sys.exit(h.run_main(main, sys.argv[1:]))
