"""``wsgi-channels run`` on its SQLite layer against ``flask run``: the same Flask
hello-world (``benchmarks.apps:hello``), req/s at 8 connections (``wrk -t2 -c8``) and
p50 at concurrency 1 (``wrk -t1 -c1 --latency``), side by side in one run: fresh
processes (and a fresh SQLite file) for every measurement, the two servers interleaved
over ``--rounds`` rounds, medians reported.

Bars: ours >= 1.0x ``flask run`` req/s at 8 connections; c=1 p50 <= ``flask run`` + 0.5 ms.

    python -m benchmarks.run_sqlite [--rounds 3] [--duration 6] [--threads 4]
        [--quick] [--json PATH]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _harness as h

APP = "benchmarks.apps:hello"
FLASK = "flask run"
BAR_RATIO = 1.0
BAR_P50_MS = 0.5


def start_flask(procs: h.Procs) -> tuple[int, dict[str, Any]]:
    port = h.free_port()
    argv = [sys.executable, "-m", "flask", "--app", APP, "run", "--host", h.HOST,
            "--port", str(port), "--no-reload", "--no-debugger"]  # fmt: skip
    proc = procs.start(f"flask-{port}", argv)
    h.wait_for_port(port, proc=proc)
    h.wait_http_ok(port, procs=[proc])
    return port, {"flask": proc}


def start_ours(procs: h.Procs, threads: int) -> tuple[int, dict[str, Any]]:
    port = h.free_port()
    layer = f"sqlite:///{procs.logdir}/layer-{port}.sqlite3"
    argv = [*h.cli(), "run", APP, "--bind", f"{h.HOST}:{port}", "--layer", layer,
            "--threads", str(threads)]  # fmt: skip
    proc = procs.start(f"run-{port}", argv)
    h.wait_for_port(port, proc=proc)
    h.wait_http_ok(port, procs=[proc])
    return port, {"run": proc}


def measure(start: Any, seconds: float, warmup: float, connections: int) -> dict[str, Any]:
    with h.Procs() as procs:
        port, groups = start(procs)
        if warmup:
            h.wrk(port, threads=1, connections=1, seconds=warmup)
        with h.CpuMeter(groups) as cpu:
            many = h.wrk(port, threads=2, connections=connections, seconds=seconds)
        one = h.wrk(port, threads=1, connections=1, seconds=seconds)
        for proc in groups.values():
            proc.check_alive()
    return {
        "rps": many["rps"],
        "p99_ms": many.get("p99_ms"),
        "errors": many["errors"] + one["errors"],
        "c1_rps": one["rps"],
        "c1_p50_ms": one.get("p50_ms"),
        "c1_p99_ms": one.get("p99_ms"),
        "cpu": " ".join(f"{k}={v:g}%" for k, v in cpu.result.items()),
    }


def main(argv: list[str] | None = None) -> h.Report:
    p = h.parser("run_sqlite", __doc__.splitlines()[0])
    h.add_rounds_options(p, rounds=3, duration=6.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--threads", type=int, default=4, help="threads of wsgi-channels run")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 1.0, 0.0
    if h.WRK is None:
        raise h.Skip("wrk is not installed (apt-get install wrk)")
    h.require_components("cli", "interface", "worker", "layers/sqlite")
    mine = f"wsgi-channels run --threads {args.threads}, SQLite layer"
    starts = {FLASK: start_flask, mine: lambda procs: start_ours(procs, args.threads)}
    report = h.Report("run_sqlite", params={**vars(args), "json": str(args.json)})
    results = h.interleaved(
        args.rounds,
        list(starts),
        lambda t: measure(starts[t], args.duration, args.warmup, args.connections),
    )
    keys = ["rps", "p99_ms", "c1_rps", "c1_p50_ms", "c1_p99_ms", "errors", "loadavg_1m"]
    rows = []
    for label, runs in results.items():
        row = {"server": label, **h.medians(runs, keys)}
        row["cpu"] = next((r["cpu"] for r in reversed(runs) if "cpu" in r), None)
        row["runs"] = runs
        rows.append(row)
    base = rows[0]
    for row in rows:
        row["x_flask"] = h.ratio(row["rps"], base["rps"])
        row["x_flask_c1"] = h.ratio(row["c1_rps"], base["c1_rps"])
        ref = base["c1_p50_ms"]
        row["c1_p50_delta_ms"] = (
            row["c1_p50_ms"] - ref if row["c1_p50_ms"] is not None and ref is not None else None
        )
    report.rows = rows
    title = (
        f"wsgi-channels run (SQLite) vs flask run, Flask hello world, wrk -t2 "
        f"-c{args.connections} and -t1 -c1, {args.duration:g} s each, {args.rounds} rounds "
        "interleaved, medians"
    )
    print("\n" + h.run_header(title, "run_sqlite", argv))
    columns = [("server", "server"), ("rps", f"req/s at {args.connections}"),
               ("x_flask", "vs flask run"), ("c1_rps", "req/s at 1"),
               ("x_flask_c1", "vs flask run"), ("c1_p50_ms", "c=1 p50 ms"),
               ("c1_p50_delta_ms", "c=1 p50 vs flask run, ms"), ("c1_p99_ms", "c=1 p99 ms"),
               ("errors", "errors"), ("loadavg_1m", "load 1m"),
               ("cpu", f"cpu at {args.connections} (% of a core, last round)")]  # fmt: skip
    print(h.markdown(rows, columns))
    ours = rows[1]
    report.bars += [
        h.Bar(f"req/s at {args.connections} vs flask run", ours["x_flask"], BAR_RATIO, ">="),
        h.Bar("c=1 p50 - flask run p50", ours["c1_p50_delta_ms"], BAR_P50_MS, unit=" ms"),
    ]
    report.notes.append("flask run is werkzeug's threaded development server.")
    report.print_bars()
    print(f"\nJSON: {report.write(args.json)}")
    return report


if __name__ == "__main__":
    sys.exit(h.run_main(main, sys.argv[1:]))
