"""Per request, what each process of the bridge costs: CPU, system calls, context switches.

``python -m benchmarks.per_request [--split 1:2:16] [--connections 32] [--duration 6]
[--rounds 3] [--app benchmarks.apps:hello] [--redis-transport unix]``

Starts Redis, the interface and the workers of ``--split`` (as ``http_throughput``
does), drives them with ``wrk``, and reads from ``/proc`` before and after each
measured run: CPU time (user + system), read-like and write-like system calls
(``/proc/PID/io``: ``syscr``, ``syscw``) and voluntary and involuntary context
switches summed over the process's threads, each divided by the requests of that run
(a worker's by the requests of the whole run, so the workers' rows add up). Rounds
alternate the workers' scheduling policy, ``SCHED_BATCH`` (the default) and the
default policy (``WSGI_CHANNELS_BATCH_SCHEDULING=0``), each with fresh processes;
medians per process. Not a bar: evidence for where a request's cost goes (an
involuntary switch is a preemption, a voluntary one a sleep in a lock, a socket or
the GIL), Linux only.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks import _harness as h
from benchmarks.http_throughput import parse_split, start_bridge

POLICIES = {"SCHED_BATCH": "1", "default": "0"}


def snapshot(pid: int) -> dict[str, float]:
    """CPU time, system calls and context switches of *pid* so far."""
    proc = Path(f"/proc/{pid}")
    io = dict(line.split(": ") for line in (proc / "io").read_text().splitlines())
    voluntary = involuntary = 0
    for status in proc.glob("task/*/status"):
        try:
            with status.open() as lines:
                for line in lines:
                    if line.startswith("voluntary_ctxt_switches"):
                        voluntary += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        involuntary += int(line.split()[1])
        except FileNotFoundError:  # a thread ended meanwhile
            continue
    return {"cpu_us": h.cpu_seconds([pid]) * 1e6, "syscr": int(io["syscr"]),
            "syscw": int(io["syscw"]), "voluntary": voluntary,
            "involuntary": involuntary}  # fmt: skip


def measure(args: Any, policy: str) -> dict[str, Any]:
    wrk_threads = 2 if args.connections > 1 else 1
    env = {"WSGI_CHANNELS_BATCH_SCHEDULING": POLICIES[policy]}
    with h.Procs() as procs:
        port, groups = start_bridge(procs, parse_split(args.split), app=args.app, worker_env=env)
        targets = {"redis": groups["redis"], "interface": groups["interface"]}
        targets.update((f"worker {i}", proc) for i, proc in enumerate(groups["worker"]))
        h.wrk(port, threads=wrk_threads, connections=args.connections, seconds=2)  # warm-up
        pids = {name: proc.pids()[-1] for name, proc in targets.items()}
        before = {name: snapshot(pid) for name, pid in pids.items()}
        result = h.wrk(port, threads=wrk_threads, connections=args.connections,
                       seconds=args.duration)  # fmt: skip
        after = {name: snapshot(pid) for name, pid in pids.items()}
    requests = max(1, result["requests"])
    per = {
        name: {k: (after[name][k] - before[name][k]) / requests for k in before[name]}
        for name in pids
    }
    return {"rps": result["rps"], "per_request": per}


def main(argv: list[str] | None = None) -> h.Report:
    p = h.parser("per_request", __doc__.splitlines()[0])
    h.add_rounds_options(p, rounds=3, duration=6.0)
    p.add_argument("--split", default="1:2:16", help="interfaces:workers:threads")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--app", default="benchmarks.apps:hello")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 1.0
    if not os.path.exists("/proc/self/io"):
        raise h.Skip("needs Linux's /proc/PID/io")
    report = h.Report("per_request", params={**vars(args), "json": str(args.json)})
    results = h.interleaved(args.rounds, list(POLICIES), lambda policy: measure(args, policy))
    rows = []
    for policy, runs in results.items():
        good = [r for r in runs if "per_request" in r]
        if not good:
            continue
        for name in good[0]["per_request"]:
            row: dict[str, Any] = {"config": f"workers {policy}", "process": name,
                                   "rps": statistics.median(r["rps"] for r in good)}  # fmt: skip
            for key in ("cpu_us", "syscr", "syscw", "voluntary", "involuntary"):
                row[key] = statistics.median(r["per_request"][name][key] for r in good)
            rows.append(row)
    report.rows = rows
    title = (
        f"Per request, split {args.split}, wrk -c{args.connections} -d{args.duration:g}s, "
        f"{args.rounds} rounds alternating the workers' policy, medians"
    )
    print("\n" + h.run_header(title, "per_request", argv))
    columns = [("config", "workers' policy"), ("rps", "req/s"), ("process", "process"),
               ("cpu_us", "CPU µs"), ("syscr", "reads"), ("syscw", "writes"),
               ("voluntary", "voluntary cs"), ("involuntary", "involuntary cs")]  # fmt: skip
    print(h.markdown(rows, columns))
    print(f"\nJSON: {report.write(args.json)}")
    return report


if __name__ == "__main__":
    sys.exit(h.run_main(main, sys.argv[1:]))
