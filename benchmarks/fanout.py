"""Fan-out: N WebSocket clients on ONE ``wsgi-channels interface`` (one worker process runs
``benchmarks.apps:ws``, which joins each connection to group "bench"), and another
process sends 50 messages with ``Group("bench").send(...)``. Every message must reach
every client; we measure send -> last-client receipt (p50/p99 over the sends) and
send -> receipt over every delivery.

Bar at 1,000 clients: 0 lost and p99 of send -> last-client receipt <= 100 ms.

    python -m benchmarks.fanout [--quick] [--clients 100,1000,5000] [--sends 50]
        [--interval 0.1] [--client-procs 1] [--compression none|deflate] [--json PATH]
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
BAR_CLIENTS = 1000
BAR_P99_MS = 100.0


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


def trial(clients: int, args: Any) -> dict[str, Any]:
    from wsgi_channels.layers import layer_from_url

    with h.Procs() as procs:
        url = procs.redis()
        interface, port = procs.interface(url)
        worker = procs.worker(APP, url, threads=args.threads)
        h.wait_http_ok(port, procs=[interface, worker])
        connect_deadline = time.time() + 30 + clients / 50
        receive_deadline = connect_deadline + args.sends * args.interval + 60
        t0 = time.monotonic()
        client_procs = start_clients(
            procs, "fanout", port, "/ws", clients, args.client_procs, receive_deadline,
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
    p.add_argument("--clients", default="100,1000,5000")
    p.add_argument("--sends", type=int, default=50)
    p.add_argument("--interval", type=float, default=0.1, help="seconds between sends")
    p.add_argument("--threads", type=int, default=8, help="worker threads")
    p.add_argument("--client-procs", type=int, default=1, help="client processes")
    p.add_argument("--compression", choices=["none", "deflate"], default="none")
    p.add_argument(
        "--py-spy", type=Path, metavar="DIR", help="profile the interface during the sends"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.sends, args.interval = "20", 5, 0.05
    sizes = [int(c) for c in args.clients.split(",")]
    h.require_components("cli", "interface", "worker", "sender", "layers/redis")
    h.raise_fd_limit(max(sizes) * 2 + 1024)
    report = h.Report("fanout", params={**vars(args), "json": str(args.json)})
    for clients in sizes:
        try:
            row = trial(clients, args)
        except Exception as exc:  # a failure at one size must not hide the others
            row = {"clients": clients, "error": repr(exc)[:300]}
            print(f"  {clients} clients: FAILED {exc!r}"[:2000], flush=True)
            report.rows.append(row)
            continue
        report.rows.append(row)
        print(
            f"  {clients} clients: lost {row['lost']}, last p99 {row['last_p99_ms']} ms", flush=True
        )
    print(
        f"\nFan-out, {args.sends} group sends {args.interval:g} s apart, one interface process, "
        f"compression={args.compression}; latencies in ms\n"
    )
    columns = ["clients", "connected", "members", "connect_s", "received", "lost", "duplicates"]
    columns += ["last_p50_ms", "last_p99_ms", "last_max_ms", "each_p50_ms", "each_p99_ms"]
    columns += ["iface_us_per_frame", "cpu"]
    columns += ["error"] if any("error" in r for r in report.rows) else []
    print(h.table(report.rows, columns))
    at = next((r for r in report.rows if r["clients"] == BAR_CLIENTS), None)
    if at is not None and "error" not in at:
        report.bars += [
            h.Bar(f"messages lost at {BAR_CLIENTS} clients", at["lost"], 0),
            h.Bar(
                f"p99 send -> last client at {BAR_CLIENTS} clients",
                at["last_p99_ms"],
                BAR_P99_MS,
                unit=" ms",
            ),
        ]
    report.notes.append(
        "last_*: send -> receipt by the last client, per send; each_*: every delivery"
    )
    report.print_bars()
    print(f"\nJSON: {report.write(args.json)}")
    return report


if __name__ == "__main__":
    sys.exit(h.run_main(main, sys.argv[1:]))
