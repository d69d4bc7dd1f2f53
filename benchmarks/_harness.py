"""What every benchmark scenario shares: processes, Redis, wrk, CPU and memory probes,
tables and JSON.

Every process a scenario starts is a :class:`Proc` registered in a :class:`Procs`
stack; leaving the ``with Procs()`` block (normally, on an error or on Ctrl-C) stops
each one's whole process group, SIGTERM first and SIGKILL after a grace period. Loads
are loopback only and bounded in time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

WRK = shutil.which("wrk")
REDIS_SERVER = shutil.which("redis-server")
# The virtualenv's scripts first, whether or not it is activated.
GUNICORN = shutil.which(
    "gunicorn", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
)


class Skip(Exception):
    """A scenario cannot run here (a binary or a component is missing); the message
    says which."""


# -- command line and output ---------------------------------------------------------


def parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    p.add_argument(
        "--json",
        metavar="PATH",
        type=Path,
        default=None,
        help=f"where to write the results (default: benchmarks/results/{name}.json)",
    )
    return p


def environment() -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for dist in ("uvicorn", "websockets", "wsproto", "redis", "msgpack", "gunicorn", "flask"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "versions": versions,
    }


@dataclass
class Bar:
    """A target the issue sets: ``value`` must be ``<=`` or ``>=`` ``limit``."""

    name: str
    value: float | None
    limit: float
    op: str = "<="
    unit: str = ""

    @property
    def ok(self) -> bool | None:
        if self.value is None:
            return None
        compare = {
            "<=": float.__le__,
            "<": float.__lt__,
            ">=": float.__ge__,
            ">": float.__gt__,
        }[self.op]
        return bool(compare(float(self.value), float(self.limit)))

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "op": self.op,
            "limit": self.limit,
            "unit": self.unit,
            "ok": self.ok,
        }

    def line(self) -> str:
        verdict = {True: "MET", False: "MISSED", None: "n/a"}[self.ok]
        value = "n/a" if self.value is None else f"{self.value:.3g}"
        return (
            f"  [{verdict:6}] {self.name}: {value}{self.unit} {self.op} {self.limit:g}{self.unit}"
        )


@dataclass
class Report:
    scenario: str
    params: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self, path: Path | None) -> Path:
        path = path or RESULTS / f"{self.scenario}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "scenario": self.scenario,
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "environment": environment(),
            "params": self.params,
            "rows": self.rows,
            "bars": [bar.as_dict() for bar in self.bars],
            "notes": self.notes,
            **self.extra,
        }
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")
        return path

    def print_bars(self) -> None:
        if self.bars:
            print("\nbars:")
            for bar in self.bars:
                print(bar.line())
        for note in self.notes:
            print(f"note: {note}")


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """*rows* as an aligned plain-text table (floats to 3-4 significant digits)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def fmt(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            if value == 0:
                return "0"
            if abs(value) >= 1000:
                return f"{value:,.0f}"
            return f"{value:.4g}" if abs(value) < 10 else f"{value:.1f}"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return str(value)

    cells = [[fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    numeric = [
        all(isinstance(row.get(c), (int, float)) or row.get(c) is None for row in rows)
        for c in columns
    ]
    for r in cells:
        lines.append(
            "  ".join(
                v.rjust(w) if num else v.ljust(w)
                for v, w, num in zip(r, widths, numeric, strict=True)
            ).rstrip()
        )
    return "\n".join(lines)


def percentile(values: Sequence[float], pct: float) -> float | None:
    """The *pct* percentile of *values* by the nearest-rank method."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil
    return ordered[int(rank) - 1]


def run_main(main: Callable[[list[str] | None], Report], argv: list[str] | None) -> int:
    """Run a scenario's ``main``; a Skip prints its reason and exits 0 (status 3 with
    ``BENCH_STRICT=1``)."""
    try:
        main(argv)
    except Skip as exc:
        print(f"SKIPPED: {exc}")
        return 3 if os.environ.get("BENCH_STRICT") else 0
    return 0


# -- processes -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0, proc: Proc | None = None) -> None:
    """Poll until something accepts connections on *port*; fail early if *proc* dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            proc.check_alive()
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {HOST}:{port} after {timeout} s")


def child_env(**extra: str) -> dict[str, str]:
    """The environment of our child processes: the repository on ``sys.path``, no
    layer configured implicitly."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("WSGI_CHANNELS_LAYER", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Proc:
    """A child process in its own session (so its whole group can be stopped), with
    stdout and stderr captured to a log file."""

    def __init__(self, name: str, argv: Sequence[str], logdir: Path, **env: str) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = logdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=child_env(**env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with status {self.popen.returncode}: "
                f"{' '.join(self.argv)}\n--- log tail ---\n{self.log_tail()}"
            )

    def pids(self) -> list[int]:
        """This process and all its descendants (uvicorn/gunicorn fork workers)."""
        return [self.pid, *descendants(self.pid)]

    def stop(self, grace: float = 5.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        # Whatever is left in the group (the leader or its children), kill it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        if self.popen.poll() is None:
            self.popen.wait()
        self._log.close()


class Procs:
    """A stack of child processes, all stopped (in reverse order) on exit."""

    def __init__(self, keep_logs: bool = False) -> None:
        self.logdir = Path(tempfile.mkdtemp(prefix="wsgi-channels-bench-"))
        self.keep_logs = keep_logs
        self.procs: list[Proc] = []

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
        if not self.keep_logs and exc[0] is None:
            shutil.rmtree(self.logdir, ignore_errors=True)
        elif exc[0] is not None:
            print(f"(process logs kept in {self.logdir})", file=sys.stderr)

    def start(self, name: str, argv: Sequence[str], **env: str) -> Proc:
        proc = Proc(name, argv, self.logdir, **env)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        while self.procs:
            self.procs.pop().stop()

    # -- the pieces every scenario starts ---------------------------------------------

    def redis(self) -> str:
        """Start a redis-server of our own on a free port (or, with ``--redis-transport
        unix``, on a Unix socket only); return its layer URL."""
        if REDIS_SERVER is None:
            raise Skip("no redis-server binary on PATH")
        port = free_port()
        rdir = self.logdir / f"redis-{port}"
        rdir.mkdir()
        sock = rdir / "redis.sock"
        where = ["--port", str(port), "--bind", HOST]
        if REDIS_TRANSPORT == "unix":
            where = ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
        proc = self.start(
            f"redis-{port}",
            [
                REDIS_SERVER,
                *where,
                "--save", "",
                "--appendonly", "no",
                "--dir", str(rdir),
            ],
        )  # fmt: skip
        if REDIS_TRANSPORT == "unix":
            if not sleep_until(sock.exists, 15):
                proc.check_alive()
                raise RuntimeError(f"redis-server made no socket at {sock}")
            return f"unix://{sock}"
        wait_for_port(port, proc=proc)
        return f"redis://{HOST}:{port}/0"

    def interface(
        self, layer: str, *, workers: int = 1, extra: Sequence[str] = ()
    ) -> tuple[Proc, int]:
        port = free_port()
        argv = [*cli(), "interface", "--bind", f"{HOST}:{port}", "--layer", layer]
        if workers != 1:
            argv += ["--workers", str(workers)]
        proc = self.start(f"interface-{port}", [*argv, *extra])
        wait_for_port(port, proc=proc)
        return proc, port

    def worker(
        self, app: str, layer: str, *, threads: int, name: str = "worker", **env: str
    ) -> Proc:
        # No access log, as gunicorn's default (the baselines log no request either).
        argv = [
            *cli(), "worker", app, "--layer", layer, "--threads", str(threads),
            "--no-access-log",
        ]  # fmt: skip
        return self.start(f"{name}-{len(self.procs)}", argv, **env)

    def gunicorn(
        self, app: str, *, workers: int, kind: str = "sync", extra: Sequence[str] = ()
    ) -> tuple[Proc, int]:
        if GUNICORN is None:
            raise Skip("gunicorn is not installed")
        port = free_port()
        argv = [
            GUNICORN, "-k", kind, "-w", str(workers), "-b", f"{HOST}:{port}",
            "--log-level", "warning", "--backlog", "2048", *extra, app,
        ]  # fmt: skip
        proc = self.start(f"gunicorn-{port}", argv)
        wait_for_port(port, proc=proc)
        return proc, port


def cli() -> list[str]:
    """How to run the ``wsgi-channels`` command: its entry point (``wsgi_channels.cli:main``)
    from this checkout, so that an installed copy elsewhere is never what gets measured."""
    require_components("cli")
    entry = "import sys; from wsgi_channels.cli import main; sys.exit(main())"
    return [sys.executable, "-c", entry]


def require_components(*modules: str) -> None:
    """Raise Skip unless each ``wsgi_channels.<module>`` exists in this checkout, as a
    module or as a package (so that splitting a module into a package keeps the
    benchmarks running)."""
    base = ROOT / "wsgi_channels"

    def present(m: str) -> bool:
        path = base / m.replace(".", "/")
        return path.with_suffix(".py").exists() or (path / "__init__.py").exists()

    missing = [m for m in modules if not present(m)]
    if missing:
        raise Skip("wsgi_channels component(s) not present yet: " + ", ".join(missing))


def wait_http_ok(
    port: int, path: str = "/", timeout: float = 20.0, procs: Iterable[Proc] = ()
) -> None:
    """Poll GET *path* until it answers 200 (a bridge is ready when a worker answers)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        for proc in procs:
            proc.check_alive()
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=2) as resp:
                if resp.status == 200:
                    return
                last = resp.status
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"GET {path} on port {port} did not answer 200 in {timeout} s: {last}")


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds used so far by *pids* (those still alive)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def rss_kib(pids: Iterable[int]) -> int:
    """Sum of VmRSS (KiB) over *pids*."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def _own_cpu_seconds() -> float:
    """CPU of this process, its reaped children (wrk) and its live descendants."""
    with open(f"/proc/{os.getpid()}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    own = sum(int(v) for v in fields[11:15]) / CLK_TCK  # utime stime cutime cstime
    return own + cpu_seconds(descendants(os.getpid()))


class CpuMeter:
    """CPU use of named groups of processes over an interval, in % of one core
    (``result``) and in seconds (``seconds``), plus ``others``: what the rest of the
    machine used meanwhile (load we did not start, which makes a run noisy).

    A thread samples every process of each group (and their descendants) four times a
    second, so processes that exit before the end still count up to their last sample.
    """

    def __init__(self, groups: dict[str, Proc | Sequence[Proc]]) -> None:
        self.groups = {k: [v] if isinstance(v, Proc) else list(v) for k, v in groups.items()}
        self.first: dict[str, dict[int, float]] = {name: {} for name in self.groups}
        self.last: dict[str, dict[int, float]] = {name: {} for name in self.groups}
        self.t0 = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-meter", daemon=True)

    def _sample(self) -> None:
        for name, procs in self.groups.items():
            for proc in procs:
                for pid in proc.pids():
                    value = cpu_seconds([pid])
                    if pid not in self.first[name] and self.t0:
                        # New since the start (a forked worker, a short-lived child).
                        self.first[name][pid] = 0.0 if self._started else value
                    if value or pid not in self.last[name]:
                        self.last[name][pid] = value

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self._sample()

    def __enter__(self) -> CpuMeter:
        self._started = False
        self.t0 = time.monotonic()
        self._sample()
        self._started = True
        self.machine0 = machine_busy_seconds()
        self.self0 = _own_cpu_seconds()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        elapsed = time.monotonic() - self.t0
        self.seconds = {
            name: sum(self.last[name][pid] - first for pid, first in self.first[name].items())
            for name in self.groups
        }
        self.result = {name: round(100 * v / elapsed, 1) for name, v in self.seconds.items()}
        # Everything we started descends from this process (wrk, clients, servers).
        ours = _own_cpu_seconds() - self.self0
        others = machine_busy_seconds() - self.machine0 - max(ours, sum(self.seconds.values()))
        self.result["others"] = round(max(0.0, 100 * others / elapsed), 1)
        self.elapsed = elapsed


# -- wrk -------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"cannot parse wrk duration {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """The figures of ``wrk --latency`` output: req/s, mean/stdev/max latency and the
    50/75/90/99 percentiles (ms), request count, errors."""
    result: dict[str, Any] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not m:
        raise ValueError(f"no Requests/sec in wrk output:\n{output}")
    result["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+\w+)", output)
    if m:
        result["requests"] = int(m.group(1))
    m = re.search(r"Latency\s+([\d.]+\w+)\s+([\d.]+\w+)\s+([\d.]+\w+)", output)
    if m:
        result["mean_ms"], result["stdev_ms"], result["max_ms"] = (_ms(g) for g in m.groups())
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+\w+)\s*$", output, re.M):
        result[f"p{pct}_ms"] = _ms(value)
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if m:
        result["socket_errors"] = dict(
            zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True)
        )
        errors += sum(map(int, m.groups()))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["non_2xx"] = int(m.group(1)) if m else 0
    result["errors"] = errors + result["non_2xx"]
    return result


def wrk(
    port: int, *, threads: int, connections: int, seconds: float, path: str = "/"
) -> dict[str, Any]:
    if WRK is None:
        raise Skip("wrk is not installed (apt-get install wrk)")
    seconds = max(1, round(seconds))  # wrk takes whole seconds only
    argv = [
        WRK, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
        "--timeout", "10s", f"http://{HOST}:{port}{path}",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    result = parse_wrk(done.stdout)
    result["command"] = " ".join(["wrk", *argv[1:]])
    return result


def sleep_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft open-files limit towards *wanted*; return the result."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


# -- rounds, medians and Markdown ------------------------------------------------------


def add_rounds_options(p: argparse.ArgumentParser, *, rounds: int, duration: float) -> None:
    """The options every side-by-side scenario takes: how many interleaved rounds and
    how long each measurement lasts."""
    p.add_argument(
        "--rounds", type=int, default=rounds, help="interleaved rounds (medians are reported)"
    )
    p.add_argument("--duration", type=float, default=duration, help="seconds per measurement")
    p.add_argument(
        "--redis-transport", choices=("tcp", "unix"), default="tcp", action=_TransportAction,
        help="how every process of the run reaches its redis-server: TCP on 127.0.0.1 "
        "(default) or the server's Unix socket (what one machine would use)",
    )  # fmt: skip


#: How Procs.redis() servers are reached: "tcp" or "unix" (``--redis-transport``).
REDIS_TRANSPORT = "tcp"


def redis_label() -> str:
    """How the run's Redis is named in its table rows."""
    return "Redis over its Unix socket" if REDIS_TRANSPORT == "unix" else "Redis"


