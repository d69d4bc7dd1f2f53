"""Profile the HTTP path under load: py-spy samples the interface server and the worker
while wrk drives the Flask hello-world through the bridge, and the stacks are summed up
per process (which functions the busy threads spend their time in).

Writes flame graphs (SVG) and collapsed stacks to benchmarks/results/profile/, prints
the top functions by inclusive and by own time, and the CPU per process.

    python -m benchmarks.profile_http [--seconds 15] [--connections 32] [--split 1:1:4]
        [--rate 250] [--top 25] [--out DIR]
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _harness as h
from benchmarks.http_throughput import parse_split, start_bridge

PY_SPY = shutil.which("py-spy")


def summarize(collapsed: Path, top: int) -> tuple[int, list[tuple[str, int, int]]]:
    """(samples, [(function, inclusive samples, own samples)]) from py-spy's raw
    (collapsed) output, best first by inclusive."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [_frame(f) for f in stack.split(";")]
        frames = [f for f in frames if f]
        for name in set(frames):
            inclusive[name] += count
        if frames:
            own[frames[-1]] += count
    names = sorted(inclusive, key=lambda n: -inclusive[n])[:top]
    return total, [(n, inclusive[n], own[n]) for n in names]


def _frame(text: str) -> str:
    # py-spy raw frames look like "function (path/to/module.py:123)"; keep the
    # function and the module's last two path parts, drop the line number.
    m = re.match(r"^(.*) \((.*?)(?::\d+)?\)$", text.strip())
    if not m:
        return text.strip()
    func, path = m.groups()
    short = "/".join(Path(path).parts[-2:])
    return f"{func} ({short})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_http", description=__doc__)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--split", default="1:1:4")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", type=Path, default=h.RESULTS / "profile")
    args = p.parse_args(argv)
    if PY_SPY is None:
        raise h.Skip("py-spy is not installed")
    args.out.mkdir(parents=True, exist_ok=True)
    with h.Procs() as procs:
        port, groups = start_bridge(procs, parse_split(args.split))
        h.wrk(port, threads=1, connections=args.connections, seconds=2)  # warm-up
        targets = {"interface": groups["interface"], "worker": groups["worker"][0]}
        spies = {}
        for name, proc in targets.items():
            for fmt, suffix in (("raw", "txt"), ("flamegraph", "svg")):
                out = args.out / f"{name}.{suffix}"
                spies[(name, fmt)] = subprocess.Popen(
                    [PY_SPY, "record", "--pid", str(proc.pids()[-1]), "--rate", str(args.rate),
                     "--duration", str(int(args.seconds)), "--format", fmt, "--output", str(out),
                     "--nonblocking", "--gil"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )  # fmt: skip
        time.sleep(0.5)
        with h.CpuMeter(groups) as cpu:
            result = h.wrk(port, threads=1, connections=args.connections, seconds=args.seconds - 1)
        for spy in spies.values():
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
    requests = result["requests"]
    print(
        f"profile: {result['rps']:.0f} req/s ({requests} requests) with py-spy attached; "
        f"cpu % of one core: {cpu.result}\n"
    )
    for name in targets:
        total, rows = summarize(args.out / f"{name}.txt", args.top)
        busy_s = cpu.result.get(name, 0) / 100 * (args.seconds - 1)
        print(f"== {name}: {total} samples of busy threads; ~{busy_s / requests * 1e6:.0f} us CPU")
        print("   per request")
        print(f"   {'incl%':>6} {'own%':>6}  function")
        for func, incl, own in rows:
            print(f"   {100 * incl / total:6.1f} {100 * own / total:6.1f}  {func}")
        print()
    print(f"flame graphs: {args.out}/interface.svg, {args.out}/worker.svg")
    return 0


if __name__ == "__main__":
    sys.exit(h.run_main(lambda a: main(a), sys.argv[1:]))  # type: ignore[arg-type,return-value]
