"""The Redis layer on a three-master Redis Cluster against one Redis server, in the same
run: group send to 10 and 10,000 members (members over two process prefixes, as two
interface processes), and HTTP throughput of the Flask hello world (``wrk``) through
``wsgi-channels interface`` + ``worker``.

The cluster is three ``redis-server --cluster-enabled yes`` masters made one with
``redis-cli --cluster create`` (``--replicas 1`` adds a replica to each, as production
runs it: replication then costs what it costs). Group sends interleave the sizes and
the two layers; HTTP measurements interleave the two layers over ``--rounds`` rounds,
fresh interface and worker processes for each (the Redis servers stay up), medians
reported.

Bars (cluster): a group send to 10,000 members <= 2 ms, and <= 1.5x a send to 10.

    python -m benchmarks.cluster [--sizes 10,10000] [--sends 200] [--rounds 3]
        [--duration 5] [--connections 32] [--split 1:1:4] [--replicas 0] [--quick]
        [--json PATH]
"""

from __future__ import annotations

import random
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _harness as h
from benchmarks.group_send import bench_ours, size_bars
from benchmarks.http_throughput import APP, parse_split, split_label

REDIS_CLI = "redis-cli"


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, below the ephemeral range."""
    for _ in range(200):
        port = random.randrange(20000, 30000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind((h.HOST, candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free pair of ports for a cluster node")


def start_cluster(procs: h.Procs, replicas: int) -> str:
    """Three masters (and *replicas* replicas each); the layer URL once all slots are ok."""
    import redis

    if h.REDIS_SERVER is None:
        raise h.Skip("no redis-server binary on PATH")
    ports = [_cluster_port() for _ in range(3 * (1 + replicas))]
    for port in ports:
        rdir = procs.logdir / f"cluster-{port}"
        rdir.mkdir()
        proc = procs.start(
            f"cluster-{port}",
            [h.REDIS_SERVER, "--port", str(port), "--bind", h.HOST, "--save", "",
             "--appendonly", "no", "--dir", str(rdir), "--cluster-enabled", "yes",
             "--cluster-config-file", str(rdir / "nodes.conf")],
        )  # fmt: skip
        h.wait_for_port(port, proc=proc)
    try:
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *(f"{h.HOST}:{p}" for p in ports),
             "--cluster-replicas", str(replicas), "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
        )  # fmt: skip
    except FileNotFoundError:
        raise h.Skip("redis-cli is not installed") from None

    def ok() -> bool:
        for port in ports:
            with redis.Redis(host=h.HOST, port=port) as client:
                info = client.execute_command("CLUSTER INFO")
                if info["cluster_state"] != "ok" or int(info["cluster_slots_ok"]) != 16384:
                    return False
        return True

    if not h.sleep_until(ok, timeout=30):
        raise RuntimeError("the cluster did not come up")
    return "redis+cluster://" + ",".join(f"{h.HOST}:{p}" for p in ports[:3])


def measure_http(
    procs: h.Procs, url: str, split: tuple[int, int, int], args: Any
) -> dict[str, Any]:
    """Fresh interface and workers on *url*, a warm-up, then one wrk run; stopped after."""
    interfaces, workers, threads = split
    started = len(procs.procs)
    interface, port = procs.interface(url, workers=interfaces)
    worker_procs = [procs.worker(APP, url, threads=threads) for _ in range(workers)]
    try:
        h.wait_http_ok(port, procs=[interface, *worker_procs])
        if args.warmup:
            h.wrk(port, threads=2, connections=args.connections, seconds=args.warmup)
        groups: dict[str, Any] = {"interface": interface, "worker": worker_procs}
        with h.CpuMeter(groups) as cpu:
            result = h.wrk(port, threads=2, connections=args.connections, seconds=args.duration)
        interface.check_alive()
    finally:
        while len(procs.procs) > started:
            procs.stop(procs.procs[-1])
    result["cpu"] = " ".join(f"{k}={v:g}%" for k, v in cpu.result.items())
    return result


def main(argv: list[str] | None = None) -> h.Report:
    p = h.parser("cluster", __doc__.splitlines()[0])
    h.add_rounds_options(p, rounds=3, duration=5.0)
    p.add_argument("--sizes", default="10,10000")
    p.add_argument("--sends", type=int, default=200, help="timed group sends per size")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--split", default="1:1:4", help="interface:workers:threads for HTTP")
    p.add_argument("--replicas", type=int, default=0, help="replicas per cluster master")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.sends, args.rounds, args.duration, args.warmup = "10,100", 10, 1, 1, 0
    sizes = [int(s) for s in args.sizes.split(",")]
    split = parse_split(args.split)
    h.require_components("layers/redis", "sender", "cli", "interface", "worker")
    report = h.Report("cluster", params={**vars(args), "json": str(args.json)})
    with h.Procs() as procs:
        urls = {"one Redis": procs.redis(), "Redis Cluster, 3 masters": ""}
        urls["Redis Cluster, 3 masters"] = start_cluster(procs, args.replicas)
        if args.replicas:
            label = f"Redis Cluster, 3 masters + {3 * args.replicas} replicas"
            urls[label] = urls.pop("Redis Cluster, 3 masters")
        rows: list[dict[str, Any]] = []
        for name, url in urls.items():
            for row in bench_ours(url, sizes, args.sends):
                rows.append({"layer": name, **row, "x_vs_smallest": None})
        for name in urls:
            mine = {r["members"]: r for r in rows if r["layer"] == name}
            for row in mine.values():
                row["x_vs_smallest"] = row["mean_ms"] / mine[sizes[0]]["mean_ms"]
        http_rows: list[dict[str, Any]] = []
        if h.WRK is not None:
            results = h.interleaved(
                args.rounds, list(urls), lambda name: measure_http(procs, urls[name], split, args)
            )
            keys = ["rps", "p50_ms", "p99_ms", "errors"]
            for name, runs in results.items():
                row = {"layer": name, "server": split_label(split), **h.medians(runs, keys)}
                row["rps_rounds"] = " / ".join(f"{r['rps']:,.0f}" for r in runs if "rps" in r)
                row["cpu"] = next((r["cpu"] for r in reversed(runs) if "cpu" in r), None)
                http_rows.append(row)
        else:
            report.notes.append("wrk is not installed: no HTTP figures")
    report.rows = rows + http_rows
    print("\n" + h.run_header("Group send, one Redis vs a Redis Cluster", "cluster", argv))
    print(h.markdown(rows, [("layer", "layer"), ("members", "members"), ("mean_ms", "mean ms"),
                            ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
                            ("x_vs_smallest", f"vs {sizes[0]} members"),
                            ("group_add_us", "group_add µs"),
                            ("expand_us_per_member", "receiver expansion µs/member")]))  # fmt: skip
    if http_rows:
        title = (
            f"HTTP throughput, Flask hello world, wrk -t2 -c{args.connections} "
            f"-d{args.duration:g}s, {args.rounds} rounds interleaved, medians"
        )
        print("\n" + title + "\n")
        print(h.markdown(http_rows, [("layer", "layer"), ("server", "server"),
                                     ("rps", "req/s"), ("p50_ms", "p50 ms"),
                                     ("p99_ms", "p99 ms"), ("errors", "errors"),
                                     ("rps_rounds", "req/s per round"),
                                     ("cpu", "cpu (% of a core, last round)")]))  # fmt: skip
    cluster = {r["members"]: r for r in rows if r["layer"].startswith("Redis Cluster")}
    report.bars += size_bars("cluster", cluster, sizes)
    report.notes.append(
        "A group send on the cluster is one round trip to the group's master and one to "
        "each master holding member queues; on one server it is one script."
    )
    report.print_bars()
    print(f"\nJSON: {report.write(args.json)}")
    return report


if __name__ == "__main__":
    sys.exit(h.run_main(main, sys.argv[1:]))