class _TransportAction(argparse.Action):
    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        global REDIS_TRANSPORT
        REDIS_TRANSPORT = values
        setattr(namespace, self.dest, values)


def interleaved(
    rounds: int,
    targets: Sequence[str],
    measure: Callable[[str], dict[str, Any]],
    *,
    log: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """Measure every target once per round, the targets in turn (round 1: A B C, round 2:
    A B C, ...), so that drift in the machine's load hits them all alike. Returns each
    target's results in round order; a failed measurement is recorded as ``{"error": ...}``
    and does not stop the others."""
    results: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
    for r in range(rounds):
        for target in targets:
            load0 = os.getloadavg()[0]
            try:
                result = measure(target)
            except Skip:
                raise
            except Exception as exc:
                result = {"error": repr(exc)[:300]}
            result["loadavg_1m"] = load0
            results[target].append(result)
            if log:
                shown = {k: v for k, v in result.items() if isinstance(v, (int, float))}
                brief = ", ".join(f"{k}={v:.4g}" for k, v in list(shown.items())[:5])
                print(f"  round {r + 1}/{rounds} {target}: {result.get('error') or brief}",
                      flush=True)  # fmt: skip
    return results


def medians(results: Sequence[dict[str, Any]], keys: Iterable[str]) -> dict[str, Any]:
    """The median over rounds of each numeric *key* (rounds that failed are left out);
    ``rounds_ok`` says how many counted."""
    import statistics

    ok = [r for r in results if "error" not in r]
    out: dict[str, Any] = {"rounds_ok": len(ok)}
    for key in keys:
        values = [r[key] for r in ok if isinstance(r.get(key), (int, float))]
        out[key] = statistics.median(values) if values else None
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        out["error"] = errors[0]
    return out


def markdown(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """*rows* as a Markdown table; *columns* are ``(key, heading)`` pairs. An ``error``
    column is added when some row failed."""
    if any(row.get("error") for row in rows) and "error" not in dict(columns):
        columns = [*columns, ("error", "error")]

    def fmt(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return str(value)
        if isinstance(value, float):
            if value != value:  # NaN
                return "-"
            if abs(value) >= 1000:
                return f"{value:,.0f}"
            if abs(value) >= 100:
                return f"{value:.0f}"
            return f"{value:.3g}" if abs(value) >= 1 else f"{value:.3f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(h for _, h in columns) + " |"]
    lines.append("| " + " | ".join("---" for _ in columns) + " |")
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(k)) for k, _ in columns) + " |")
    return "\n".join(lines)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def run_header(title: str, scenario: str, argv: Sequence[str] | None) -> str:
    """The lines printed above every Markdown table: what ran, the command line that
    reproduces it, the machine and its load."""
    import shlex

    args = sys.argv[1:] if argv is None else list(argv)
    cmd = " ".join(["python", "-m", f"benchmarks.{scenario}", *map(shlex.quote, args)])
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"### {title}\n\n"
        f"Command: `{cmd}`  \n"
        f"Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"load average {load} (1/5/15 min) at the end; {time.strftime('%Y-%m-%d %H:%M %Z')}\n"
    )
