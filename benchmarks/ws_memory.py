"""Memory per idle WebSocket connection on the interface server, and the echo round-trip
rate, per WebSocket implementation.

RSS is VmRSS from /proc/PID/status summed over the server's processes: with N idle
connections (to ``/idle`` of ``benchmarks.apps:ws``) minus with none (after a warm-up),
divided by N. The server runs as ``wsgi-channels interface`` (its own choice of
implementation) and, to compare uvicorn's implementations, as ``uvicorn --factory
wsgi_channels.interface:create_app --ws IMPL``. Clients connect with and without
permessage-deflate (browsers always offer it).

Bar: <= 30 KiB per connection (the ``wsgi-channels interface`` row, deflate on).

    python -m benchmarks.ws_memory [--quick] [--connections 1000]
        [--servers cli,wsproto,websockets,websockets-sansio] [--compression deflate,none]
        [--echo-seconds 3] [--json PATH]
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _harness as h
from benchmarks._wsclients import echo_rate
from benchmarks.fanout import start_clients, wait_clients

APP = "benchmarks.apps:ws"
BAR_KIB = 30.0


def start_server(procs: h.Procs, server: str, url: str) -> tuple[h.Proc, int]:
    if server == "cli":
        return procs.interface(url)
    port = h.free_port()
    argv = [sys.executable, "-m", "uvicorn", "--factory", "wsgi_channels.interface:create_app",
            "--host", h.HOST, "--port", str(port), "--ws", server, "--http", "httptools",
            "--loop", "uvloop", "--lifespan", "on", "--log-level", "warning",
            "--no-access-log"]  # fmt: skip
    proc = procs.start(f"uvicorn-{server}-{port}", argv, WSGI_CHANNELS_LAYER=url)
    h.wait_for_port(port, proc=proc)
    return proc, port


def settle_rss(proc: h.Proc, seconds: float = 1.0) -> int:
    time.sleep(seconds)
    return h.rss_kib(proc.pids())


def trial(server: str, compression: str, args: Any) -> dict[str, Any]:
    with h.Procs() as procs:
        url = procs.redis()
        iface, port = start_server(procs, server, url)
        worker = procs.worker(APP, url, threads=4)
        h.wait_http_ok(port, procs=[iface, worker])
        deadline = time.time() + 120 + args.connections / 20
        row: dict[str, Any] = {"server": server, "compression": compression}
        # Warm-up: a few connections opened and closed, so that lazily imported code
        # and first-use buffers are in the baseline, not in the per-connection figure.
        for proc, out in start_clients(
            procs, "idle", port, "/idle", 20, 1, deadline, [compression]
        ):
            Path(out + ".release").touch()
            wait_clients([(proc, out)], 30)
        rss0 = settle_rss(iface)
        t0 = time.monotonic()
        clients = start_clients(
            procs, "idle", port, "/idle", args.connections, 1, deadline, [compression]
        )
        row["connect_s"] = time.monotonic() - t0
        rss1 = settle_rss(iface)
        for _, out in clients:
            Path(out + ".release").touch()
        connected = sum(r["connected"] for r in wait_clients(clients, 60))
        rss2 = settle_rss(iface)
        row.update(
            connected=connected,
            rss_idle_mib=rss0 / 1024,
            rss_conns_mib=rss1 / 1024,
            rss_after_mib=rss2 / 1024,
            kib_per_conn=(rss1 - rss0) / max(connected, 1),
        )
        for concurrency in (1, 16):
            rate = asyncio.run(
                echo_rate(port, "/idle", concurrency, args.echo_seconds, compression)
            )
            row[f"echo_c{concurrency}_per_s"] = rate["rate"]
            row[f"echo_c{concurrency}_p50_ms"] = rate["p50_ms"]
        iface.check_alive()
        row["server_pids"] = len(iface.pids())
    return row


def main(argv: list[str] | None = None) -> h.Report:
    p = h.parser("ws_memory", __doc__.splitlines()[0])
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--servers", default="cli,wsproto,websockets,websockets-sansio")
    p.add_argument("--compression", default="deflate,none")
    p.add_argument("--echo-seconds", type=float, default=3.0)
    args = p.parse_args(argv)
    if args.quick:
        args.connections, args.servers, args.compression, args.echo_seconds = (
            50,
            "cli",
            "deflate",
            0.5,
        )
    h.require_components("cli", "interface", "worker", "sender", "layers/redis")
    h.raise_fd_limit(args.connections * 2 + 1024)
    report = h.Report("ws_memory", params={**vars(args), "json": str(args.json)})
    for server in args.servers.split(","):
        for compression in args.compression.split(","):
            try:
                row = trial(server, compression, args)
            except Exception as exc:  # one implementation failing must not hide the others
                row = {"server": server, "compression": compression, "error": repr(exc)[:200]}
            report.rows.append(row)
            print(
                f"  {server} {compression}: {row.get('kib_per_conn', row.get('error'))}", flush=True
            )
    print(
        f"\nInterface RSS with {args.connections} idle WebSockets minus none; echo round trips "
        f"over the whole bridge for {args.echo_seconds:g} s\n"
    )
    columns = [
        "server",
        "compression",
        "connected",
        "rss_idle_mib",
        "rss_conns_mib",
        "rss_after_mib",
    ]
    columns += ["kib_per_conn", "echo_c1_per_s", "echo_c1_p50_ms", "echo_c16_per_s", "error"]
    print(h.table(report.rows, columns))
    ours = next(
        (
            r
            for r in report.rows
            if r["server"] == "cli" and "kib_per_conn" in r and r["compression"] == "deflate"
        ),
        next((r for r in report.rows if r["server"] == "cli" and "kib_per_conn" in r), None),
    )
    if ours:
        report.bars.append(
            h.Bar(
                f"KiB per idle connection (wsgi-channels interface, {ours['compression']})",
                ours["kib_per_conn"],
                BAR_KIB,
                unit=" KiB",
            )
        )
    report.notes.append(
        "server 'cli' is `wsgi-channels interface`; the others are uvicorn --factory "
        "wsgi_channels.interface:create_app --ws IMPL (create_app is the same app)."
    )
    report.print_bars()
    print(f"\nJSON: {report.write(args.json)}")
    return report


if __name__ == "__main__":
    sys.exit(h.run_main(main, sys.argv[1:]))
