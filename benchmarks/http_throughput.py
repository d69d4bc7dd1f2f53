"""HTTP throughput: the same Flask hello-world (``benchmarks.apps:hello``) under gunicorn
sync and gthread workers, behind the naive bridge baseline (``benchmarks/naive_bridge.py``)
and behind ``wsgi-channels interface`` + ``wsgi-channels worker`` over Redis, side by side
in one run: ``wrk -t2 -c32`` against each in turn, fresh processes (and a fresh
redis-server) for every measurement, the targets interleaved over ``--rounds`` rounds,
medians reported.

Each wsgi-channels split is written ``I:W:T`` = interface processes : worker processes :
threads per worker (default ``--splits 1:2:8,1:2:16``: one interface and two workers, one
per core, with the default 8 threads and with 16).

``--batched-workers N`` adds the batched bridge reference (``benchmarks/batched_bridge.py``,
the 70-line design issue 10 measured; no bar) with N workers.

Bars: ours >= 1.0x gunicorn sync, >= 1.0x gunicorn gthread, >= 2.0x the naive bridge.

``--metrics`` measures the cost of Prometheus metrics instead: each split with
``--metrics`` off and on (every interface and worker process serving ``/metrics``, each
endpoint scraped every ``SCRAPE_INTERVAL`` seconds during the run), interleaved, and no
baselines. Bar: metrics on >= 0.97x the req/s of metrics off.

    python -m benchmarks.http_throughput [--rounds 3] [--duration 6] [--connections 32]
        [--splits 1:2:8,1:2:16] [--naive-workers 2] [--batched-workers 0] [--metrics]
        [--quick] [--json PATH]
"""

from __future__ import annotations

import sys
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _harness as h

APP = "benchmarks.apps:hello"
BAR_VS_GUNICORN = 1.0
BAR_VS_NAIVE = 2.0
SYNC = "gunicorn sync"
GTHREAD = "gunicorn gthread"
NAIVE = "naive bridge"
BATCHED = "batched bridge (reference, no bar)"
BAR_METRICS = 0.97
METRICS_ON = ", metrics on"
#: Seconds between two scrapes of each /metrics endpoint during a metrics-on run
#: (Prometheus' default is 15 s: this is the harsher case).
SCRAPE_INTERVAL = 1.0

Start = Callable[[h.Procs], tuple[int, dict[str, Any]]]


def parse_split(text: str) -> tuple[int, int, int]:
    parts = text.split(":")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"a split is I:W:T with positive integers, not {text!r}")
    i, w, t = (int(p) for p in parts)
    return i, w, t


def split_label(split: tuple[int, int, int]) -> str:
    i, w, t = split
    return f"wsgi-channels {i} interface + {w} worker{'s' if w > 1 else ''} x{t} threads"


def start_gunicorn(
    procs: h.Procs, workers: int, kind: str = "sync", threads: int = 1, app: str = APP
) -> tuple[int, dict[str, Any]]:
    """Start gunicorn on *app*; return its port and CPU groups."""
    extra = ["--threads", str(threads)] if kind == "gthread" else []
    proc, port = procs.gunicorn(app, workers=workers, kind=kind, extra=extra)
    h.wait_http_ok(port, procs=[proc])
    return port, {"gunicorn": proc}


