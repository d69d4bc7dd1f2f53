"""Fan-out: N WebSocket clients on ONE ``wsgi-channels interface`` (one worker process runs
``benchmarks.apps:ws``, which joins each connection to group "bench"), and another
process sends 50 messages at 10/s with ``Group("bench").send(...)``. Every message must
reach every client; we measure messages lost, send -> last-client receipt (p50/p99 over
the sends), send -> receipt over every delivery, and the interface process's CPU time
(from /proc/<pid>/stat before and after) per delivered frame.

The clients are asyncio processes (one per 2,500 sockets unless ``--client-procs``
says otherwise) using a lean WebSocket client of our own (``--client raw``, see
``_wsclients.py``), so that the client side keeps up with 50,000 frames/s on two cores;
``--client websockets`` uses the websockets library instead (needed for
``--compression deflate``).

Bars: at 1,000 clients p99 send -> last <= 50 ms; at 5,000 clients 0 lost and p99 <= 250
ms; interface CPU per delivered frame <= 15 us. ``--layers redis,cluster`` measures each
size on one Redis and on a three-master Redis Cluster in turn, in the same run.

    python -m benchmarks.fanout [--clients 1000,5000] [--sends 50] [--interval 0.1]
        [--rounds 1] [--client raw|websockets] [--client-procs 0] [--compression none]
        [--layers redis] [--quick] [--json PATH]
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _harness as h

APP = "benchmarks.apps:ws"
# clients -> (p99 send -> last client, ms; messages lost)
BARS = {1000: (50.0, None), 5000: (250.0, 0)}
BAR_US_PER_FRAME = 15.0
SOCKETS_PER_CLIENT_PROC = 2500


def sender(url: str, sends: int, interval: float) -> None:
    """The other process: ``sends`` group sends, ``interval`` seconds apart."""
    from wsgi_channels import Group
    from wsgi_channels.layers import layer_from_url

    group = Group("bench", layer=layer_from_url(url))
    start = time.monotonic()
    for i in range(sends):
        time.sleep(max(0.0, start + i * interval - time.monotonic()))
        group.send({"text": json.dumps({"i": i, "t": time.time()})})
    print(f"sent {sends} in {time.monotonic() - start:.2f} s")


def start_clients(procs: h.Procs, mode: str, port: int, path: str, count: int, nprocs: int,
                  deadline: float, extra: list[str], ready_by: float | None = None,
                  ) -> list[tuple[h.Proc, str]]:  # fmt: skip
    """Start client processes sharing *count* connections (they stop at *deadline*);
    wait until each has opened its connections, at most until *ready_by*."""
    ready_by = deadline if ready_by is None else ready_by
    clients = []
    start = time.time()
    per = math.ceil(count / nprocs)
    for k in range(nprocs):
        n = min(per, count - k * per)
        if n <= 0:
            break
        out = str(procs.logdir / f"clients-{mode}-{count}-{k}.json")
        argv = [sys.executable, "-m", "benchmarks._wsclients", mode, str(port), path, str(n), out,
                str(deadline), *extra]  # fmt: skip
        clients.append((procs.start(f"clients-{mode}-{count}-{k}", argv), out))
    for proc, out in clients:
        while not os.path.exists(out + ".ready"):
            proc.check_alive()
            if time.time() > ready_by:
                raise TimeoutError(
                    f"{proc.name}: connections not all open after {ready_by - start:.0f} s"
                )
            time.sleep(0.05)
    return clients


def wait_clients(clients: list[tuple[h.Proc, str]], timeout: float) -> list[dict[str, Any]]:
    results = []
    end = time.monotonic() + timeout
    for proc, out in clients:
        while proc.popen.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        if not os.path.exists(out):
            raise RuntimeError(f"{proc.name} wrote no results:\n{proc.log_tail()}")
        with open(out) as f:
            results.append(json.load(f))
    return results


def start_py_spy(out: Path, proc: h.Proc, clients: int, seconds: float) -> Any:
    """py-spy on the interface (GIL-holding samples) for the send phase."""
    import shutil
    import subprocess

    py_spy = shutil.which("py-spy")
    if py_spy is None:
        raise h.Skip("py-spy is not installed")
    out.mkdir(parents=True, exist_ok=True)
    argv = [py_spy, "record", "--pid", str(proc.pid), "--gil", "--nonblocking", "--rate", "250"]
    argv += ["--duration", str(int(seconds) + 1), "--format", "raw"]
    argv += ["--output", str(out / f"fanout-interface-{clients}.txt")]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def trial(clients: int, args: Any, layer_kind: str = "redis") -> dict[str, Any]:
    from wsgi_channels.layers import layer_from_url

    with h.Procs() as procs:
        if layer_kind == "cluster":
            from benchmarks.cluster import start_cluster

            url = start_cluster(procs, replicas=0)
        else:
            url = procs.redis()
        interface, port = procs.interface(url)
        worker = procs.worker(APP, url, threads=args.threads)
        h.wait_http_ok(port, procs=[interface, worker])
        connect_deadline = time.time() + 30 + clients / 50
        receive_deadline = connect_deadline + args.sends * args.interval + 60
        t0 = time.monotonic()
        mode = "fanout-raw" if args.client == "raw" else "fanout"
        nprocs = args.client_procs or math.ceil(clients / SOCKETS_PER_CLIENT_PROC)
        client_procs = start_clients(
            procs, mode, port, "/ws", clients, nprocs, receive_deadline,
            [str(args.sends), args.compression], ready_by=connect_deadline,
        )  # fmt: skip
        connect_s = time.monotonic() - t0
        layer = layer_from_url(url)
        try:
            members = len(layer.group_channels("bench"))
        finally:
            layer.close()
        meter = {
            "interface": interface,
            "worker": worker,
            "redis": procs.procs[0],
            "clients": [proc for proc, _ in client_procs],
        }
        spy = None
        if args.py_spy:
            spy = start_py_spy(args.py_spy, interface, clients, args.sends * args.interval + 2)
        with h.CpuMeter(meter) as cpu:
            send = procs.start("sender", [sys.executable, "-c",
                "import sys; from benchmarks.fanout import sender; "
                "sender(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))",
                url, str(args.sends), str(args.interval)])  # fmt: skip
            results = wait_clients(client_procs, receive_deadline - time.time() + 10)
        send.popen.wait(10)
        if spy is not None:
            spy.wait(30)
        if send.popen.returncode != 0:
            raise RuntimeError(f"sender failed:\n{send.log_tail()}")
        interface.check_alive()

    connected = sum(r["connected"] for r in results)
    received = sum(r["received"] for r in results)
    per_send: dict[str, list[float]] = {}
    latencies: list[float] = []
    for r in results:
        latencies += r["latencies_ms"]
        for i, (count, sent, last) in r["per_send"].items():
            entry = per_send.setdefault(i, [0, sent, 0.0])
            entry[0] += count
            entry[2] = max(entry[2], last)
    # A send that some client never got has no complete "last receipt"; count it lost.
    last_ms = [(last - sent) * 1e3 for count, sent, last in per_send.values() if count == connected]
    return {
        "clients": clients,
        "client_procs": nprocs,
        "connected": connected,
        "members": members,
        "connect_s": connect_s,
        "sends": args.sends,
        "expected": connected * args.sends,
        "received": received,
        "lost": connected * args.sends - received,
        "duplicates": sum(r["duplicates"] for r in results),
        "last_p50_ms": h.percentile(last_ms, 50),
        "last_p99_ms": h.percentile(last_ms, 99),
        "last_max_ms": max(last_ms) if last_ms else None,
        "each_p50_ms": h.percentile(latencies, 50),
        "each_p99_ms": h.percentile(latencies, 99),
        "frames_per_s": (connected / args.interval) if args.interval else None,
        "iface_us_per_frame": cpu.seconds["interface"] / received * 1e6 if received else None,
        "cpu_pct": cpu.result,
        "cpu": " ".join(f"{k}={v:g}%" for k, v in cpu.result.items()),
    }


def main(argv: list[str] | None = None) -> h.Report:
    p = h.parser("fanout", __doc__.splitlines()[0])
    p.add_argument("--clients", default="1000,5000")
    p.add_argument("--sends", type=int, default=50)
    p.add_argument("--interval", type=float, default=0.1, help="seconds between sends")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds (medians)")
    p.add_argument("--threads", type=int, default=8, help="worker threads")
    p.add_argument("--client", choices=["raw", "websockets"], default="raw")
    p.add_argument(
        "--client-procs", type=int, default=0, help="client processes (0: one per 2,500)"
    )
    p.add_argument("--compression", choices=["none", "deflate"], default="none")
    p.add_argument(
        "--layers",
        default="redis",
        help="comma-separated: redis (one Redis), cluster (a three-master Redis Cluster)",
    )
    p.add_argument(
        "--py-spy", type=Path, metavar="DIR", help="profile the interface during the sends"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.sends, args.interval, args.rounds = "20", 5, 0.05, 1
    if args.compression == "deflate":
        args.client = "websockets"
    sizes = [int(c) for c in args.clients.split(",")]
    h.require_components("cli", "interface", "worker", "sender", "layers/redis")
    h.raise_fd_limit(max(sizes) * 2 + 1024)
    report = h.Report("fanout", params={**vars(args), "json": str(args.json)})
    kinds = [k.strip() for k in args.layers.split(",") if k.strip()]
    unknown = sorted(set(kinds) - {"redis", "cluster"})
    if unknown or not kinds:
        p.error(f"--layers takes redis and cluster, not {', '.join(unknown) or 'nothing'}")
    targets = [f"{n}" if kinds == ["redis"] else f"{n} {kind}" for n in sizes for kind in kinds]

    def run(target: str) -> dict[str, Any]:
        n, _, kind = target.partition(" ")
        return trial(int(n), args, kind or "redis")

    results = h.interleaved(args.rounds, targets, run, log=False)
    keys = ["connected", "members", "connect_s", "received", "lost", "duplicates"]
    keys += ["last_p50_ms", "last_p99_ms", "last_max_ms", "each_p50_ms", "each_p99_ms"]
    keys += ["iface_us_per_frame", "loadavg_1m"]
    for target, runs in results.items():
        n, _, kind = target.partition(" ")
        row = {"clients": int(n), "layer": kind or "redis", **h.medians(runs, keys)}
        row["lost_rounds"] = " / ".join(str(r["lost"]) for r in runs if "lost" in r)
        # A loss in any round is a loss: the worst round counts, not the median.
        for key in ("lost", "duplicates"):
            counted = [r[key] for r in runs if key in r]
            row[key] = max(counted) if counted else None
        row["p99_rounds"] = " / ".join(f"{r['last_p99_ms']:.1f}" for r in runs
                                       if r.get("last_p99_ms") is not None)  # fmt: skip
        row["cpu"] = next((r["cpu"] for r in reversed(runs) if "cpu" in r), None)
        row["client_procs"] = next((r["client_procs"] for r in runs if "client_procs" in r), None)
        row["runs"] = runs
        report.rows.append(row)
        if "error" in row:
            print(f"  {n} clients: FAILED {row['error']}", flush=True)
    title = (
        f"Fan-out on one interface process, {args.sends} group sends "
        f"{1 / args.interval:g}/s, client={args.client}, compression={args.compression}, "
        f"{args.rounds} round(s), medians"
    )
    print("\n" + h.run_header(title, "fanout", argv))
    columns = [("clients", "sockets"), ("layer", "layer"), ("connected", "connected"),
               ("lost", "lost (worst round)"),
               ("duplicates", "dup"), ("last_p50_ms", "p50 send -> last, ms"),
               ("last_p99_ms", "p99 send -> last, ms"), ("each_p99_ms", "p99 each, ms"),
               ("iface_us_per_frame", "interface CPU µs/frame"), ("lost_rounds", "lost per round"),
               ("p99_rounds", "p99 per round"), ("client_procs", "client procs"),
               ("loadavg_1m", "load 1m"), ("cpu", "cpu (% of a core, last round)"),
               ("error", "error")]  # fmt: skip
    print(h.markdown(report.rows, columns))
    for row in report.rows:
        if row.get("last_p99_ms") is None:
            continue
        n = row["clients"]
        at = f"{n} clients" if row["layer"] == "redis" else f"{n} clients ({row['layer']})"
        p99_bar, lost_bar = BARS.get(n, (None, None))
        if lost_bar is not None:
            report.bars.append(h.Bar(f"messages lost at {at}", row["lost"], lost_bar))
        if p99_bar is not None:
            report.bars.append(
                h.Bar(f"p99 send -> last at {at}", row["last_p99_ms"], p99_bar, unit=" ms")
            )
        if n not in BARS:
            continue
        report.bars.append(
            h.Bar(
                f"interface CPU per delivered frame at {at}",
                row["iface_us_per_frame"],
                BAR_US_PER_FRAME,
                unit=" us",
            )
        )
    report.notes.append(
        "p50/p99 send -> last: over the sends, from the send to its receipt by the last "
        "socket; each: every delivery; interface CPU: utime + stime of the interface "
        "process over the send phase / frames delivered"
    )
    report.print_bars()
    print(f"\nJSON: {report.write(args.json)}")
    return report


if __name__ == "__main__":
    sys.exit(h.run_main(main, sys.argv[1:]))
