"""Paired A/B of two source trees of wsgi-channels on HTTP: both bridges run at once,
each on its own Redis (or SQLite file), and short ``wrk`` runs alternate between them;
the ratios and differences are taken pair by pair, then their median.

    git worktree add /tmp/base main
    python -m benchmarks.ab /tmp/base [--against .] [--cases c1,c32] [--pairs 12]

Cases: ``c1``, ``c2``, ``c4``, ``c32`` (an interface and workers on Redis, at that
many connections), ``sqlite1``, ``sqlite8`` (an interface and 2 workers x 8 threads
on one SQLite file), ``run1``, ``run8`` (``wsgi-channels run --threads 4`` on its
SQLite layer).

On a machine whose speed drifts within minutes (a shared VM), rounds of one build then
the other measure the drift more than the change: an A/A test of one commit put it
20 % apart. Alternating runs of 2 s with both builds up cut that to about 5 %; run an
A/A (the same tree twice) first to see this machine's noise.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import _harness as h
from benchmarks.http_throughput import start_bridge
from benchmarks.run_sqlite import start_ours as start_run

Start = Callable[[h.Procs], int]


def _redis(split: tuple[int, int, int]) -> tuple[str, Start]:
    return ":".join(map(str, split)), lambda procs: start_bridge(procs, split)[0]


def _sqlite_split(procs: h.Procs) -> int:
    """An interface and 2 workers x 8 threads on one SQLite file; its port."""
    layer = f"sqlite:///{procs.logdir}/layer-{h.free_port()}.sqlite3"
    return start_bridge(procs, (1, 2, 8), layer=layer)[0]


_RUN: tuple[str, Start] = ("run --threads 4, SQLite", lambda procs: start_run(procs, 4)[0])
_SQLITE: tuple[str, Start] = ("1:2:8, SQLite", _sqlite_split)

#: case: (what runs, how to start it), wrk threads, connections.
CASES: dict[str, tuple[tuple[str, Start], int, int]] = {
    "c1": (_redis((1, 1, 8)), 1, 1),
    "c2": (_redis((1, 1, 8)), 1, 2),
    "c4": (_redis((1, 2, 16)), 2, 4),
    "c32": (_redis((1, 2, 16)), 2, 32),
    "sqlite1": (_SQLITE, 1, 1),
    "sqlite8": (_SQLITE, 2, 8),
    "run1": (_RUN, 1, 1),
    "run8": (_RUN, 2, 8),
}


def main(argv: list[str] | None = None) -> h.Report:
    p = h.parser("ab", __doc__.splitlines()[0])
    p.add_argument("base", help="source tree A (a git worktree)")
    p.add_argument("--against", default=str(h.ROOT), help="source tree B (default: this one)")
    p.add_argument("--cases", default="c1,c32", help=f"among {', '.join(CASES)}")
    p.add_argument("--pairs", type=int, default=12, help="alternating pairs of runs per case")
    p.add_argument("--seconds", type=int, default=2, help="length of one wrk run")
    args = p.parse_args(argv)
    if args.quick:
        args.cases, args.pairs, args.seconds = args.cases.split(",")[0], 1, 1
    trees = {"A": Path(args.base).resolve(), "B": Path(args.against).resolve()}
    report = h.Report("ab", params={**vars(args), "json": str(args.json)})
    for case in args.cases.split(","):
        (label, start), threads, connections = CASES[case]
        runs: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
        with h.Procs() as procs:
            ports = {}
            for name, tree in trees.items():
                h.ROOT = tree  # child_env puts it first on PYTHONPATH
                ports[name] = start(procs)
                h.wrk(ports[name], threads=threads, connections=connections, seconds=1)
            for i in range(args.pairs):
                for name in ("A", "B") if i % 2 == 0 else ("B", "A"):
                    runs[name].append(
                        h.wrk(ports[name], threads=threads, connections=connections,
                              seconds=args.seconds)
                    )  # fmt: skip
        pairs = list(zip(runs["A"], runs["B"], strict=True))
        row: dict[str, Any] = {"case": case, "split": label}
        for name in ("A", "B"):
            for key in ("rps", "p50_ms", "p99_ms"):
                row[f"{name}_{key}"] = statistics.median(r[key] for r in runs[name])
        row["rps_B_over_A"] = statistics.median(b["rps"] / a["rps"] for a, b in pairs)
        for key in ("p50_ms", "p99_ms"):
            row[f"{key}_B_minus_A"] = statistics.median(b[key] - a[key] for a, b in pairs)
        report.rows.append(row)
    print("\n" + h.run_header(f"Paired A/B: A = {trees['A']}, B = {trees['B']}", "ab", argv))
    print(h.markdown(report.rows, [(k, k) for k in report.rows[0]]))
    print(f"\nJSON: {report.write(args.json)}")
    return report


if __name__ == "__main__":
    sys.exit(h.run_main(main, sys.argv[1:]))