def start_bridge(
    procs: h.Procs,
    split: tuple[int, int, int],
    app: str = APP,
    scrape: list[int] | None = None,
    layer: str | None = None,
    worker_env: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Start redis (unless *layer* names another layer URL), the interface and the
    workers of *split* (with *worker_env* in their environment); return the port once
    a request has gone all the way through, and the CPU groups. With *scrape* (a list),
    every process serves ``--metrics`` and the list is filled with their ports."""
    interfaces, workers, threads = split
    groups: dict[str, Any] = {}
    url = layer
    if url is None:
        url = procs.redis()
        groups["redis"] = procs.procs[-1]
    extra = _metrics_args(scrape)
    interface, port = procs.interface(url, workers=interfaces, extra=extra)
    if scrape is None:
        env = worker_env or {}
        worker_procs = [procs.worker(app, url, threads=threads, **env) for _ in range(workers)]
    else:
        worker_procs = [_metrics_worker(procs, app, url, threads, scrape) for _ in range(workers)]
    h.wait_http_ok(port, procs=[interface, *worker_procs])
    return port, {"interface": interface, "worker": worker_procs, **groups}


def _metrics_worker(procs: h.Procs, app: str, url: str, threads: int, scrape: list[int]) -> h.Proc:
    """What ``procs.worker`` starts, with ``--metrics`` on a free port."""
    argv = [*h.cli(), "worker", app, "--layer", url, "--threads", str(threads),
            "--no-access-log", *_metrics_args(scrape)]  # fmt: skip
    return procs.start(f"worker-{len(procs.procs)}", argv)


def _metrics_args(scrape: list[int] | None) -> list[str]:
    if scrape is None:
        return []
    port = h.free_port()
    scrape.append(port)
    return ["--metrics", f"{h.HOST}:{port}"]


class BridgeWithMetrics:
    """A Start for a split with ``--metrics`` on; ``scrape_ports`` are the endpoints of
    the processes started last."""

    def __init__(self, split: tuple[int, int, int], app: str = APP) -> None:
        self.split, self.app = split, app
        self.scrape_ports: list[int] = []

    def __call__(self, procs: h.Procs) -> tuple[int, dict[str, Any]]:
        self.scrape_ports.clear()
        return start_bridge(procs, self.split, self.app, scrape=self.scrape_ports)


class Scraper:
    """Scrape each endpoint every SCRAPE_INTERVAL seconds from a thread, as Prometheus
    would, until the block ends; ``scrapes`` counts the answers that had our metrics."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = list(ports)
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for port in self.ports:
                url = f"http://{h.HOST}:{port}/metrics"
                try:
                    with urllib.request.urlopen(url, timeout=5) as response:
                        if b"wsgi_channels_" in response.read():
                            self.scrapes += 1
                except OSError:
                    pass  # counted as a scrape missed; the run checks that some answered
            self._stop.wait(SCRAPE_INTERVAL)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def start_naive(procs: h.Procs, workers: int, app: str = APP) -> tuple[int, dict[str, Any]]:
    """Start redis, the naive bridge's uvicorn app and *workers* naive workers."""
    return start_reference(procs, "naive_bridge", workers, app)


def start_reference(
    procs: h.Procs, module: str, workers: int, app: str = APP
) -> tuple[int, dict[str, Any]]:
    """Start redis, the uvicorn app of ``benchmarks.<module>`` (the naive or the batched
    bridge) and *workers* of its worker processes."""
    url = procs.redis()
    redis_proc = procs.procs[-1]
    port = h.free_port()
    env = {f"{module.upper()}_REDIS": url}
    argv = [sys.executable, "-m", "uvicorn", f"benchmarks.{module}:app", "--host", h.HOST,
            "--port", str(port), "--lifespan", "off", "--no-access-log", "--log-level", "warning",
            "--backlog", "2048"]  # fmt: skip
    server = procs.start(f"{module}-uvicorn-{port}", argv, **env)
    worker_argv = [sys.executable, "-m", f"benchmarks.{module}", app]
    worker_procs = [
        procs.start(f"{module}-worker-{port}-{k}", worker_argv, **env) for k in range(workers)
    ]
    h.wait_for_port(port, proc=server)
    h.wait_http_ok(port, procs=[server, *worker_procs])
    return port, {"uvicorn": server, "worker": worker_procs, "redis": redis_proc}


def targets(args: Any, app: str = APP) -> dict[str, Start]:
    """Every server of the comparison, by label, in the order they are measured."""
    w, t = args.gunicorn_workers, args.gthread_threads
    redis = h.redis_label()
    found: dict[str, Start] = {
        f"{SYNC} -w {w}": lambda procs: start_gunicorn(procs, w, app=app),
        f"{GTHREAD} -w {w} --threads {t}": lambda procs: start_gunicorn(
            procs, w, "gthread", t, app=app
        ),
        f"{NAIVE}: uvicorn + {args.naive_workers} workers, {redis}": lambda procs: start_naive(
            procs, args.naive_workers, app=app
        ),
    }
    batched = getattr(args, "batched_workers", 0)
    if batched:
        found[f"{BATCHED}: uvicorn + {batched} workers, {redis}"] = lambda procs: start_reference(
            procs, "batched_bridge", batched, app
        )
    if getattr(args, "metrics", False):
        found = {}
    for text in args.splits.split(","):
        split = parse_split(text)
        found[f"{split_label(split)}, {redis}"] = lambda procs, s=split: start_bridge(procs, s, app)
        if getattr(args, "metrics", False):
            found[f"{split_label(split)}, {redis}{METRICS_ON}"] = BridgeWithMetrics(split, app)
    return found


def measure(
    start: Start, *, threads: int, connections: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """Start a target with *start(procs)*, warm it up, run wrk once with CPU metering,
    stop everything."""
    scrape = getattr(start, "scrape_ports", None)
    with h.Procs() as procs:
        port, groups = start(procs)
        if warmup:
            h.wrk(port, threads=threads, connections=connections, seconds=warmup)
        with h.CpuMeter(groups) as cpu, Scraper(scrape or []) as scraper:
            result = h.wrk(port, threads=threads, connections=connections, seconds=seconds)
        if scrape and not scraper.scrapes:
            raise RuntimeError("metrics were on but no /metrics endpoint answered")
        result["scrapes"] = scraper.scrapes
        for group in groups.values():
            for proc in group if isinstance(group, list) else [group]:
                proc.check_alive()
    result["cpu_pct"] = cpu.result
    result["cpu"] = " ".join(f"{k}={v:g}%" for k, v in cpu.result.items())
    return result


def add_options(p: Any, *, duration: float) -> None:
    h.add_rounds_options(p, rounds=3, duration=duration)
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of wrk before each run")
    p.add_argument("--gunicorn-workers", type=int, default=2)
    p.add_argument("--gthread-threads", type=int, default=4)
    p.add_argument("--naive-workers", type=int, default=2, help="naive bridge worker processes")
    p.add_argument(
        "--batched-workers", type=int, default=0,
        help="also run the batched bridge reference (benchmarks/batched_bridge.py) with "
        "this many worker processes (default 0: not run)",
    )  # fmt: skip
    p.add_argument(
        "--splits", default="1:2:8,1:2:16", help="wsgi-channels splits I:W:T, comma-separated"
    )


def run_rounds(args: Any, *, threads: int, connections: int) -> list[dict[str, Any]]:
    """Every target of :func:`targets`, interleaved over ``args.rounds`` rounds; one row
    per target with the medians and each round's req/s."""
    if h.WRK is None:
        raise h.Skip("wrk is not installed (apt-get install wrk)")
    h.require_components("cli", "interface", "worker", "layers/redis")
    starts = targets(args)
    load = dict(threads=threads, connections=connections, seconds=args.duration)
    results = h.interleaved(
        args.rounds, list(starts), lambda t: measure(starts[t], warmup=args.warmup, **load)
    )
    rows = []
    keys = ["rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "errors", "loadavg_1m"]
    for label, runs in results.items():
        row = {"config": label, **h.medians(runs, keys)}
        row["rps_rounds"] = " / ".join(f"{r['rps']:,.0f}" for r in runs if "rps" in r)
        row["cpu"] = next((r["cpu"] for r in reversed(runs) if "cpu" in r), None)
        row["runs"] = runs
        rows.append(row)
    return rows


def ours(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["config"].startswith("wsgi-channels")]


def main(argv: list[str] | None = None) -> h.Report:
    p = h.parser("http_throughput", __doc__.splitlines()[0])
    add_options(p, duration=6.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument(
        "--metrics", action="store_true",
        help="measure each split with --metrics off and on instead of against the baselines",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 1.0, 0.0
        args.splits = args.splits.split(",")[0]
    report = h.Report("http_throughput", params={**vars(args), "json": str(args.json)})
    rows = run_rounds(args, threads=args.wrk_threads, connections=args.connections)
    if args.metrics:
        return metrics_report(args, argv, report, rows)
    sync, gthread, naive = rows[0], rows[1], rows[2]
    for row in rows:
        row["x_sync"] = h.ratio(row["rps"], sync["rps"])
        row["x_gthread"] = h.ratio(row["rps"], gthread["rps"])
        row["x_naive"] = h.ratio(row["rps"], naive["rps"])
    report.rows = rows
    title = (
        f"HTTP throughput, Flask hello world, wrk -t{args.wrk_threads} -c{args.connections} "
        f"-d{args.duration:g}s, {args.rounds} rounds interleaved, medians"
    )
    print("\n" + h.run_header(title, "http_throughput", argv))
    columns = [("config", "server"), ("rps", "req/s"), ("x_sync", "vs gunicorn sync"),
               ("x_gthread", "vs gthread"), ("x_naive", "vs naive bridge"),
               ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("errors", "errors"),
               ("rps_rounds", "req/s per round"), ("loadavg_1m", "load 1m"),
               ("cpu", "cpu (% of a core, last round)")]  # fmt: skip
    print(h.markdown(rows, columns))
    measured = [r for r in ours(rows) if r["rps"] is not None]
    if measured:
        best = max(measured, key=lambda r: r["rps"])
        name = best["config"]
        report.bars += [
            h.Bar(f"req/s vs gunicorn sync ({name})", best["x_sync"], BAR_VS_GUNICORN, ">="),
            h.Bar(f"req/s vs gunicorn gthread ({name})", best["x_gthread"], BAR_VS_GUNICORN, ">="),
            h.Bar(f"req/s vs naive bridge ({name})", best["x_naive"], BAR_VS_NAIVE, ">="),
        ]
    report.notes.append(
        "gunicorn sync workers close the connection after each response (no keep-alive); "
        "uvicorn keeps connections alive. cpu = % of one core over the measured run; "
        "others = what the rest of the machine used meanwhile."
    )
    report.print_bars()
    print(f"\nJSON: {report.write(args.json)}")
    return report


def metrics_report(
    args: Any, argv: list[str] | None, report: h.Report, rows: list[dict[str, Any]]
) -> h.Report:
    """``--metrics``: each split's req/s with metrics on as a ratio of metrics off."""
    off = {row["config"]: row for row in rows if not row["config"].endswith(METRICS_ON)}
    for row in rows:
        base = off.get(row["config"].removesuffix(METRICS_ON))
        row["x_off"] = h.ratio(row["rps"], base["rps"] if base else None)
    report.rows = rows
    title = (
        f"HTTP throughput with Prometheus metrics off and on, Flask hello world, "
        f"wrk -t{args.wrk_threads} -c{args.connections} -d{args.duration:g}s, "
        f"{args.rounds} rounds interleaved, medians"
    )
    print("\n" + h.run_header(title, "http_throughput", argv))
    columns = [("config", "server"), ("rps", "req/s"), ("x_off", "vs metrics off"),
               ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("errors", "errors"),
               ("rps_rounds", "req/s per round"), ("loadavg_1m", "load 1m"),
               ("cpu", "cpu (% of a core, last round)")]  # fmt: skip
    print(h.markdown(rows, columns))
    for row in rows:
        if row["config"].endswith(METRICS_ON) and row["x_off"] is not None:
            name = row["config"].removesuffix(METRICS_ON)
            report.bars.append(
                h.Bar(f"req/s metrics on vs off ({name})", row["x_off"], BAR_METRICS, ">=")
            )
    report.notes.append(
        f"metrics on: every interface and worker process serves --metrics, and each "
        f"endpoint is scraped every {SCRAPE_INTERVAL:g} s during the measured run."
    )
    report.print_bars()
    print(f"\nJSON: {report.write(args.json)}")
    return report


if __name__ == "__main__":
    sys.exit(h.run_main(main, sys.argv[1:]))
