"""Run every benchmark scenario in turn and print a summary of the bars.

    python -m benchmarks [--quick] [--only NAME,NAME] [--rounds N] [--duration S]
        [--results DIR]
    python -m benchmarks.run_all ...       (the same)

``--rounds`` and ``--duration`` go to every scenario that takes them (the side-by-side
ones: HTTP throughput and latency, WebSocket echo, ``run`` on SQLite; ``--rounds`` also
to fan-out).

Each scenario prints its own table and writes ``DIR/<scenario>.json`` (default
benchmarks/results/); the summary goes to ``DIR/summary.json``. A scenario that cannot
run here (wrk or redis-server missing) is reported as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _harness as h

SCENARIOS = (
    "http_throughput",
    "http_latency",
    "ws_echo",
    "fanout",
    "run_sqlite",
    "group_send",
    "ws_memory",
    "sqlite_latency",
    "micro",
)
TAKES_ROUNDS = {"http_throughput", "http_latency", "ws_echo", "fanout", "run_sqlite"}
TAKES_DURATION = {"http_throughput", "http_latency", "ws_echo", "run_sqlite"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    p.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    p.add_argument("--rounds", type=int, help="interleaved rounds, where a scenario has them")
    p.add_argument("--duration", type=float, help="seconds per measurement, where it applies")
    p.add_argument("--results", type=Path, default=h.RESULTS, help="directory for the JSON")
    args = p.parse_args(argv)
    summary = []
    failed = False
    for name in args.only.split(","):
        if name not in SCENARIOS:
            p.error(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
        print(f"\n=== {name} {'(quick)' if args.quick else ''}".rstrip(), flush=True)
        module = importlib.import_module(f"benchmarks.{name}")
        scenario_argv = ["--json", str(args.results / f"{name}.json")]
        if args.quick:
            scenario_argv.append("--quick")
        if args.rounds is not None and name in TAKES_ROUNDS:
            scenario_argv += ["--rounds", str(args.rounds)]
        if args.duration is not None and name in TAKES_DURATION:
            scenario_argv += ["--duration", str(args.duration)]
        t0 = time.monotonic()
        entry: dict[str, object] = {"scenario": name}
        try:
            report = module.main(scenario_argv)
            entry.update(status="ok", bars=[bar.as_dict() for bar in report.bars])
            errors = [row["error"] for row in report.rows if row.get("error")]
            if errors:  # a measurement failed: the table has holes
                entry.update(status="error", reason=errors[0])
                failed = True
        except h.Skip as exc:
            print(f"SKIPPED: {exc}")
            entry.update(status="skipped", reason=str(exc))
        except Exception as exc:
            traceback.print_exc()
            entry.update(status="error", reason=repr(exc))
            failed = True
        entry["seconds"] = round(time.monotonic() - t0, 1)
        summary.append(entry)
    print("\n=== summary")
    for entry in summary:
        print(f"{entry['scenario']}: {entry['status']} ({entry['seconds']} s)")
        for bar in entry.get("bars", []):  # type: ignore[union-attr]
            verdict = {True: "MET", False: "MISSED", None: "n/a"}[bar["ok"]]
            value = "n/a" if bar["value"] is None else f"{bar['value']:.3g}"
            limit = f"{bar['op']} {bar['limit']:g}"
            print(f"  [{verdict:6}] {bar['name']}: {value}{bar['unit']} {limit}")
        if entry["status"] != "ok":
            print(f"  {entry.get('reason')}")
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
